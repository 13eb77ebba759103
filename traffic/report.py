"""Turning results into a report: per-backend distribution, statuses, errors, latency.

``summarize`` builds a plain dict (what ``--json`` prints); ``format_report``
renders the same dict as text that fits an 80-column terminal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .histogram import LogHistogram
from .runner import Result

PERCENTILES = (50, 90, 99)
BAR_WIDTH = 30
# The generator is behind when it sends below this share of the asked rate, or this late at p99.
BEHIND_RATE_SHARE = 0.95
BEHIND_LAG_MS = 20.0


def latency_histogram(results: Sequence[Result]) -> LogHistogram:
    histogram = LogHistogram()
    for result in results:
        histogram.record(result.latency_s)
    return histogram


def summarize(
    results: Sequence[Result],
    elapsed_s: float,
    *,
    url: str = "",
    concurrency: int = 0,
    rate: float | None = None,
) -> dict:
    histogram = latency_histogram(results)
    by_backend = Counter(r.backend or "(unknown)" for r in results if r.status is not None)
    answered = sum(by_backend.values())
    summary = {
        "url": url,
        "concurrency": concurrency,
        "requests": len(results),
        "elapsed_s": round(elapsed_s, 4),
        "throughput_rps": round(len(results) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "backends": {
            name: {"requests": count, "share": round(count / answered, 4)}
            for name, count in sorted(by_backend.items())
        },
        "status_codes": {str(code): count for code, count in sorted(Counter(r.status for r in results if r.status).items())},
        "errors": dict(Counter(r.error for r in results if r.error).most_common()),
        "latency_ms": {
            "min": round(histogram.min_us / 1000, 3) if results else 0.0,
            **{f"p{p}": round(histogram.percentile_ms(p), 3) for p in PERCENTILES},
            "max": round(histogram.max_us / 1000, 3) if results else 0.0,
        },
    }
    if rate is not None:
        # Open loop: did the generator keep the schedule it was given?
        lag = LogHistogram()
        for result in results:
            lag.record(result.lag_s)
        # Over the span of the actual sends, not the run: waiting for the last
        # answers (say, from a stalled server) is not the generator falling behind.
        sends = [r.started_s + r.lag_s for r in results]
        span = max(sends) - min(sends) if sends else 0.0
        sent_rate = (len(sends) - 1) / span if span > 0 else float(len(sends))
        lag_p99 = round(lag.percentile_ms(99), 3)
        summary["generator"] = {
            "requested_rps": rate,
            "sent_rps": round(sent_rate, 1),
            "send_lag_p99_ms": lag_p99,
            "fell_behind": sent_rate < BEHIND_RATE_SHARE * rate or lag_p99 > BEHIND_LAG_MS,
        }
    return summary


def distribution_lines(backends: dict) -> list[str]:
    lines = [f"  {'backend':<24} {'requests':>9} {'share':>7}"]
    for name, row in backends.items():
        bar = "#" * round(row["share"] * BAR_WIDTH)
        lines.append(f"  {name[:24]:<24} {row['requests']:>9} {row['share'] * 100:>6.1f}%  {bar}")
    if not backends:
        lines.append("  (no responses)")
    return lines


def _load_model(summary: dict) -> str:
    if "generator" in summary:
        return ", open loop"
    return f", concurrency {summary['concurrency']}" if summary["concurrency"] else ""


def format_report(summary: dict) -> str:
    lines = [
        f"{summary['requests']} requests to {summary['url']} in {summary['elapsed_s']:.2f}s"
        f" ({summary['throughput_rps']:.1f} req/s{_load_model(summary)})",
        "",
        "Distribution",
        *distribution_lines(summary["backends"]),
        "",
        "Status codes: "
        + (", ".join(f"{code} x {count}" for code, count in summary["status_codes"].items()) or "none"),
        "Errors: " + (", ".join(f"{kind} x {count}" for kind, count in summary["errors"].items()) or "none"),
        "Latency (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in summary["latency_ms"].items()),
    ]
    generator = summary.get("generator")
    if generator:
        lines.append(
            f"Open loop: asked {generator['requested_rps']:g} req/s, sent {generator['sent_rps']:g} req/s,"
            f" send lag p99 {generator['send_lag_p99_ms']:.1f} ms"
        )
        if generator["fell_behind"]:
            lines.append("WARNING: the generator fell behind the requested rate; the load was lower than asked.")
    return "\n".join(lines)
