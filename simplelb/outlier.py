"""Passive health: ejecting backends that fail real traffic.

Active checks only see ``/health``; a backend can pass them and still fail
the requests that matter. ``OutlierDetector`` watches the failure streak
that ``Backend.track()`` keeps (connection errors, timeouts, broken answers,
and 5xx with ``--eject-on-5xx``) and, at ``eject_after`` consecutive
failures, ejects the backend for ``eject_time_s``, doubling with each
ejection in a row up to ``MAX_EJECT_S``. A backend that stays in for
``RESET_AFTER_FACTOR`` x the base time after returning starts again from the
base time.

Never more than ``max_percent`` of the backends are ejected at once (rounded
down: with two backends and 50%, one; with one backend, none): ejection must
not turn a partial outage into a full one. The decision "how many are out"
plus the ejection itself is atomic under ``_deciding``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

from .backend import Backend

log = logging.getLogger(__name__)

MAX_EJECT_S = 300.0  # as Envoy's max_ejection_time default
RESET_AFTER_FACTOR = 6  # 60 s of good behaviour with the default 10 s base


class OutlierDetector:
    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        eject_after: int,
        eject_time_s: float,
        max_percent: int,
        until_probes_pass: bool = False,
    ):
        self._backends = list(backends)
        self._eject_after = eject_after
        self._eject_time_s = eject_time_s
        self._max_ejected = math.floor(len(self._backends) * max_percent / 100)
        self._until_probes_pass = until_probes_pass
        self._deciding = threading.Lock()  # serialises "count the ejected, then eject"

    def attach(self) -> None:
        """Start watching: each backend reports its failure streaks here."""
        if self._eject_after > 0:
            for backend in self._backends:
                backend.on_failure_streak = self.failed

    def failed(self, backend: Backend, streak: int, reason: str) -> None:
        if streak < self._eject_after or backend.ejected:
            return
        with self._deciding:
            if backend.ejected:
                return
            ejected = sum(b.ejected for b in self._backends)
            if ejected >= self._max_ejected:
                if streak != self._eject_after:
                    return  # said once per streak, not at every failure after it
                log.warning(
                    "backend %s failed %d times in a row (%s) but is not ejected: %d of %d backends are out already",
                    backend.address, streak, reason, ejected, len(self._backends),
                )
                return
            duration = backend.eject(
                self._eject_time_s, max(MAX_EJECT_S, self._eject_time_s),
                self._eject_time_s * RESET_AFTER_FACTOR, self._until_probes_pass,
            )
        how_long = "until health probes pass" if math.isinf(duration) else f"for {duration:g}s"
        log.warning("backend %s EJECTED %s after %d failures in a row (last: %s)", backend.address, how_long, streak, reason)
