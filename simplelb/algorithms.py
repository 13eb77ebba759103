"""Load-balancing algorithms: which healthy backend takes the next request.

Each algorithm is a small class with one method, ``pick(backends, key)``. It
receives only healthy backends (never an empty list), does no I/O, and reads
load from the ``Backend`` objects (``weight``, ``in_flight``,
``latency_s()``); randomness is injected so tests are deterministic (the
clock is each backend's own: peak-ewma reads it through ``latency_s()``).
``key`` is the request's affinity key (see ``affinity``), used only by
``hash``. ``ALGORITHMS`` maps the ``--algorithm`` names to the
classes and ``create`` builds one by name: the proxy never knows which one it
is using.

"How loaded is a backend" is kept apart from "which one do I pick":
``least-connections`` and ``power-of-two`` compare the same weighted
in-flight load; ``peak-ewma`` is power of two choices over a latency cost.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # algorithms read backends; they never need the module to run
    from .backend import Backend


class Algorithm(Protocol):
    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        """Choose one of ``backends`` (healthy, non-empty) for a request with affinity ``key``."""


def weighted_load(backend: Backend) -> float:
    """In-flight requests per unit of weight: a weight-3 backend is 'as busy' with 3 as a weight-1 with 1."""
    return backend.in_flight / backend.weight


class RoundRobin:
    """Smooth weighted round robin, the scheme nginx uses.

    Every pick, each candidate's ``current`` score grows by its weight; the
    highest score wins and pays back the total weight. Over any run of
    ``sum(weights)`` picks each backend is chosen exactly ``weight`` times, and
    a heavy backend's turns are spread out (weights 5,1,1 give a a b a c a a,
    not a a a a a b c). Equal weights give a plain rotation.
    """

    def __init__(self, rng: random.Random | None = None):
        self._lock = threading.Lock()  # guards _current
        # A plain dict, not a WeakKeyDictionary: weak keys cost a Python call
        # and a new weakref on every read and write. Scores of backends that
        # left (removed, or down for a while) are forgotten once more than a
        # few pile up, so churn (DNS, etcd) cannot grow it without bound.
        self._current: dict[Backend, float] = {}

    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        with self._lock:
            current = self._current
            if len(current) > len(backends) + _STALE_SCORES_KEPT:
                current = self._current = {b: current[b] for b in backends if b in current}
            total = 0
            best = None
            best_score = 0
            for backend in backends:
                weight = backend.weight
                score = current.get(backend, 0) + weight
                current[backend] = score
                total += weight
                if best is None or score > best_score:
                    best, best_score = backend, score
            current[best] = best_score - total
            return best


# Scores of backends not among the candidates, kept until this many pile up
# (a backend that is down for a moment comes back with its place in the rotation).
_STALE_SCORES_KEPT = 16


class LeastConnections:
    """Fewest in-flight requests per unit of weight; ties broken at random, by weight.

    Random tie-breaking matters: when everything is idle (the common case at
    low load) "first of the least loaded" would send every request to the
    first backend. Drawing by weight (as nginx's least_conn breaks ties by
    weighted round robin) keeps weights honoured when nothing is in flight.
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards _rng (random.Random is not documented thread-safe)

    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        loads = [weighted_load(b) for b in backends]
        lowest = min(loads)
        tied = [b for b, load in zip(backends, loads, strict=True) if load == lowest]
        if len(tied) == 1:
            return tied[0]
        with self._lock:
            return self._rng.choices(tied, weights=[b.weight for b in tied])[0]


class WeightedRandom:
    """A backend drawn at random, in proportion to its weight."""

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards _rng

    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        with self._lock:
            return self._rng.choices(backends, weights=[b.weight for b in backends])[0]


class PowerOfTwoChoices:
    """Two distinct backends drawn at random (by weight); the less loaded one wins.

    Nearly as good as scanning for the least loaded, without herding: many
    balancers reading the same stale loads do not all pick the same backend.
    Subclasses change only ``cost``.
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards _rng

    def cost(self, backend: Backend, backends: Sequence[Backend]) -> float:
        return weighted_load(backend)

    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        if len(backends) == 1:
            return backends[0]
        with self._lock:
            first = self._rng.choices(backends, weights=[b.weight for b in backends])[0]
            others = [b for b in backends if b is not first]
            second = self._rng.choices(others, weights=[b.weight for b in others])[0]
        cost_first, cost_second = self.cost(first, backends), self.cost(second, backends)
        if cost_first == cost_second:
            # A tie (idle backends: the common case at low load) goes to the first, which was drawn
            # in proportion to weight: a coin here would split 1:1000 weights evenly.
            return first
        return first if cost_first < cost_second else second


class PeakEwmaChoices(PowerOfTwoChoices):
    """Power of two choices over a latency cost: ``ewma x (in_flight + 1) / weight``.

    The ``ewma`` is each backend's ``PeakEwma`` estimate (see ``backend``).
    Because the cost is latency, not only queue length, a slow backend is
    avoided even when requests arrive one at a time and nothing is ever in
    flight. A backend with no estimate yet (new, or just back from being
    down) is given the mean of the others' estimates: neither flooded (as a
    zero would) nor starved (as a large default would).
    """

    def cost(self, backend: Backend, backends: Sequence[Backend]) -> float:
        latency = backend.latency_s()
        if latency is None:
            known = [v for b in backends if (v := b.latency_s()) is not None]
            latency = sum(known) / len(known) if known else 0.0
        return latency * (backend.in_flight + 1) / backend.weight


def _hash_unit(key: str, backend: Backend) -> float:
    """A uniform number in (0, 1) from the key and the backend's address, stable across processes."""
    digest = hashlib.blake2b(f"{key}\x00{backend.address}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


class RendezvousHash:
    """Consistent hashing by rendezvous (highest random weight), with optional bounded load.

    Every backend gets a score from hash(key, backend), scaled by weight
    (``-weight / ln(u)``, weighted rendezvous hashing); the key goes to the
    highest score. When a backend leaves, only the keys it held move (each to
    its own next-best backend); keys of the backends that stayed keep their
    backend.

    With ``balance_factor`` F (consistent hashing with bounded loads,
    Mirrokni et al.), a backend is skipped while its in-flight count would
    exceed F x its weighted share of the average, and the key goes to the next
    backend in its own order. A request without a key falls back to round
    robin.
    """

    uses_key = True  # tells the proxy to compute each request's affinity key

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        balance_factor: float | None = None,
    ):
        self.balance_factor = balance_factor
        self._fallback = RoundRobin()

    def ranked(self, backends: Sequence[Backend], key: str) -> list[Backend]:
        """The backends in this key's order of preference."""
        return sorted(backends, key=lambda b: -b.weight / math.log(_hash_unit(key, b)), reverse=True)

    def pick(self, backends: Sequence[Backend], key: str | None = None) -> Backend:
        if key is None:
            return self._fallback.pick(backends)
        ranked = self.ranked(backends, key)
        if self.balance_factor is None:
            return ranked[0]
        total_weight = sum(b.weight for b in backends)
        in_flight = sum(b.in_flight for b in backends) + 1  # counting this request
        for backend in ranked:
            limit = math.ceil(self.balance_factor * in_flight * backend.weight / total_weight)
            if backend.in_flight + 1 <= limit:
                return backend
        return ranked[0]  # unreachable with F >= 1: some backend is at or below average


ALGORITHMS: dict[str, type] = {
    "round-robin": RoundRobin,
    "least-connections": LeastConnections,
    "random": WeightedRandom,
    "power-of-two": PowerOfTwoChoices,
    "peak-ewma": PeakEwmaChoices,
    "hash": RendezvousHash,
}


def create(
    name: str,
    *,
    rng: random.Random | None = None,
    hash_balance_factor: float | None = None,
) -> Algorithm:
    """Build the algorithm registered as ``name``."""
    cls = ALGORITHMS[name]
    if cls is RendezvousHash:
        return cls(rng, balance_factor=hash_balance_factor)
    return cls(rng=rng or random.Random())
