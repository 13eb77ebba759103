"""What happened second by second: requests, errors, latency and each backend's share.

``build_timeline`` buckets results by the second they were started (or
scheduled, in open loop) in; ``format_timeline`` prints the rows as a table
that fits 80 columns, so the moment a backend was taken out and came back is
visible at a glance.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from .histogram import LogHistogram
from .runner import Result


def is_error(result: Result) -> bool:
    return result.error is not None or (result.status or 0) >= 500


def build_timeline(results: Sequence[Result]) -> list[dict]:
    seconds: dict[int, list[Result]] = defaultdict(list)
    for result in results:
        seconds[int(result.started_s)].append(result)
    if not seconds:
        return []
    rows = []
    for second in range(0, max(seconds) + 1):
        bucket = seconds.get(second, [])
        histogram = LogHistogram()
        for result in bucket:
            histogram.record(result.latency_s)
        answered = Counter(r.backend or "(unknown)" for r in bucket if r.status is not None)
        total = sum(answered.values())
        rows.append({
            "second": second,
            "requests": len(bucket),
            "errors": sum(is_error(r) for r in bucket),
            "p50_ms": round(histogram.percentile_ms(50), 3),
            "p99_ms": round(histogram.percentile_ms(99), 3),
            "share": {name: round(count / total, 4) for name, count in sorted(answered.items())},
        })
    return rows


def format_timeline(rows: list[dict], backends: Sequence[str], events: Sequence[tuple[float, str]] = ()) -> str:
    """A compact table: one row a second, one share column per backend (at most 5 fit)."""
    shown = list(backends)[:5]
    header = f"{'t s':>4}{'req':>6}{'err':>5}{'p50 ms':>8}{'p99 ms':>8} " + "".join(f"{name[-7:]:>8}" for name in shown)
    lines = [header]
    marks = defaultdict(list)
    for at, label in events:
        marks[int(at)].append(label)
    for row in rows:
        shares = "".join(
            f"{row['share'].get(name, 0) * 100:>7.0f}%" if row["requests"] else f"{'-':>8}" for name in shown
        )
        line = f"{row['second']:>4}{row['requests']:>6}{row['errors']:>5}{row['p50_ms']:>8.1f}{row['p99_ms']:>8.1f} {shares}"
        if marks.get(row["second"]):
            line += "  <- " + ", ".join(marks[row["second"]])
        lines.append(line if len(line) <= 80 else line[:79] + "~")
    return "\n".join(lines)
