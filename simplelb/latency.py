"""How fast a backend answers: a peak-sensitive, time-decayed moving average (``PeakEwma``)."""

from __future__ import annotations

import math

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
