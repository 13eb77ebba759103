"""A backend server and everything the balancer knows about it.

``Backend`` is the one owner of per-backend state: active health, passive
ejection, administrative state, in-flight count and limit, latency estimate,
slow-start ramp and counters. All of it sits behind ``Backend._lock`` and
changes only through the methods here -- the request path through
``track()``, the health checker through ``record_probe()``, the outlier
detector through ``eject()``, the cluster through ``reconfigure()`` and
``mark_removing()`` -- so the algorithms can read it from any thread
without tearing. ``Cluster`` creates and retires backends; nothing else does.
The handle ``track()`` returns (``Attempt``) and what a backend reports to
its owner (``BackendEvents``) are in ``tracking.py``.

States (``state``, in order of precedence): ``removing`` (taken out of the
configuration, finishing its in-flight requests), ``maint`` (the operator
took it out: no traffic, no probes), ``draining`` (no new requests except
those pinned to it), ``down`` (failing health checks, or added at runtime
and not yet probed), ``ejected`` (failing real traffic), ``up``.

A backend takes traffic when it is *available*: healthy, not ejected, not in
maintenance, not being removed. When it comes back from down or ejected,
its latency estimate is forgotten and, with slow start, its weight ramps up
from ``SLOW_START_FLOOR`` to full over ``slow_start_s``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from .errors import BackendFull, BackendGone
from .health import HealthChange
from .latency import PeakEwma
from .specs import BackendSpec
from .stats import STATUS_CLASS_BY_HUNDREDS, STATUS_CLASSES, Histogram
from .tracking import Attempt, BackendEvents

log = logging.getLogger(__name__)

# Slow start begins a backend at this fraction of its weight, not at zero: at
# zero it would get no traffic at all until the first tick of the ramp.
SLOW_START_FLOOR = 0.1

STATES = ("up", "down", "ejected", "draining", "maint", "removing")
FAILURE_REASONS = ("connect", "timeout", "reset", "protocol", "5xx")


def takes_new_in(state: str) -> bool:
    """Whether a backend in ``state`` takes new requests (``up`` in ``/status``): only in state ``up``.

    The one rule behind ``up``, for a backend here and for one merged over
    ``--workers`` (``fleetcontrol``), so ``up`` and ``state`` never disagree.
    """
    return state == "up"


class Backend:
    """One backend: its spec (address, weight, admin state), its policy, and its live state."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        rise: int = 2,
        fall: int = 3,
        max_conns: int = 0,
        slow_start_s: float = 0.0,
        count_5xx_as_failure: bool = False,
        clock: Callable[[], float] = time.monotonic,
        events: BackendEvents | None = None,
    ):
        self._clock = clock
        self.events = events or BackendEvents()
        self.pool = None  # the cluster gives each backend its connection pool
        # Guards every field below it, and the spec and policy.
        self._lock = threading.Lock()
        self._set(spec, rise, fall, max_conns, slow_start_s, count_5xx_as_failure)
        self._removing = False
        self._healthy = True  # start healthy: traffic flows while the first probes run
        self._first_probe = False  # added at runtime: up at its first passed probe
        self._passes = 0  # consecutive passed probes while down (or ejected, for health-return)
        self._fails = 0  # consecutive failed probes while up
        self._in_flight = 0
        self._latency = PeakEwma()
        self._ramp_start: float | None = None  # when slow start began; None: full weight
        self._streak = 0  # consecutive failed attempts of real traffic
        self._ejected_until: float | None = None  # None: not ejected; inf: until probes pass
        self._eject_level = 0  # how many ejections in a row; the next lasts base x 2**level
        self._returned_at = 0.0
        self._responses = dict.fromkeys(STATUS_CLASSES, 0)  # responses it gave, by status class
        self._response_time = Histogram()  # from sending to it to its response head
        self._failures = dict.fromkeys(FAILURE_REASONS, 0)
        # Attempts finished, and those that failed or answered 5xx, each once (one that failed after
        # its response head is both a response and a failure: the error rate must not count it twice).
        self._attempts = self._errors = 0
        self._retries = 0
        self._ejections = 0
        self._probes = {"pass": 0, "fail": 0}
        self._last_probe = "not probed yet"

    def _set(self, spec, rise, fall, max_conns, slow_start_s, count_5xx_as_failure) -> None:
        self.spec = spec
        self.name = spec.name  # (the same in every spec it is given: the cluster matches specs by name)
        self._rise = rise
        self._fall = fall
        self._max_conns = max_conns  # 0: no limit
        self._slow_start_s = slow_start_s
        self._count_5xx = count_5xx_as_failure

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.address} weight={self.spec.weight} {self.state}>"

    @property
    def address(self) -> str:
        return self.spec.address

    @property
    def backup(self) -> bool:
        return self.spec.backup

    # --- what the cluster changes -------------------------------------------

    def reconfigure(self, spec: BackendSpec, **policy) -> bool:
        """Take a new spec (weight, backup, admin state) and policy; the live state stays.

        Returns True when the backend must now be probed before it takes
        traffic (it leaves maintenance, where it was not probed).
        """
        with self._lock:
            before = self.spec.state
            self._set(spec, **policy)
            if before == spec.state:
                return False
            if before == "maint":
                self._await_first_probe()
                return True
            if spec.state == "ready":
                self._ramp()  # back from draining: through slow start, as from any return
            return False

    def await_first_probe(self) -> None:
        """Added at runtime: no traffic until a probe passes (then slow start, if configured)."""
        with self._lock:
            self._await_first_probe()

    def _await_first_probe(self) -> None:
        self._healthy, self._first_probe, self._passes, self._fails = False, True, 0, 0

    def mark_removing(self, removing: bool = True) -> None:
        with self._lock:
            self._removing = removing

    # --- what the algorithms and the forwarder read ---------------------------

    @property
    def weight(self) -> float:
        """The weight in force: the configured one, or less while slow start ramps it up."""
        weight = self.spec.weight
        if self._ramp_start is None:
            return weight
        elapsed = self._clock() - self._ramp_start
        if elapsed >= self._slow_start_s:
            self._ramp_start = None  # a benign race: the ramp is over for every reader
            return weight
        return weight * max(SLOW_START_FLOOR, elapsed / self._slow_start_s)

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
        """Ejected now: an ejection whose time is up counts as over, even before ``available()`` ends it."""
        until = self._ejected_until
        return until is not None and self._clock() < until

    @property
    def removing(self) -> bool:
        """Taken out of the cluster: finishing what it has in flight, then closed."""
        return self._removing

    @property
    def draining(self) -> bool:
        return self.spec.state == "drain"

    @property
    def probed(self) -> bool:
        """Whether health checks run: not in maintenance, not being removed."""
        return self.spec.state != "maint" and not self._removing

    def available(self) -> bool:
        """May take a request: healthy, not ejected, not in maintenance or removed (draining is available)."""
        if not self._healthy or self._removing or self.spec.state == "maint":
            return False
        if self._ejected_until is None:
            return True
        with self._lock:
            if self._ejected_until is None or self._clock() < self._ejected_until:
                return self._ejected_until is None
            self._end_ejection()
        log.warning("backend %s returns after its ejection time", self.name)
        return True

    def takes_new(self) -> bool:
        """May take a request nothing pins to it: available, not draining (readiness); ``takes_new_in(self.state)``."""
        return not self.draining and self.available()

    def has_capacity(self) -> bool:
        return not self._max_conns or self._in_flight < self._max_conns

    @property
    def state(self) -> str:
        if self._removing:
            return "removing"
        if self.spec.state == "maint":
            return "maint"
        if self.spec.state == "drain":
            return "draining"
        if not self._healthy:
            return "down"
        until = self._ejected_until
        return "ejected" if until is not None and self._clock() < until else "up"

    # --- active health ----------------------------------------------------

    def record_probe(self, ok: bool, reason: str) -> HealthChange | None:
        """Count one probe result; return the change when it crosses ``rise`` or ``fall``."""
        returned = False
        with self._lock:
            self._last_probe = reason
            self._probes["pass" if ok else "fail"] += 1
            if ok:
                self._fails = 0
                if self._healthy and self._ejected_until != math.inf:
                    return None
                self._passes += 1
                if self._passes < (1 if self._first_probe else self._rise):
                    return None
                self._passes = 0
                if self._healthy:  # ejected until probes pass, and they did
                    self._end_ejection()
                    returned = True
                else:
                    self._healthy, self._first_probe = True, False
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
            log.warning("backend %s returns from ejection: %d probes passed (%s)", self.name, self._rise, reason)
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
        self._ramp()

    def _ramp(self) -> None:
        if self._slow_start_s > 0:
            self._ramp_start = self._clock()

    # --- the request path ---------------------------------------------------

    def track(self) -> Attempt:
        """Count one attempt as in flight for as long as the block runs (``with backend.track() as attempt``).

        This is the one place where per-request state changes. Raises
        ``BackendFull`` or ``BackendGone`` (before anything happens) when the
        backend is at its connection limit or has left rotation. The block
        gets an ``Attempt``; its ``responded()`` marks the end of the latency
        sample (else the whole block is timed) and the status. The block
        reports a backend failure by raising; ``ClientSideError`` is the
        client's doing and counts for nothing (before the answer, not even as a
        success: the streak stays, no latency sample). Failed attempts add no latency
        sample, so a backend that fails fast never looks fast; consecutive
        failures (and, if configured, 5xx answers) feed passive health.
        """
        with self._lock:
            if self._removing or self.spec.state == "maint":
                raise BackendGone(self.name)
            if self._max_conns and self._in_flight >= self._max_conns:
                raise BackendFull(self.name)
            self._in_flight += 1
        return Attempt(self, self._clock)

    def _finish(self, attempt: Attempt, failure: str, reason: str, *, judged: bool = True) -> None:
        """The attempt is over: a failure, a success, or (not ``judged``) neither."""
        now = self._clock()
        if not failure and self._count_5xx and attempt.status >= 500:
            failure, reason = f"HTTP {attempt.status}", "5xx"
        with self._lock:
            self._in_flight -= 1
            self._attempts += 1
            if failure or attempt.status >= 500:
                self._errors += 1
            if attempt.responded_at is not None:
                self._responses[STATUS_CLASS_BY_HUNDREDS[attempt.status // 100]] += 1
                self._response_time.observe(attempt.responded_at - attempt.started_at)
            if failure:
                self._failures[reason if reason in self._failures else "protocol"] += 1
                self._streak += 1
                streak = self._streak
            elif judged:
                self._streak = 0
                self._latency.observe((attempt.responded_at or now) - attempt.started_at, now)
        self.events.released(self)
        if failure:
            self.events.failed(self, streak, failure)

    def count_retry(self) -> None:
        """A retry of a request that failed elsewhere was sent here."""
        with self._lock:
            self._retries += 1

    def status(self) -> dict:
        """A consistent copy of the state: ``/status``, ``/metrics``, logs and tests read this."""
        with self._lock:
            latency = self._latency.value(self._clock())
            spec = self.spec
            state = self.state  # read once: ``up`` follows from it, so the two agree
            return {
                "name": spec.name,
                "address": spec.location,
                "weight": spec.weight,
                "backup": spec.backup,
                "state": state,
                "up": takes_new_in(state),
                "in_flight": self._in_flight,
                "requests": sum(self._responses.values()),
                "failures": sum(self._failures.values()),
                "attempts": self._attempts,
                "errors": self._errors,
                "ejections": self._ejections,
                "latency_ms": None if latency is None else round(latency * 1000, 3),
                "retries": self._retries,
                "effective_weight": round(self.weight, 3),
                "last_probe": self._last_probe,
                "responses": dict(self._responses),
                "response_time": self._response_time.snapshot(),
                "failure_reasons": dict(self._failures),
                "probes": dict(self._probes),
            }
