"""Counting what the balancer does, cheaply on the hot path, summed at read time.

The request path only increments integers (behind a lock each, so counts are
exact): per status class, per histogram bucket. Everything a reader wants --
``/status``, ``/metrics``, the fleet's sums -- is built from ``snapshot()``
values at read time, as plain JSON-able dicts, so the same numbers cross the
worker channel and add up with ``add_counts``.

Histograms have fixed bounds (``BOUNDS_S``), the same everywhere, so two
workers' bucket counts add up and the status page can subtract two
snapshots to get the last few seconds.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

# Upper bounds of the latency buckets, in seconds (the last bucket is +Inf).
BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# A status's class by ``status // 100`` (a status is three digits; 6xx-9xx count as 5xx):
# an index on the request path, where a function would cost a call per response.
STATUS_CLASS_BY_HUNDREDS = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx", "5xx", "5xx", "5xx", "5xx")


class Histogram:
    """Bucket counts (not cumulative), their sum and count. Not locked: its owner's lock guards it."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS_S, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> dict:
        return {"counts": list(self.counts), "sum": round(self.total, 6)}


class ServerStats:
    """What the traffic port answered: responses by status class, and how long each request took."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the counts below
        self._responses = dict.fromkeys(STATUS_CLASSES, 0)
        self._duration = Histogram()

    def record(self, status: int, duration_s: float) -> None:
        with self._lock:
            self._responses[STATUS_CLASS_BY_HUNDREDS[status // 100]] += 1
            self._duration.observe(duration_s)

    def snapshot(self) -> dict:
        with self._lock:
            return {"responses": dict(self._responses), "request_duration": self._duration.snapshot()}


def add_counts(total: Any, more: Any) -> Any:
    """``total + more`` for numbers, element-wise for lists, key-wise for dicts (keys of either)."""
    if isinstance(total, dict):
        return {key: add_counts(total.get(key, zeroed(more[key])), more[key]) if key in more else total[key]
                for key in {**total, **more}}
    if isinstance(total, list):
        return [add_counts(a, b) for a, b in zip(total, more, strict=True)]
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        return total  # labels and flags: the first one stands
    return total + more


def zeroed(value: Any) -> Any:
    """``value`` with every number set to 0 (labels and flags kept)."""
    if isinstance(value, dict):
        return {key: zeroed(v) for key, v in value.items()}
    if isinstance(value, list):
        return [zeroed(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return 0
