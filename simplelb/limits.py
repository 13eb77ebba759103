"""Waiting for a backend under ``--max-conns``: a bounded, timed queue.

When every available backend is at its in-flight limit, a request waits on
``CapacityQueue`` until a slot frees up (the cluster signals it when a
backend releases one), at most ``timeout_s`` and with at most
``max_waiting`` requests waiting at once; after that it gets 503. Nothing here is used when there is no limit.
"""

from __future__ import annotations

import threading
import time

from .errors import QueueFull


class CapacityQueue:
    """Requests waiting for a slot; the limits are passed in by each waiter (they can change on reload)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)  # signalled when any backend frees a slot
        self._waiting = 0
        self.timeouts = 0  # requests that gave up waiting (503)

    @property
    def waiting(self) -> int:
        return self._waiting

    def released(self) -> None:
        with self._lock:
            self._slot_freed.notify()

    def wait(self, deadline: float | None, timeout_s: float, max_waiting: int) -> float:
        """Wait for a freed slot; return the deadline to keep using. Raise ``QueueFull`` when out of time or room."""
        now = time.monotonic()
        deadline = deadline if deadline is not None else now + timeout_s
        with self._lock:
            if deadline <= now:
                self.timeouts += 1
                raise QueueFull(f"every backend is at its connection limit; waited {timeout_s:g}s")
            if self._waiting >= max_waiting:
                raise QueueFull("every backend is at its connection limit and the queue is full")
            self._waiting += 1
            try:
                # A slot freed just before we started waiting sends its signal to
                # nobody; the short slice bounds what such a lost signal costs.
                self._slot_freed.wait(min(deadline - now, 0.05))
            finally:
                self._waiting -= 1
        return deadline
