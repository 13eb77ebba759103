"""``--html FILE``: one self-contained page for a run, or for a comparison of algorithms.

No scripts, fonts or network: charts are inline SVG (``svg.py``), so the
file opens anywhere, offline, and prints. A run's page, top to bottom:

* what was run: command, target, start time, duration, version;
* the numbers: requests, throughput, failed (transport + 5xx, as everywhere:
  ``outcome.py``), latency, reconnects, and each ``--threshold`` passed or
  failed;
* a table per backend (requests, share, failed, p50, p99) whose colour
  swatches are the backends' colours in the charts; status codes and
  transport errors by kind; the events, numbered as on the charts;
* charts: latency over time, share of traffic per backend, requests and
  failures per second, the latency histogram;
* with ``--metrics``: what the balancer saw (state bands, in flight, retries).

A comparison's page has the same header, a table per measure, and one chart
per measure with a line per algorithm. No raw JSON anywhere: ``--json-file``
is for that. The layout reads at 1280 px and at 400 px wide.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from .histogram import LogHistogram
from .outcome import HTTP_5XX, TRANSPORT
from .svg import Series, colour, histogram_chart, line_chart, stacked_area, stacked_bars, state_strip
from .thresholds import FAILED_EXIT_STATUS

STATE_COLOURS = {"up": "#2ca02c", "healthy": "#2ca02c", "down": "#d62728", "unhealthy": "#d62728",
                 "ejected": "#9467bd", "draining": "#ff7f0e", "maint": "#7f7f7f", "maintenance": "#7f7f7f",
                 "removing": "#8c564b"}
OK_COLOUR, TRANSPORT_COLOUR, HTTP_5XX_COLOUR = colour(0), colour(1), colour(3)

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 16px 20px; max-width: 900px;
       color: #222; background: #fff; }
h1 { font-size: 22px; margin: 4px 0 10px; } h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 3px;
       border-bottom: 1px solid #ddd; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 8px; margin: 14px 0; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: 6px 10px; }
.tile b { display: block; font-size: 20px; } .tile span { color: #555; font-size: 13px; }
.scroll { overflow-x: auto; margin: 8px 0; }
table { border-collapse: collapse; }
th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { font-weight: 600; background: #fafafa; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
          vertical-align: -1px; }
figure { margin: 22px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
.chart { width: 100%; height: auto; display: block; }
.grid { stroke: #e4e4e4; } .tick { font-size: 12px; fill: #555; }
.event line { stroke: #444; stroke-dasharray: 4 3; } .event text { font-size: 11px; fill: #333; }
ul.legend { list-style: none; padding: 0; margin: 6px 0 0; display: flex; flex-wrap: wrap; gap: 4px 18px;
            font-size: 13px; }
.note { color: #666; font-size: 13px; margin: 4px 0; }
.passed { color: #1a7f37; } .failed { color: #c62828; font-weight: 600; }
@media (max-width: 640px) { .chart.wide { display: none; } body { padding: 10px; font-size: 14px; }
                            th, td { padding: 3px 4px; } table { font-size: 13px; } }
@media (min-width: 641px) { .chart.narrow { display: none; } }
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escape text before)."""
    header = "".join(f"<th>{cell}</th>" for cell in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{header}</tr>{body}</table></div>'


def _swatch(index: int) -> str:
    return f'<span class="swatch" style="background:{colour(index)}"></span>'


def _page(title: str, meta: dict, body: str) -> str:
    facts = [("command", f"<code>{_esc(meta['command'])}</code>"), ("target", _esc(meta.get("target", ""))),
             ("started", _esc(meta["started"]))]
    if "duration_s" in meta:
        facts.append(("duration", f"{meta['duration_s']:.2f} s"))
    facts.append(("version", f"traffic (simplelb {_esc(meta['version'])})"))
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head>\n<body>\n<h1>{_esc(title)}</h1>"
            f'<dl class="meta">{rows}</dl>\n{body}\n</body></html>\n')


def _tile(value: str, label: str) -> str:
    return f'<div class="tile"><b>{value}</b><span>{label}</span></div>'


def _numbers(report: dict) -> str:
    failures, latency = report["failures"], report["latency_ms"]
    tiles = [
        _tile(f"{report['requests']:,}", "requests"),
        _tile(f"{report['throughput_rps']:,.1f}", "requests/s"),
        _tile(f"{failures['failed']:,} ({failures['rate']:.2%})",
              f"failed = {failures[TRANSPORT]} transport + {failures[HTTP_5XX]} HTTP 5xx"),
        _tile(f"{latency['p50']:.2f} ms", "latency p50"),
        _tile(f"{latency['p99']:.2f} ms", "latency p99"),
        _tile(f"{report.get('reconnects', 0):,}", "reconnects: stale keep-alive, resent"),
    ]
    out = f'<div class="tiles">{"".join(tiles)}</div>'
    if report.get("thresholds"):
        rows = [[_esc(row["threshold"]), _esc(row["shown"]),
                 '<span class="passed">passed</span>' if row["passed"] else '<span class="failed">FAILED</span>']
                for row in report["thresholds"]]
        failed = any(not row["passed"] for row in report["thresholds"])
        out += "<h2>Thresholds</h2>" + _table(["threshold", "measured", "result"], rows)
        out += f'<p class="note">Exit status {FAILED_EXIT_STATUS if failed else 0}.</p>'
    return out


def _tables(report: dict, names: list[str]) -> str:
    rows = []
    for index, name in enumerate(names):
        row = report["backends"].get(name)
        if row:
            rows.append([_swatch(index) + _esc(name), f"{row['requests']:,}", f"{row['share']:.1%}",
                         f"{row['failed']:,}", f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}"])
        else:
            rows.append([_swatch(index) + _esc(name), "0", "0.0%", "0", "-", "-"])
    out = "<h2>Backends</h2>" + _table(["backend", "requests", "share", "failed", "p50 ms", "p99 ms"], rows)
    out += ('<p class="note">Share of the answered requests, by the X-Backend (else X-Upstream) header; '
            "failed: its 5xx answers.</p>")
    statuses = [[_esc(code), f"{count:,}"] for code, count in report["status_codes"].items()] or [["none", "0"]]
    kinds = [[_esc(kind), f"{count:,}"] for kind, count in report["failures"]["transport_by_kind"].items()]
    out += "<h2>Answers and transport errors</h2>" + _table(["status", "requests"], statuses)
    if kinds:
        out += _table(["transport error", "requests"], kinds)
    return out


def _events(events: Sequence[tuple[float, str]]) -> str:
    if not events:
        return ""
    items = "".join(f"<li>{_esc(label)} <span class='note'>at {at:.2f} s</span></li>" for at, label in events)
    return f"<h2>Events</h2><ol>{items}</ol><p class='note'>Numbered as the dashed lines on the charts.</p>"


def _time_charts(timeline: list[dict], names: list[str], events) -> str:
    if not timeline:
        return "<p>No requests were sent.</p>"
    width = timeline[0]["width_s"]
    x_max = len(timeline) * width
    middle = [(row["t_s"] + width / 2, row) for row in timeline]
    latency = [Series(label, c, [(x, row[key] if row["requests"] else None) for x, row in middle])
               for label, key, c in (("p50", "p50_ms", colour(0)), ("p99", "p99_ms", colour(3)))]
    shares = [Series(name, colour(i), [(x, row["share"].get(name, 0.0) if row["share"] else None) for x, row in middle])
              for i, name in enumerate(names)]
    volume = [Series(label, c, [(row["t_s"], value(row) / width) for row in timeline]) for label, value, c in (
        ("not failed", lambda row: row["requests"] - row["failed"], OK_COLOUR),
        ("failed: transport", lambda row: row[TRANSPORT], TRANSPORT_COLOUR),
        ("failed: HTTP 5xx", lambda row: row[HTTP_5XX], HTTP_5XX_COLOUR))]
    bucket = f"every {width:g} s"
    return (line_chart(f"Latency over time ({bucket})", "ms", latency, x_max, events)
            + stacked_area(f"Share of traffic per backend ({bucket})", shares, x_max, events)
            + stacked_bars(f"Requests per second, and failures ({bucket})", "requests/s", volume, width, x_max,
                           events))


def _balancer(balancer: dict, x_max: float) -> str:
    samples = balancer["samples"]
    names = sorted({name for sample in samples for name in sample["backends"]})
    x_max = max([x_max] + [s["t_s"] for s in samples])
    rows, colours = [], {}
    for name in names:
        seen = [(s["t_s"], s["backends"].get(name, {}).get("state")) for s in samples]
        spans = [(t, seen[i + 1][0] if i + 1 < len(seen) else x_max, state or "unknown")
                 for i, (t, state) in enumerate(seen)]
        rows.append((name, spans))
        for _, _, state in spans:
            colours.setdefault(state, STATE_COLOURS.get(state, colour(len(colours) + 4)))

    def lines(key: str) -> list[Series]:
        return [Series(name, colour(i), [(s["t_s"], s["backends"][name][key]) for s in samples
                                         if s["backends"].get(name, {}).get(key) is not None])
                for i, name in enumerate(names)]

    return ("<h2>What the balancer saw</h2><p class='note'>From its /metrics, scraped every second "
            f"({len(samples)} scrapes). Backends are named as the balancer names them.</p>"
            + state_strip("Backend state", rows, x_max, colours)
            + line_chart("Requests in flight at the balancer, per backend", "in flight", lines("in_flight"), x_max)
            + line_chart("Retries sent to each backend, per scrape", "retries", lines("retries"), x_max))


def render_report(title: str, meta: dict, report: dict, backends: Sequence[str], histogram: LogHistogram) -> str:
    names = list(backends) + [name for name in report["backends"] if name not in backends]
    timeline = report["timeline"]
    body = (_numbers(report) + _tables(report, names) + _events(report["events"])
            + "<h2>Over time</h2>" + _time_charts(timeline, names, report["events"])
            + "<h2>Latency</h2>" + histogram_chart("Latency histogram", histogram.buckets_ms(40)))
    if report.get("balancer"):
        x_max = len(timeline) * timeline[0]["width_s"] if timeline else 1.0
        body += _balancer(report["balancer"], x_max)
    return _page(title, meta, body)


def write_report(path: str, title: str, meta: dict, report: dict, backends: Sequence[str],
                 histogram: LogHistogram) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(render_report(title, meta, report, backends, histogram))


def render_comparison(comparison: dict, meta: dict) -> str:
    """One table per measure, then one chart per measure with a line per algorithm."""
    algorithms = list(comparison["algorithms"])
    summaries, timelines = comparison["algorithms"], comparison["timelines"]
    rows = [[_swatch(i) + _esc(alg), f"{summaries[alg]['latency_ms']['p50']:.2f}",
             f"{summaries[alg]['latency_ms']['p99']:.2f}", f"{summaries[alg]['failures']['failed']:,}",
             f"{summaries[alg]['failures'][TRANSPORT]:,}", f"{summaries[alg]['failures'][HTTP_5XX]:,}",
             f"{summaries[alg]['throughput_rps']:,.0f}"] for i, alg in enumerate(algorithms)]
    body = (f"<p>Compared on {_esc(comparison['source'])}.</p><h2>Latency, failures, throughput</h2>"
            + _table(["algorithm", "p50 ms", "p99 ms", "failed", "transport", "HTTP 5xx", "req/s"], rows))
    slow = comparison.get("slow_backend")
    head = ["algorithm"] + [_esc(name) + (" (slow)" if name == slow else "") for name in comparison["backends"]]
    shares = [[_swatch(i) + _esc(alg)] + [f"{summaries[alg]['backends'].get(name, {'share': 0})['share']:.1%}"
                                         for name in comparison["backends"]] for i, alg in enumerate(algorithms)]
    body += "<h2>Share of traffic per backend</h2>" + _table(head, shares)
    if slow:
        body += f"<p class='note'>{_esc(slow)} answers in {comparison['slow_backend_ms']:g} ms.</p>"
    events = next(iter(comparison["events"].values()), []) if comparison["events"] else []
    body += _events(events) + "<h2>Over time, per algorithm</h2>" + _comparison_charts(algorithms, timelines, slow, events)
    return _page(f"Comparison: {', '.join(algorithms)}", meta, body)


def _comparison_charts(algorithms: list[str], timelines: dict, slow: str | None, events) -> str:
    if not any(timelines.values()):
        return "<p>No requests were sent.</p>"
    width = next(rows for rows in timelines.values() if rows)[0]["width_s"]
    x_max = max(len(rows) for rows in timelines.values()) * width
    measures = [("p50 latency", "ms", lambda row: row["p50_ms"], True),
                ("p99 latency", "ms", lambda row: row["p99_ms"], True),
                ("Requests per second", "requests/s", lambda row: row["requests"] / width, False),
                ("Failed requests per second (transport + 5xx)", "failed/s", lambda row: row["failed"] / width, False)]
    if slow:
        measures.append((f"Share of {slow}, the slow backend", "% of answered",
                         lambda row: row["share"].get(slow, 0.0) * 100, True))
    out = ""
    for title, unit, value, answered_only in measures:
        series = [Series(alg, colour(i), [(row["t_s"] + width / 2, value(row) if row["requests"] or not answered_only
                                           else None) for row in timelines[alg]])
                  for i, alg in enumerate(algorithms)]
        out += line_chart(f"{title} (every {width:g} s)", unit, series, x_max, events)
    return out


def write_comparison(path: str, comparison: dict, meta: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(render_comparison(comparison, meta))
