"""How fast a backend answers: a peak-sensitive, time-decayed moving average (``PeakEwma``)."""

from __future__ import annotations

import math

# How fast the latency estimate forgets: after this many seconds without news
# an old sample has lost about 63% of its weight (Linkerd's default).
EWMA_DECAY_S = 10.0

# After this many seconds without a sample the estimate is forgotten altogether.
# Decaying from a slow 150 ms to the 2 ms of its peers takes ln(75) x 10 s = 43 s,
# all that time without a request to learn it is fast again; forgotten, the
# backend is given the neutral estimate and tried -- one slow answer puts it
# back in its place at once (the peak), a fast one brings it back.
FORGET_AFTER_S = 5.0


class PeakEwma:
    """A peak-sensitive, time-decayed moving average of response time (Finagle, Linkerd).

    A sample above the estimate replaces it at once (the *peak*): a backend
    that turns slow is avoided from its first slow answer. A sample below it
    is blended in with weight ``1 - exp(-dt / decay_s)``, where ``dt`` is the
    time since the previous sample, so a burst of fast answers after one slow
    one does not erase it instantly. Between samples the estimate decays
    toward zero on the same clock, and after ``forget_after_s`` without a
    sample it is forgotten: a backend that was avoided for being slow is
    tried again within seconds, and its next sample tells the truth. ``None``
    means no sample (new, recovered, or not heard of lately): the algorithm
    decides what a neutral estimate is. Not thread-safe: ``Backend`` guards it.
    """

    def __init__(self, decay_s: float = EWMA_DECAY_S, forget_after_s: float = FORGET_AFTER_S):
        self.decay_s = decay_s
        self.forget_after_s = forget_after_s
        self._estimate: float | None = None
        self._stamp = 0.0

    def observe(self, sample_s: float, now: float) -> None:
        if self._estimate is None or sample_s > self._estimate or now - self._stamp > self.forget_after_s:
            self._estimate = sample_s  # the first word, a peak, or news after a silence: taken as it is
        else:
            weight = math.exp(-max(0.0, now - self._stamp) / self.decay_s)
            self._estimate = self._estimate * weight + sample_s * (1.0 - weight)
        self._stamp = now

    def value(self, now: float) -> float | None:
        if self._estimate is None:
            return None
        age = max(0.0, now - self._stamp)
        if age > self.forget_after_s:
            return None
        return self._estimate * math.exp(-age / self.decay_s)

    def reset(self) -> None:
        self._estimate = None
