"""What happened over time: requests, failures, latency and each backend's share, bucket by bucket.

``build_timeline`` buckets results by when they were started (or scheduled,
in open loop). Buckets are one second wide for runs of ten seconds or more
(the run's duration, ``span_s``, not its last start: a ten-second run's last
request starts before 10 s);
shorter runs get the widest sub-second bucket that still gives ten of them
(``bucket_width``), so a two-second run draws twenty points, not two.
``attach_balancer`` adds what the balancer's ``/metrics`` said during each
bucket. ``format_timeline`` prints the rows as a table that fits 80 columns,
so the moment a backend was taken out and came back is visible at a glance.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from .histogram import LogHistogram
from .outcome import HTTP_5XX, TRANSPORT, Result, count_failures

BUCKET_WIDTHS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MIN_BUCKETS = 10
SHARE_COLUMNS = 5  # backends whose share fits in 80 columns


def bucket_width(span_s: float) -> float:
    """1 s for runs of ten seconds or more; else the widest bucket that still gives ``MIN_BUCKETS``."""
    for width in reversed(BUCKET_WIDTHS_S):
        if span_s / width >= MIN_BUCKETS:
            return width
    return BUCKET_WIDTHS_S[0]


def span_of(results: Sequence[Result]) -> float:
    return max((r.started_s for r in results), default=0.0)


def build_timeline(results: Sequence[Result], width_s: float | None = None, *, span_s: float = 0.0) -> list[dict]:
    """Rows of ``width_s``, or of ``bucket_width`` of the run's duration ``span_s`` (at least its last start)."""
    width = width_s or bucket_width(max(span_s, span_of(results)))
    buckets: dict[int, list[Result]] = defaultdict(list)
    for result in results:
        buckets[int(result.started_s / width)].append(result)
    rows = []
    for index in range(0, max(buckets) + 1 if buckets else 0):
        bucket = buckets.get(index, [])
        histogram = LogHistogram()
        for result in bucket:
            histogram.record(result.latency_s)
        answered = Counter(r.backend or "(unknown)" for r in bucket if r.status is not None)
        total = sum(answered.values())
        failures = count_failures(bucket)
        rows.append({
            "t_s": round(index * width, 3),
            "width_s": width,
            "requests": len(bucket),
            "rps": round(len(bucket) / width, 1),
            "failed": failures["failed"],
            TRANSPORT: failures[TRANSPORT],
            HTTP_5XX: failures[HTTP_5XX],
            "p50_ms": round(histogram.percentile_ms(50), 3),
            "p99_ms": round(histogram.percentile_ms(99), 3),
            "share": {name: round(count / total, 4) for name, count in sorted(answered.items())},
        })
    return rows


def attach_balancer(rows: list[dict], samples: Sequence[dict]) -> None:
    """Give each row the last ``/metrics`` sample taken during it, as ``row["balancer"]``."""
    if not rows:
        return
    width = rows[0]["width_s"]
    for sample in samples:
        index = min(int(sample["t_s"] / width), len(rows) - 1)
        rows[index]["balancer"] = sample["backends"]


def _t(seconds: float, width: float) -> str:
    return f"{seconds:>6.2f}" if width < 1 else f"{seconds:>6.0f}"


def format_timeline(rows: list[dict], backends: Sequence[str], events: Sequence[tuple[float, str]] = ()) -> str:
    """A compact table: one row a bucket, failures split (transport + 5xx), one share column per backend."""
    shown = list(backends)[:SHARE_COLUMNS]
    width = rows[0]["width_s"] if rows else 1.0
    header = (f"{'t s':>6}{'req':>6}{'fail':>5}{'=tr':>4}{'+5xx':>5}{'p50 ms':>7}{'p99 ms':>7} "
              + "".join(f"{name[-6:]:>7}" for name in shown))
    lines = [header]
    marks = defaultdict(list)
    for at, label in events:
        marks[min(int(at / width), len(rows) - 1)].append(label)
    for index, row in enumerate(rows):
        shares = "".join(
            f"{row['share'].get(name, 0) * 100:>6.0f}%" if row["requests"] else f"{'-':>7}" for name in shown
        )
        line = (f"{_t(row['t_s'], width)}{row['requests']:>6}{row['failed']:>5}{row[TRANSPORT]:>4}{row[HTTP_5XX]:>5}"
                f"{row['p50_ms']:>7.1f}{row['p99_ms']:>7.1f} {shares}")
        if marks.get(index):
            line += " <- " + ", ".join(marks[index])
        lines.append(line if len(line) <= 80 else line[:79] + "~")
    return "\n".join(lines)


def format_balancer(samples: Sequence[dict], backends: Sequence[str]) -> str:
    """What ``/metrics`` said at each scrape: per backend, state / in flight / retries since the last scrape."""
    shown = list(backends)[:4]
    lines = [f"{'t s':>6}  " + "".join(f"{name[-16:]:>17}" for name in shown),
             f"{'':>6}  " + "".join(f"{'state/inflt/retr':>17}" for _ in shown)]
    for sample in samples:
        cells = []
        for name in shown:
            seen = sample["backends"].get(name)
            cell = "-" if seen is None else (
                f"{seen.get('state') or '?'}/{_number(seen.get('in_flight'))}/{_number(seen.get('retries'))}")
            cells.append(f"{cell[-16:]:>17}")
        lines.append(f"{sample['t_s']:>6.1f}  " + "".join(cells))
    if len(backends) > len(shown):
        lines.append(f"(and {len(backends) - len(shown)} more backends: see --json or --html)")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
