"""``--html report.html``: one self-contained file with the run's charts.

No scripts, fonts or network: the charts are inline SVG drawn here, so the
file opens anywhere, offline, and prints. Four charts:

* latency over time (p50 and p99 per second),
* each backend's share of the traffic over time (stacked),
* requests and errors per second,
* the latency histogram (log-spaced bins),

with the scenario's events as dashed vertical markers on the time charts.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from .histogram import LogHistogram

WIDTH, HEIGHT, PAD = 760, 220, 48
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _x(second: float, seconds: int) -> float:
    return PAD + (WIDTH - 2 * PAD) * (second / max(1, seconds))


def _y(value: float, top: float) -> float:
    return HEIGHT - PAD + (-(HEIGHT - 2 * PAD) * (value / top) if top else 0)


def _frame(title: str, y_label: str, top: float, seconds: int, events: Sequence[tuple[float, str]], body: str) -> str:
    ticks = "".join(
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{_y(top * f, top):.1f}" y2="{_y(top * f, top):.1f}" class="grid"/>'
        f'<text x="{PAD - 6}" y="{_y(top * f, top) + 4:.1f}" class="tick" text-anchor="end">{top * f:.3g}</text>'
        for f in (0, 0.5, 1)
    )
    step = max(1, seconds // 10)
    xticks = "".join(
        f'<text x="{_x(s, seconds):.1f}" y="{HEIGHT - PAD + 16}" class="tick" text-anchor="middle">{s}s</text>'
        for s in range(0, seconds + 1, step)
    )
    marks = "".join(
        f'<line x1="{_x(at, seconds):.1f}" x2="{_x(at, seconds):.1f}" y1="{PAD - 10}" y2="{HEIGHT - PAD}" class="event"/>'
        f'<text x="{_x(at, seconds) + 3:.1f}" y="{PAD - 12 + 11 * (i % 3)}" class="event-label">{html.escape(label)}</text>'
        for i, (at, label) in enumerate(events)
    )
    return (
        f'<figure><figcaption>{html.escape(title)}</figcaption>'
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}">{ticks}{xticks}'
        f'<text x="12" y="{HEIGHT / 2}" class="tick" transform="rotate(-90 12 {HEIGHT / 2})" text-anchor="middle">'
        f'{html.escape(y_label)}</text>{body}{marks}</svg></figure>'
    )


def _polyline(points: list[tuple[float, float]], colour: str, cls: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline class="{cls}" points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'


def latency_chart(timeline: list[dict], events) -> str:
    seconds = len(timeline)
    top = max([row["p99_ms"] for row in timeline] + [1.0]) * 1.1
    body = ""
    for key, colour in (("p50_ms", COLOURS[0]), ("p99_ms", COLOURS[3])):
        points = [(_x(row["second"] + 0.5, seconds), _y(row[key], top)) for row in timeline if row["requests"]]
        body += _polyline(points, colour, f"series {key}")
    legend = (f'<text x="{WIDTH - PAD}" y="{PAD - 30}" text-anchor="end" class="tick">'
              f'<tspan fill="{COLOURS[0]}">p50</tspan>  <tspan fill="{COLOURS[3]}">p99</tspan></text>')
    return _frame("Latency over time", "ms", top, seconds, events, body + legend)


def share_chart(timeline: list[dict], backends: Sequence[str], events) -> str:
    seconds = len(timeline)
    body = ""
    below = [0.0] * seconds
    for index, name in enumerate(backends):
        colour = COLOURS[index % len(COLOURS)]
        upper = [below[i] + row["share"].get(name, 0.0) for i, row in enumerate(timeline)]
        top_points = [(_x(i + 0.5, seconds), _y(upper[i] * 100, 100)) for i in range(seconds)]
        bottom_points = [(_x(i + 0.5, seconds), _y(below[i] * 100, 100)) for i in reversed(range(seconds))]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in top_points + bottom_points)
        body += f'<polygon class="share" points="{coords}" fill="{colour}" fill-opacity="0.75" stroke="none"/>'
        body += (f'<text x="{WIDTH - PAD + 4}" y="{PAD + 14 * index}" class="tick" fill="{colour}">'
                 f'{html.escape(name)}</text>')
        below = upper
    return _frame("Share of traffic per backend", "%", 100, seconds, events, body)


def volume_chart(timeline: list[dict], events) -> str:
    seconds = len(timeline)
    top = max([row["requests"] for row in timeline] + [1]) * 1.1
    bar = (WIDTH - 2 * PAD) / max(1, seconds) * 0.8
    body = ""
    for row in timeline:
        x = _x(row["second"] + 0.1, seconds)
        body += (f'<rect class="bar" x="{x:.1f}" y="{_y(row["requests"], top):.1f}" width="{bar:.1f}" '
                 f'height="{_y(0, top) - _y(row["requests"], top):.1f}" fill="{COLOURS[0]}"/>')
        if row["errors"]:
            body += (f'<rect class="bar errors" x="{x:.1f}" y="{_y(row["errors"], top):.1f}" width="{bar:.1f}" '
                     f'height="{_y(0, top) - _y(row["errors"], top):.1f}" fill="{COLOURS[3]}"/>')
    return _frame("Requests (blue) and errors (red) per second", "requests", top, seconds, events, body)


def histogram_chart(histogram: LogHistogram) -> str:
    bins = histogram.buckets_ms(40)
    top = max([count for _, _, count in bins] + [1]) * 1.1
    width = (WIDTH - 2 * PAD) / max(1, len(bins))
    body = ""
    for i, (low, high, count) in enumerate(bins):
        x = PAD + i * width
        body += (f'<rect class="bar" x="{x:.1f}" y="{_y(count, top):.1f}" width="{width * 0.9:.1f}" '
                 f'height="{_y(0, top) - _y(count, top):.1f}" fill="{COLOURS[2]}"><title>{low:.2f}-{high:.2f} ms: '
                 f'{count}</title></rect>')
    if bins:
        body += (f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" class="tick">{bins[0][0]:.2f} ms</text>'
                 f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 16}" class="tick" text-anchor="end">'
                 f'{bins[-1][1]:.2f} ms</text>')
    return (f'<figure><figcaption>Latency histogram (log-spaced bins)</figcaption>'
            f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="Latency histogram">{body}</svg></figure>')


STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; } figure { margin: 18px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
.grid { stroke: #ddd; } .tick { font-size: 11px; fill: #555; }
.event { stroke: #444; stroke-dasharray: 4 3; } .event-label { font-size: 10px; fill: #444; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }
pre { background: #f6f6f6; padding: 8px; }
"""


def render(title: str, summary: dict, timeline: list[dict], backends: Sequence[str],
           events: Sequence[tuple[float, str]], histogram: LogHistogram) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{row['requests']}</td><td>{row['share'] * 100:.1f}%</td></tr>"
        for name, row in summary["backends"].items()
    )
    latency = " ".join(f"{k} {v:.2f}" for k, v in summary["latency_ms"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{summary['requests']} requests in {summary['elapsed_s']:.2f}s ({summary['throughput_rps']:.1f} req/s);
status codes {html.escape(json.dumps(summary['status_codes']))}; errors {html.escape(json.dumps(summary['errors']))};
latency (ms): {latency}</p>
<table><tr><th>backend</th><th>requests</th><th>share</th></tr>{rows}</table>
{latency_chart(timeline, events)}
{share_chart(timeline, backends, events)}
{volume_chart(timeline, events)}
{histogram_chart(histogram)}
<details><summary>Timeline data</summary><pre>{html.escape(json.dumps(timeline, indent=1))}</pre></details>
</body></html>
"""


def write_html(path: str, title: str, summary: dict, timeline: list[dict], backends: Sequence[str],
               events: Sequence[tuple[float, str]], histogram: LogHistogram) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(render(title, summary, timeline, backends, events, histogram))
