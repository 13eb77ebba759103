"""A backend server and everything the balancer knows about it.

``Backend`` is the one owner of per-backend state: health, in-flight count,
latency estimate, counters. All of it sits behind ``Backend._lock`` and
changes only through the methods here -- the request path through
``track()``, the health checker through ``record_probe()`` -- so the
algorithms can read it from any thread without tearing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from .config import BackendSpec

# How fast the latency estimate forgets: after this many seconds without news
# an old sample has lost about 63% of its weight (Linkerd's default).
EWMA_DECAY_S = 10.0


class PeakEwma:
    """A peak-sensitive, time-decayed moving average of response time (Finagle, Linkerd).

    A sample above the estimate replaces it at once (the *peak*): a backend
    that turns slow is avoided from its first slow answer. A sample below it
    is blended in with weight ``1 - exp(-dt / decay_s)``, where ``dt`` is the
    time since the previous sample, so a burst of fast answers after one slow
    one does not erase it instantly. Between samples the estimate decays
    toward zero on the same clock: a backend that was avoided for being slow
    is eventually tried again, and its next sample tells the truth. ``None``
    means no sample yet (new or just recovered): the algorithm decides what a
    neutral estimate is. Not thread-safe: ``Backend`` guards it.
    """

    def __init__(self, decay_s: float = EWMA_DECAY_S):
        self.decay_s = decay_s
        self._estimate: float | None = None
        self._stamp = 0.0

    def observe(self, sample_s: float, now: float) -> None:
        if self._estimate is None or sample_s > self._estimate:
            self._estimate = sample_s
        else:
            weight = math.exp(-max(0.0, now - self._stamp) / self.decay_s)
            self._estimate = self._estimate * weight + sample_s * (1.0 - weight)
        self._stamp = now

    def value(self, now: float) -> float | None:
        if self._estimate is None:
            return None
        return self._estimate * math.exp(-max(0.0, now - self._stamp) / self.decay_s)

    def reset(self) -> None:
        self._estimate = None


@dataclass(frozen=True)
class HealthChange:
    """A backend went up or down; ``reason`` is the probe result that tipped it."""

    backend: Backend
    healthy: bool
    reason: str


class Attempt:
    """One request attempt against a backend, as seen by ``Backend.track``."""

    __slots__ = ("_clock", "started_at", "responded_at")

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.started_at = clock()
        self.responded_at: float | None = None

    def responded(self) -> None:
        self.responded_at = self._clock()


class Backend:
    """One backend: its address and weight, and its live state."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        rise: int = 2,
        fall: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.spec = spec
        self.host = spec.host
        self.port = spec.port
        self.weight = spec.weight
        self.address = spec.address
        self._rise = rise
        self._fall = fall
        self._clock = clock
        # Guards every field below it.
        self._lock = threading.Lock()
        self._healthy = True  # start healthy: traffic flows while the first probes run
        self._passes = 0  # consecutive passed probes while down
        self._fails = 0  # consecutive failed probes while up
        self._in_flight = 0
        self._latency = PeakEwma()
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
                self._latency.reset()  # what we knew is stale: start from a neutral estimate
            else:
                self._passes = 0
                if not self._healthy:
                    return None
                self._fails += 1
                if self._fails < self._fall:
                    return None
                self._healthy, self._fails = False, 0
            return HealthChange(self, self._healthy, reason)

    def latency_s(self) -> float | None:
        """The current latency estimate in seconds, or None when there is no sample."""
        with self._lock:
            return self._latency.value(self._clock())

    @contextmanager
    def track(self):
        """Count one attempt as in flight for as long as the block runs.

        This is the one place where per-request state changes. The block gets
        an ``Attempt``; calling its ``responded()`` when the response head
        arrives makes the time until then the latency sample (otherwise the
        whole block is timed). The block reports failure by raising; failed
        attempts count as failures and add no latency sample, so a backend
        that fails fast never looks fast.
        """
        attempt = Attempt(self._clock)
        with self._lock:
            self._in_flight += 1
            self._requests += 1
        try:
            yield attempt
        except BaseException:
            with self._lock:
                self._in_flight -= 1
                self._failures += 1
            raise
        now = self._clock()
        with self._lock:
            self._in_flight -= 1
            self._latency.observe((attempt.responded_at or now) - attempt.started_at, now)

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
                "latency_ms": None if (v := self._latency.value(self._clock())) is None else round(v * 1000, 3),
                "last_probe": self._last_probe,
            }
