"""When a failed request may be tried again, and how many retries the cluster can bear.

The rules (``RetryPolicy.may_retry``):

* Only before any byte of the response reached the client.
* If nothing was sent (the connection could not be opened), any method.
* Otherwise only idempotent methods (RFC 9110 §9.2.2), and only if the
  request body, if any, was kept so it can be sent again.
* At most ``retries`` times per request, each on a backend not tried yet.
* Only while the ``RetryBudget`` allows: retries may add at most ``ratio`` to
  the requests of the last ``window_s`` seconds (plus a small floor so a
  quiet balancer can still retry). When a whole cluster fails, retries stop
  instead of doubling its load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# RFC 9110 §9.2.2. Only these may be sent again once they have been sent.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class RetryBudget:
    """Retries as a fraction of recent requests, over a sliding window of one-second buckets."""

    def __init__(
        self,
        ratio: float,
        *,
        window_s: int = 10,
        min_per_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ratio = ratio
        self.window_s = window_s
        self.min_retries = min_per_s * window_s
        self._clock = clock
        self._lock = threading.Lock()  # guards the buckets
        self._second = [0] * window_s  # which second each bucket holds
        self._requests = [0] * window_s
        self._retries = [0] * window_s
        self.exhausted = 0  # retries refused because the budget was spent

    def _bucket(self, now: float) -> int:
        second = int(now)
        index = second % self.window_s
        if self._second[index] != second:
            self._second[index], self._requests[index], self._retries[index] = second, 0, 0
        return index

    def _live(self, counts: list[int], now: float) -> int:
        oldest = int(now) - self.window_s
        return sum(c for c, s in zip(counts, self._second, strict=True) if s > oldest)

    def record_request(self) -> None:
        with self._lock:
            self._requests[self._bucket(self._clock())] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        with self._lock:
            now = self._clock()
            index = self._bucket(now)
            allowed = max(self.min_retries, self.ratio * self._live(self._requests, now))
            if self._live(self._retries, now) >= allowed:
                self.exhausted += 1
                return False
            self._retries[index] += 1
            return True


class RetryPolicy:
    def __init__(self, retries: int, budget: RetryBudget):
        self.retries = retries
        self.budget = budget

    def may_retry(self, *, method: str, sent: bool, replayable: bool, retries_so_far: int) -> bool:
        if retries_so_far >= self.retries:
            return False
        if sent and not (method in IDEMPOTENT_METHODS and replayable):
            return False
        return self.budget.try_spend()
