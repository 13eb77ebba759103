"""Turning results into a report: per-backend distribution, statuses, failures, latency.

``summarize`` builds a plain dict (what ``--json`` prints); ``format_report``
renders the same dict as text that fits an 80-column terminal. Failures are
counted by ``outcome.count_failures`` and worded by ``outcome.describe``,
like everywhere else.
"""

from __future__ import annotations

import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence

from .histogram import LogHistogram
from .outcome import Result, count_failures, describe, is_failed

PERCENTILES = (50, 90, 99)
BAR_WIDTH = 14
# The generator is behind when it sends below this share of the asked rate, or when more than 1%
# of its sends (and more than one) are this late: p99 for a long run, and on a short one a single
# late send (a thread starting) is not a trend.
BEHIND_RATE_SHARE = 0.95
BEHIND_LAG_MS = 20.0


def latency_histogram(results: Sequence[Result]) -> LogHistogram:
    histogram = LogHistogram()
    for result in results:
        histogram.record(result.latency_s)
    return histogram


def _backends(results: Sequence[Result]) -> dict:
    """Per backend that answered: requests, share of the answered, failed (its 5xx), p50 and p99."""
    answered: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        if result.status is not None:
            answered[result.backend or "(unknown)"].append(result)
    total = sum(len(rows) for rows in answered.values())
    table = {}
    for name in sorted(answered):
        rows = answered[name]
        histogram = latency_histogram(rows)
        table[name] = {
            "requests": len(rows),
            "share": round(len(rows) / total, 4),
            "failed": sum(is_failed(r) for r in rows),
            "p50_ms": round(histogram.percentile_ms(50), 3),
            "p99_ms": round(histogram.percentile_ms(99), 3),
        }
    return table


def _generator(results: Sequence[Result], rate: float) -> dict:
    """Open loop: did the generator keep the schedule it was given?"""
    lag = LogHistogram()
    for result in results:
        lag.record(result.lag_s)
    # Over the span of the actual sends, not the run: waiting for the last
    # answers (say, from a stalled server) is not the generator falling behind.
    # A rate needs two sends at least: one request (or several sent at one instant) has none, and
    # is not behind for it. (It was taken for a rate of 1 req/s, behind any rate asked above that.)
    sends = [r.started_s + r.lag_s for r in results]
    span = max(sends) - min(sends) if sends else 0.0
    sent_rate = (len(sends) - 1) / span if span > 0 else None
    late = sum(1 for r in results if r.lag_s * 1000 > BEHIND_LAG_MS)
    return {
        "requested_rps": rate,
        "sent_rps": round(sent_rate, 1) if sent_rate is not None else None,  # None: too few sends to tell
        "send_lag_p99_ms": round(lag.percentile_ms(99), 3),
        "fell_behind": (sent_rate is not None and sent_rate < BEHIND_RATE_SHARE * rate)
        or late > max(1, len(results) // 100),
    }


def summarize(
    results: Sequence[Result],
    elapsed_s: float,
    *,
    url: str = "",
    concurrency: int = 0,
    rate: float | None = None,
) -> dict:
    histogram = latency_histogram(results)
    summary = {
        "url": url,
        "concurrency": concurrency,
        "requests": len(results),
        "elapsed_s": round(elapsed_s, 4),
        "throughput_rps": round(len(results) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "backends": _backends(results),
        "status_codes": {str(code): count for code, count in sorted(Counter(r.status for r in results if r.status).items())},
        "errors": dict(Counter(r.error for r in results if r.error).most_common()),  # transport errors by kind
        "failures": count_failures(results),
        "reconnects": sum(r.reconnected for r in results),
        "reconnects_failed": sum(r.reconnected and is_failed(r) for r in results),  # (counted in failures too)
        "latency_ms": {
            "min": round(histogram.min_us / 1000, 3) if results else 0.0,
            **{f"p{p}": round(histogram.percentile_ms(p), 3) for p in PERCENTILES},
            "max": round(histogram.max_us / 1000, 3) if results else 0.0,
        },
    }
    if rate is not None:
        summary["generator"] = _generator(results, rate)
    return summary


def distribution_lines(backends: dict) -> list[str]:
    lines = [f"  {'backend':<20}{'requests':>9}{'share':>7}{'failed':>7}{'p50 ms':>8}{'p99 ms':>8}"]
    for name, row in backends.items():
        bar = "#" * round(row["share"] * BAR_WIDTH)
        lines.append(f"  {name[-20:]:<20}{row['requests']:>9}{row['share'] * 100:>6.1f}%{row['failed']:>7}"
                     f"{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}  {bar}")
    if not backends:
        lines.append("  (no responses)")
    return lines


def _load_model(summary: dict) -> str:
    if "generator" in summary:
        return ", open loop"
    return f", concurrency {summary['concurrency']}" if summary["concurrency"] else ""


def wrapped(label: str, text: str) -> list[str]:
    return textwrap.wrap(f"{label}{text}", 80, subsequent_indent=" " * 4, break_on_hyphens=False)


def format_report(summary: dict) -> str:
    lines = [
        f"{summary['requests']} requests to {summary['url']} in {summary['elapsed_s']:.2f}s"
        f" ({summary['throughput_rps']:.1f} req/s{_load_model(summary)})",
        "",
        "Distribution",
        *distribution_lines(summary["backends"]),
        "",
        *wrapped("Status codes: ", ", ".join(f"{code} x {n}" for code, n in summary["status_codes"].items()) or "none"),
        *wrapped("Failed: ", describe(summary["failures"], summary["requests"])),
        "Latency (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in summary["latency_ms"].items()),
    ]
    if summary.get("reconnects"):
        failed = summary.get("reconnects_failed", 0)
        outcome = f"{summary['reconnects'] - failed} not failed, {failed} failed (counted above)" if failed \
            else "not failed"
        lines += wrapped("Reconnects: ", f"{summary['reconnects']} (the server had closed an idle keep-alive "
                                         f"connection; sent again on a new one: {outcome})")
    generator = summary.get("generator")
    if generator:
        count = summary["requests"]
        sent = f"{count} request{'s' * (count != 1)} (too few for a rate)" if generator["sent_rps"] is None \
            else f"{generator['sent_rps']:g} req/s"
        lines.append(
            f"Open loop: asked {generator['requested_rps']:g} req/s, sent {sent},"
            f" send lag p99 {generator['send_lag_p99_ms']:.1f} ms"
        )
        if generator["fell_behind"]:
            lines.append("WARNING: the generator fell behind the requested rate; the load was lower than asked.")
    return "\n".join(lines)
