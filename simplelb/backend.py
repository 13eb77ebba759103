"""A backend server and everything the balancer knows about it.

``Backend`` is the one owner of per-backend state: health, in-flight count,
counters. All of it sits behind ``Backend._lock`` and changes only through the
methods here, so the health checker, the algorithms and the request path can
read it from any thread without tearing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

from .config import BackendSpec


@dataclass(frozen=True)
class HealthChange:
    """A backend went up or down; ``reason`` is the probe result that tipped it."""

    backend: Backend
    healthy: bool
    reason: str


class Backend:
    """One backend: its address and weight, and its live state."""

    def __init__(self, spec: BackendSpec, *, rise: int = 2, fall: int = 3):
        self.spec = spec
        self.host = spec.host
        self.port = spec.port
        self.weight = spec.weight
        self.address = spec.address
        self._rise = rise
        self._fall = fall
        # Guards every field below it.
        self._lock = threading.Lock()
        self._healthy = True  # start healthy: traffic flows while the first probes run
        self._passes = 0  # consecutive passed probes while down
        self._fails = 0  # consecutive failed probes while up
        self._in_flight = 0
        self._requests = 0
        self._failures = 0
        self._last_probe = "not probed yet"

    def __repr__(self) -> str:
        return f"<Backend {self.address} weight={self.weight} healthy={self._healthy}>"

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def record_probe(self, ok: bool, reason: str) -> HealthChange | None:
        """Count one probe result; return the change when it crosses ``rise`` or ``fall``."""
        with self._lock:
            self._last_probe = reason
            if ok:
                self._fails = 0
                if self._healthy:
                    return None
                self._passes += 1
                if self._passes < self._rise:
                    return None
                self._healthy, self._passes = True, 0
            else:
                self._passes = 0
                if not self._healthy:
                    return None
                self._fails += 1
                if self._fails < self._fall:
                    return None
                self._healthy, self._fails = False, 0
            return HealthChange(self, self._healthy, reason)

    @contextmanager
    def track(self):
        """Count one attempt as in flight for as long as the block runs.

        The block reports failure by raising; ``record_failure`` is for
        failures that are handled inside the block.
        """
        with self._lock:
            self._in_flight += 1
            self._requests += 1
        try:
            yield self
        except BaseException:
            with self._lock:
                self._failures += 1
            raise
        finally:
            with self._lock:
                self._in_flight -= 1

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1

    def snapshot(self) -> dict:
        """A consistent copy of the state, for logs, status pages and tests."""
        with self._lock:
            return {
                "address": self.address,
                "weight": self.weight,
                "healthy": self._healthy,
                "in_flight": self._in_flight,
                "requests": self._requests,
                "failures": self._failures,
                "last_probe": self._last_probe,
            }
