"""``--threshold``: pass/fail criteria on a run, as k6 has them, so a CI job can gate on the exit status.

Grammar: ``MEASURE OP VALUE``, with ``OP`` one of ``<  <=  >  >=``.

============================  ==============================================
``p50`` ``p99`` ``p99.9`` ...  that latency percentile; ``VALUE`` in ``ms``
``min`` ``max``                (the default), ``s`` or ``us``
``errors``                     failed requests (``outcome.py``): with ``%``
                               their share of all requests, else their count
``rps``                        requests per second over the run
============================  ==============================================

Examples: ``p99<200ms``, ``errors<1%``, ``errors<=0``, ``rps>500``. Each is
checked against the whole run; the report shows each one passed or failed
with the measured value, and the exit status is 3 when any failed.
``--max-error-rate F`` is the threshold ``errors<=F`` (as a share).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from .histogram import LogHistogram

FAILED_EXIT_STATUS = 3
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_LATENCY_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "": 1.0}
_PATTERN = re.compile(r"\s*(p\d+(?:\.\d+)?|min|max|errors|rps)\s*(<=|>=|<|>)\s*(\d+(?:\.\d+)?)\s*(ms|s|us|%)?\s*")


@dataclass(frozen=True)
class Threshold:
    text: str  # as the user wrote it (or the flag it came from)
    measure: str
    op: str
    limit: float  # ms for latency; a share (0..1) for errors with %, else a count; req/s for rps
    share: bool = False  # errors given as a percentage

    def measured(self, summary: dict, histogram: LogHistogram) -> float:
        if self.measure == "errors":
            failures = summary["failures"]
            return failures["rate"] if self.share else failures["failed"]
        if self.measure == "rps":
            return summary["throughput_rps"]
        if self.measure == "min":
            return histogram.min_us / 1000 if histogram.count else 0.0
        if self.measure == "max":
            return histogram.max_us / 1000
        return histogram.percentile_ms(float(self.measure[1:]))

    def show(self, value: float) -> str:
        if self.measure == "errors":
            return f"{value:.2%}" if self.share else f"{value:g}"
        return f"{value:.1f} req/s" if self.measure == "rps" else f"{value:.2f} ms"


def parse_threshold(text: str) -> Threshold:
    """``ValueError`` with a one-line message when ``text`` is not a threshold."""
    match = _PATTERN.fullmatch(text)
    if not match:
        raise ValueError(f"not a threshold: {text!r} (e.g. 'p99<200ms', 'errors<1%', 'rps>500')")
    measure, op, number, unit = match.groups()
    value, unit = float(number), unit or ""
    if measure.startswith("p") and not 0 < float(measure[1:]) <= 100:
        raise ValueError(f"percentile out of range in {text!r}: from p0.001 to p100")
    if measure == "errors":
        if unit not in ("", "%"):
            raise ValueError(f"errors are a count or a percentage, not {unit!r}: {text!r}")
        return Threshold(text, measure, op, value / 100 if unit == "%" else value, share=unit == "%")
    if measure == "rps":
        if unit:
            raise ValueError(f"rps takes a plain number: {text!r}")
        return Threshold(text, measure, op, value)
    if unit == "%":
        raise ValueError(f"latency takes ms, s or us, not %: {text!r}")
    return Threshold(text, measure, op, value * _LATENCY_UNITS[unit])


def max_error_rate(fraction: float) -> Threshold:
    return Threshold(f"--max-error-rate {fraction:g}", "errors", "<=", fraction, share=True)


def evaluate(thresholds: list[Threshold], summary: dict, histogram: LogHistogram) -> list[dict]:
    if not summary["requests"]:  # nothing measured passes nothing (a gate must not pass an empty run)
        return [{"threshold": t.text, "measured": None, "shown": "nothing (no requests)", "passed": False}
                for t in thresholds]
    rows = []
    for threshold in thresholds:
        value = threshold.measured(summary, histogram)
        rows.append({"threshold": threshold.text, "measured": round(value, 6), "shown": threshold.show(value),
                     "passed": bool(_OPS[threshold.op](value, threshold.limit))})
    return rows


def format_results(rows: list[dict]) -> list[str]:
    return [f"  {'passed' if row['passed'] else 'FAILED':<7} {row['threshold']:<24} measured {row['shown']}"
            for row in rows]
