"""Load-balancing algorithms: which healthy backend takes the next request.

Each algorithm is a small class with one method, ``pick(backends, key)``. It
receives only healthy backends (never an empty list), does no I/O, and reads
load from the ``Backend`` objects; randomness and the clock are injected so
tests are deterministic. ``ALGORITHMS`` maps the ``--algorithm`` names to the
classes, and ``create`` builds one by name: the proxy never knows which one it
is using.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .backend import Backend


class Algorithm(Protocol):
    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        """Choose one of ``backends`` (healthy, non-empty) for a request with hash ``key``."""


class RoundRobin:
    """Smooth weighted round robin, the scheme nginx uses.

    Every pick, each candidate's ``current`` score grows by its weight; the
    highest score wins and pays back the total weight. Over any run of
    ``sum(weights)`` picks each backend is chosen exactly ``weight`` times, and
    a heavy backend's turns are spread out (weights 5,1,1 give a a b a c a a,
    not a a a a a b c). Equal weights give a plain rotation.
    """

    def __init__(self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()  # guards _current
        self._current: dict[Backend, int] = {}

    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        with self._lock:
            total = 0
            best = None
            best_score = 0
            for backend in backends:
                score = self._current.get(backend, 0) + backend.weight
                self._current[backend] = score
                total += backend.weight
                if best is None or score > best_score:
                    best, best_score = backend, score
            self._current[best] = best_score - total
            return best


ALGORITHMS: dict[str, type] = {
    "round-robin": RoundRobin,
}


def create(name: str, *, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> Algorithm:
    """Build the algorithm registered as ``name``."""
    return ALGORITHMS[name](rng=rng or random.Random(), clock=clock)
