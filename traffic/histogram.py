"""A log-bucketed latency histogram (HDR-style): constant memory, ~0.5% error at any percentile.

Each value (in microseconds) goes to bucket ``floor(log(v) / log(1 + 2r))``
where ``r`` is the relative precision (default 0.5%); a percentile is read
back as the geometric middle of its bucket, so it is within ``r`` of a value
that was really recorded, at p50 as at p99.9. Histograms merge by adding
counts (per-second histograms add up to the whole run's).
"""

from __future__ import annotations

import math


class LogHistogram:
    def __init__(self, precision: float = 0.005):
        self.precision = precision
        self._log_base = math.log1p(2 * precision)
        self._counts: dict[int, int] = {}
        self.count = 0
        self.min_us = math.inf
        self.max_us = 0.0

    def record(self, value_s: float) -> None:
        us = max(value_s * 1e6, 1.0)  # 1 µs resolution floor
        index = int(math.log(us) / self._log_base)
        self._counts[index] = self._counts.get(index, 0) + 1
        self.count += 1
        self.min_us = min(self.min_us, us)
        self.max_us = max(self.max_us, us)

    def merge(self, other: LogHistogram) -> None:
        for index, count in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + count
        self.count += other.count
        self.min_us = min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)

    def _value_us(self, index: int) -> float:
        low, high = math.exp(index * self._log_base), math.exp((index + 1) * self._log_base)
        return min(max(math.sqrt(low * high), self.min_us), self.max_us)

    def percentile_ms(self, p: float) -> float:
        """The nearest-rank ``p``-th percentile in milliseconds (0 when empty)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return self._value_us(index) / 1000
        return self.max_us / 1000

    def buckets_ms(self, bins: int = 40) -> list[tuple[float, float, int]]:
        """Counts regrouped into ``bins`` log-spaced bins between min and max: (low ms, high ms, count)."""
        if not self.count:
            return []
        low, high = math.log(self.min_us), math.log(self.max_us * 1.000001)
        width = (high - low) / bins or 1.0
        out = [0] * bins
        for index, count in self._counts.items():
            position = int((math.log(self._value_us(index)) - low) / width)
            out[min(max(position, 0), bins - 1)] += count
        return [(math.exp(low + i * width) / 1000, math.exp(low + (i + 1) * width) / 1000, c) for i, c in enumerate(out)]
