"""What a mock server does now: health, latency and error rate, and how they are written.

The parsers turn the text a person types (a flag, a control request's body
or query) into a value, or raise ``BehaviourError`` with a message that can
be shown as it is. Every way of changing a server (command line, the
server's own ``/_mock/...`` routes, the process's control listener, Python)
goes through these parsers and ``Behaviour.set``, so the rules live here only.
"""

from __future__ import annotations

import random
import threading


class BehaviourError(ValueError):
    """A behaviour setting (latency, error rate, health state) is not valid."""


def parse_latency(text: str) -> tuple[float, float]:
    """``"50"`` -> (50, 50); ``"20-80"`` -> (20, 80); milliseconds."""
    low_text, sep, high_text = str(text).strip().partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise BehaviourError(f"latency must be MS or LOW-HIGH in milliseconds, not {text!r}") from None
    if not 0 <= low <= high <= 600_000:
        raise BehaviourError(f"latency must be 0 <= LOW <= HIGH <= 600000 ms, not {text!r}")
    return low, high


def parse_error_rate(text: str | float) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise BehaviourError(f"error rate must be a fraction from 0 to 1, not {text!r}") from None
    if not 0 <= rate <= 1:
        raise BehaviourError(f"error rate must be a fraction from 0 to 1, not {text!r}")
    return rate


def parse_health(text: str) -> bool:
    """``"up"`` -> True, ``"down"`` -> False (any case, surrounding blanks ignored)."""
    state = str(text or "").strip().lower()
    if state not in ("up", "down"):
        raise BehaviourError(f"health must be 'up' or 'down', not {text!r}")
    return state == "up"


class Behaviour:
    """What a mock server does now; changed at runtime through the control routes."""

    def __init__(self, latency_ms: tuple[float, float], error_rate: float, rng: random.Random):
        self._lock = threading.Lock()  # guards every field below, including the rng
        self.healthy = True
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self._rng = rng

    def draw(self) -> tuple[float, bool]:
        """(seconds to wait, whether to fail) for one request."""
        with self._lock:
            low, high = self.latency_ms
            delay = self._rng.uniform(low, high) / 1000 if high else 0.0
            fail = self.error_rate > 0 and self._rng.random() < self.error_rate
            return delay, fail

    def set(self, **changes) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def snapshot(self) -> dict:
        with self._lock:
            return {"healthy": self.healthy, "latency_ms": list(self.latency_ms), "error_rate": self.error_rate}
