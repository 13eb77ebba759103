"""Passive health: ejecting backends that fail real traffic.

Active checks only see ``/health``; a backend can pass them and still fail
the requests that matter. ``OutlierDetector`` is told of every failed
attempt with the backend's failure streak (connection errors, timeouts,
broken answers, and 5xx with ``--eject-on-5xx``, counted by
``Backend.track()``) and, at ``eject_after`` consecutive failures, ejects
the backend for ``eject_time_s``, doubling with each ejection in a row up to
``MAX_EJECT_S``. A backend that stays in for ``RESET_AFTER_FACTOR`` x the
base time after returning starts again from the base time.

Never more than ``max_eject_percent`` of the backends are out at once
(rounded down: with two backends and 50%, one; with one backend, none), and
never the last one that takes new requests: ejection must not turn a partial
outage into a full one. Out is anything that does not take new requests:
ejected, down, draining, in maintenance. The decision "how
many are out" plus the ejection itself is atomic under ``_deciding``. The
settings and the backends counted are read from the cluster's current view,
so a reload changes them at once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import Backend
    from .config import ClusterConfig

log = logging.getLogger(__name__)

MAX_EJECT_S = 300.0  # as Envoy's max_ejection_time default
RESET_AFTER_FACTOR = 6  # 60 s of good behaviour with the default 10 s base


class OutlierDetector:
    def __init__(self, current: Callable[[], tuple[ClusterConfig, Sequence[Backend]]]):
        """``current()`` gives the settings in force and the backends that count."""
        self._current = current
        self._deciding = threading.Lock()  # serialises "count the ejected, then eject"

    def failed(self, backend: Backend, streak: int, reason: str) -> None:
        config, backends = self._current()
        if config.eject_after == 0 or streak < config.eject_after or backend.ejected:
            return
        with self._deciding:
            if backend.ejected:
                return
            out = sum(not b.takes_new() for b in backends if b is not backend)
            if out >= math.floor(len(backends) * config.max_eject_percent / 100) or out == len(backends) - 1:
                if streak == config.eject_after:  # said once per streak, not at every failure after it
                    log.warning(
                        "backend %s failed %d times in a row (%s) but is not ejected: %d of %d backends are out already",
                        backend.name, streak, reason, out, len(backends),
                    )
                return
            base = config.eject_time_s
            duration = backend.eject(
                base, max(MAX_EJECT_S, base), base * RESET_AFTER_FACTOR, config.eject_return == "health"
            )
        how_long = "until health probes pass" if math.isinf(duration) else f"for {duration:g}s"
        log.warning("backend %s EJECTED %s after %d failures in a row (last: %s)", backend.name, how_long, streak, reason)
