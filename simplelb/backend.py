"""A backend server and everything the balancer knows about it.

``Backend`` is the one owner of per-backend state: active health, passive
ejection, in-flight count and limit, latency estimate, slow-start ramp and
counters. All of it sits behind ``Backend._lock`` and changes only through
the methods here -- the request path through ``track()``, the health
checker through ``record_probe()``, the outlier detector through
``eject()`` -- so the algorithms can read it from any thread without
tearing.

A backend takes traffic when it is *available*: healthy by the active checks
and not ejected by the passive ones. When it comes back from either, its
latency estimate is forgotten and, with slow start, its weight ramps up from
``SLOW_START_FLOOR`` to full over ``slow_start_s``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from .config import BackendSpec
from .errors import ClientSideError

log = logging.getLogger(__name__)

# Slow start begins a backend at this fraction of its weight, not at zero: at
# zero it would get no traffic at all until the first tick of the ramp.
SLOW_START_FLOOR = 0.1

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


class BackendFull(Exception):
    """The backend is at its connection limit; nothing was sent."""


class Attempt:
    """One request attempt against a backend, as seen by ``Backend.track``."""

    __slots__ = ("_clock", "started_at", "responded_at", "status")

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.started_at = clock()
        self.responded_at: float | None = None
        self.status = 0

    def responded(self, status: int) -> None:
        """The response head arrived: the latency sample ends here."""
        self.responded_at = self._clock()
        self.status = status


class Backend:
    """One backend: its address and weight, and its live state."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        rise: int = 2,
        fall: int = 3,
        max_conns: int = 0,
        slow_start_s: float = 0.0,
        count_5xx_as_failure: bool = False,
        backup: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.spec = spec
        self.host = spec.host
        self.port = spec.port
        self.address = spec.address
        self.backup = backup
        self._base_weight = spec.weight
        self._rise = rise
        self._fall = fall
        self._max_conns = max_conns  # 0: no limit
        self._slow_start_s = slow_start_s
        self._count_5xx = count_5xx_as_failure
        self._clock = clock
        # Set by the server: called with this backend when its failure streak
        # grows (passive health), and when an in-flight slot is freed (queue).
        self.on_failure_streak: Callable[[Backend, int, str], None] | None = None
        self.on_release: Callable[[], None] | None = None
        # Guards every field below it.
        self._lock = threading.Lock()
        self._healthy = True  # start healthy: traffic flows while the first probes run
        self._passes = 0  # consecutive passed probes while down (or ejected, for health-return)
        self._fails = 0  # consecutive failed probes while up
        self._in_flight = 0
        self._latency = PeakEwma()
        self._ramp_start: float | None = None  # when slow start began; None: full weight
        self._streak = 0  # consecutive failed attempts of real traffic
        self._ejected_until: float | None = None  # None: not ejected; inf: until probes pass
        self._eject_level = 0  # how many ejections in a row; the next lasts base x 2**level
        self._returned_at = 0.0
        self._requests = 0
        self._failures = 0
        self._retries = 0
        self._ejections = 0
        self._last_probe = "not probed yet"

    def __repr__(self) -> str:
        return f"<Backend {self.address} weight={self._base_weight} healthy={self._healthy}>"

    # --- what the algorithms read ------------------------------------------

    @property
    def weight(self) -> float:
        """The weight in force: the configured one, or less while slow start ramps it up."""
        if self._ramp_start is None:
            return self._base_weight
        elapsed = self._clock() - self._ramp_start
        if elapsed >= self._slow_start_s:
            self._ramp_start = None  # a benign race: the ramp is over for every reader
            return self._base_weight
        return self._base_weight * max(SLOW_START_FLOOR, elapsed / self._slow_start_s)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def latency_s(self) -> float | None:
        """The current latency estimate in seconds, or None when there is no sample."""
        with self._lock:
            return self._latency.value(self._clock())

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def ejected(self) -> bool:
        return self._ejected_until is not None

    def available(self) -> bool:
        """Healthy and not ejected. A timed ejection that has run out ends here."""
        if not self._healthy:
            return False
        if self._ejected_until is None:
            return True
        with self._lock:
            if self._ejected_until is None or self._clock() < self._ejected_until:
                return self._ejected_until is None
            self._end_ejection()
        log.warning("backend %s returns after its ejection time", self.address)
        return True

    def has_capacity(self) -> bool:
        return not self._max_conns or self._in_flight < self._max_conns

    # --- active health ----------------------------------------------------

    def record_probe(self, ok: bool, reason: str) -> HealthChange | None:
        """Count one probe result; return the change when it crosses ``rise`` or ``fall``."""
        returned = False
        with self._lock:
            self._last_probe = reason
            if ok:
                self._fails = 0
                if self._healthy and self._ejected_until != math.inf:
                    return None
                self._passes += 1
                if self._passes < self._rise:
                    return None
                self._passes = 0
                if self._healthy:  # ejected until probes pass, and they did
                    self._end_ejection()
                    returned = True
                else:
                    self._healthy = True
                    self._come_back()
            else:
                self._passes = 0
                if not self._healthy:
                    return None
                self._fails += 1
                if self._fails < self._fall:
                    return None
                self._healthy, self._fails = False, 0
        if returned:
            log.warning("backend %s returns from ejection: %d probes passed (%s)", self.address, self._rise, reason)
            return None
        return HealthChange(self, self._healthy, reason)

    # --- passive health -----------------------------------------------------

    def eject(self, base_s: float, max_s: float, reset_after_s: float, until_probes_pass: bool) -> float:
        """Take the backend out of rotation; return for how long (inf: until probes pass).

        Each ejection in a row lasts twice the one before, up to ``max_s``; a
        backend that stayed in for ``reset_after_s`` since its last return
        starts again from ``base_s``.
        """
        with self._lock:
            now = self._clock()
            if self._eject_level and now - self._returned_at >= reset_after_s:
                self._eject_level = 0
            duration = min(base_s * 2**self._eject_level, max_s)
            self._eject_level += 1
            self._ejections += 1
            self._streak = 0
            self._passes = 0
            self._ejected_until = math.inf if until_probes_pass else now + duration
            return math.inf if until_probes_pass else duration

    def _end_ejection(self) -> None:
        # Caller holds the lock.
        self._ejected_until = None
        self._returned_at = self._clock()
        self._come_back()

    def _come_back(self) -> None:
        # Caller holds the lock. What we knew is stale: forget it, and ramp up.
        self._latency.reset()
        self._streak = 0
        if self._slow_start_s > 0:
            self._ramp_start = self._clock()

    # --- the request path ---------------------------------------------------

    @contextmanager
    def track(self):
        """Count one attempt as in flight for as long as the block runs.

        This is the one place where per-request state changes. Raises
        ``BackendFull`` (before anything happens) when the backend is at its
        connection limit. The block gets an ``Attempt``; its ``responded()``
        marks the end of the latency sample (else the whole block is timed)
        and the status. The block reports
        a backend failure by raising; ``ClientSideError`` is the client's
        doing and counts for nothing. Failed attempts add no latency sample,
        so a backend that fails fast never looks fast; consecutive failures
        (and, if configured, 5xx answers) feed passive health.
        """
        attempt = Attempt(self._clock)
        with self._lock:
            if self._max_conns and self._in_flight >= self._max_conns:
                raise BackendFull(self.address)
            self._in_flight += 1
            self._requests += 1
        failure = ""
        try:
            yield attempt
        except ClientSideError:
            raise
        except BaseException as exc:
            failure = str(exc) or exc.__class__.__name__
            raise
        finally:
            now = self._clock()
            if not failure and self._count_5xx and attempt.status >= 500:
                failure = f"HTTP {attempt.status}"
            with self._lock:
                self._in_flight -= 1
                if failure:
                    self._failures += 1
                    self._streak += 1
                    streak = self._streak
                else:
                    self._streak = 0
                    self._latency.observe((attempt.responded_at or now) - attempt.started_at, now)
            if self.on_release is not None:
                self.on_release()
            if failure and self.on_failure_streak is not None:
                self.on_failure_streak(self, streak, failure)

    def count_retry(self) -> None:
        with self._lock:
            self._retries += 1

    def snapshot(self) -> dict:
        """A consistent copy of the state, for logs, status pages and tests."""
        with self._lock:
            latency = self._latency.value(self._clock())
            return {
                "address": self.address,
                "backup": self.backup,
                "weight": self._base_weight,
                "healthy": self._healthy,
                "ejected": self._ejected_until is not None,
                "in_flight": self._in_flight,
                "requests": self._requests,
                "failures": self._failures,
                "retries": self._retries,
                "ejections": self._ejections,
                "latency_ms": None if latency is None else round(latency * 1000, 3),
                "last_probe": self._last_probe,
            }
