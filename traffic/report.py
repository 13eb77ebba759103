"""Turning results into a report: per-backend distribution, statuses, errors, latency.

``summarize`` builds a plain dict (what ``--json`` prints); ``format_report``
renders the same dict as text that fits an 80-column terminal.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .runner import Result

PERCENTILES = (50, 90, 99)
BAR_WIDTH = 30


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(results: Sequence[Result], elapsed_s: float, *, url: str = "", concurrency: int = 0) -> dict:
    latencies = sorted(r.latency_s * 1000 for r in results)
    by_backend = Counter(r.backend or "(unknown)" for r in results if r.status is not None)
    answered = sum(by_backend.values())
    return {
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
            "min": round(latencies[0], 3) if latencies else 0.0,
            **{f"p{p}": round(percentile(latencies, p), 3) for p in PERCENTILES},
            "max": round(latencies[-1], 3) if latencies else 0.0,
        },
    }


def distribution_lines(backends: dict) -> list[str]:
    lines = [f"  {'backend':<24} {'requests':>9} {'share':>7}"]
    for name, row in backends.items():
        bar = "#" * round(row["share"] * BAR_WIDTH)
        lines.append(f"  {name[:24]:<24} {row['requests']:>9} {row['share'] * 100:>6.1f}%  {bar}")
    if not backends:
        lines.append("  (no responses)")
    return lines


def format_report(summary: dict) -> str:
    lines = [
        f"{summary['requests']} requests to {summary['url']} in {summary['elapsed_s']:.2f}s"
        f" ({summary['throughput_rps']:.1f} req/s, concurrency {summary['concurrency']})",
        "",
        "Distribution",
        *distribution_lines(summary["backends"]),
        "",
        "Status codes: "
        + (", ".join(f"{code} x {count}" for code, count in summary["status_codes"].items()) or "none"),
        "Errors: " + (", ".join(f"{kind} x {count}" for kind, count in summary["errors"].items()) or "none"),
        "Latency (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in summary["latency_ms"].items()),
    ]
    return "\n".join(lines)
