"""Inline SVG charts for the HTML report: no scripts, no fonts, nothing fetched.

Each chart is drawn twice, at a wide and at a narrow size, and the page's CSS
shows the one that fits the screen: text stays readable on a phone instead of
being a wide drawing shrunk to a third. The legend is HTML under the chart,
with the very colours the series are drawn in (``PALETTE`` by index), so
nothing in the drawing can overlap a label. Events (a backend taken down, a
crash) are numbered dashed lines; the page lists what each number was.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
SIZES = {"wide": (860, 250), "narrow": (380, 240)}
MAX_X_TICKS = {"wide": 10, "narrow": 4}
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 22, 36
X_LABEL_DROP = 22  # x labels this far below the axis: clear of the y axis's "0" whatever the font
DOTS_UP_TO = 40  # series with this few points also get a dot per point, so one point still shows


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    points: Sequence[tuple[float, float]]  # (x, y) in data units


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * 0.999999:
            return step * power
    return 10 * power


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class Frame:
    """Data units to pixels for one size of one chart."""

    def __init__(self, size: str, x_max: float, y_max: float, x_min: float = 0.0):
        self.size = size
        self.width, self.height = SIZES[size]
        self.x_min, self.x_max = x_min, max(x_max, x_min + 1e-9)
        self.y_max = y_max

    def x(self, value: float) -> float:
        return LEFT + (self.width - LEFT - RIGHT) * (value - self.x_min) / (self.x_max - self.x_min)

    def y(self, value: float) -> float:
        return self.height - BOTTOM - (self.height - TOP - BOTTOM) * (value / self.y_max if self.y_max else 0)

    def grid(self, y_label: str, y_format=_label) -> str:
        out = []
        for fraction in (0, 0.5, 1):
            y = self.y(self.y_max * fraction)
            out.append(f'<line x1="{LEFT}" x2="{self.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                       f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                       f'{y_format(self.y_max * fraction)}</text>')
        middle = (TOP + self.height - BOTTOM) / 2
        out.append(f'<text x="12" y="{middle:.1f}" class="tick" transform="rotate(-90 12 {middle:.1f})" '
                   f'text-anchor="middle">{html.escape(y_label)}</text>')
        return "".join(out)

    def time_ticks(self) -> str:
        span = self.x_max - self.x_min
        step = nice_ceiling(span / MAX_X_TICKS[self.size])
        out, tick = [], 0.0
        while tick <= self.x_max + 1e-9:
            if tick >= self.x_min:
                out.append(f'<text x="{self.x(tick):.1f}" y="{self.height - BOTTOM + X_LABEL_DROP}" class="tick" '
                           f'text-anchor="middle">{tick:g}s</text>')
            tick = round(tick + step, 9)
        return "".join(out)

    def events(self, events: Sequence[tuple[float, str]]) -> str:
        out = []
        for number, (at, label) in enumerate(events, 1):
            x = self.x(at)
            out.append(f'<g class="event"><title>{number}: {html.escape(label)} at {at:g}s</title>'
                       f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{self.height - BOTTOM}"/>'
                       f'<text x="{x + 3:.1f}" y="{TOP - 10 + 9 * (number % 2)}">{number}</text></g>')
        return "".join(out)

    def svg(self, title: str, body: str) -> str:
        return (f'<svg class="chart {self.size}" viewBox="0 0 {self.width} {self.height}" role="img" '
                f'aria-label="{html.escape(title)}">{body}</svg>')


def figure(title: str, drawings: str, legend: Sequence[tuple[str, str]] = (), note: str = "") -> str:
    items = "".join(f'<li><span class="swatch" style="background:{c}"></span>{html.escape(label)}</li>'
                    for label, c in legend)
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>{drawings}'
            + (f'<ul class="legend">{items}</ul>' if items else "")
            + (f'<p class="note">{html.escape(note)}</p>' if note else "") + "</figure>")


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The stretches between gaps (a y of None: nothing to show there), so a line does not bridge them."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def _polyline(frame: Frame, series: Series) -> str:
    out = ""
    for run in _runs(series.points):
        points = [(frame.x(x), frame.y(y)) for x, y in run]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out += f'<polyline class="series" points="{coords}" fill="none" stroke="{series.colour}" stroke-width="2"/>'
        if len(series.points) <= DOTS_UP_TO or len(run) == 1:
            out += "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{series.colour}"/>' for x, y in points)
    return out


def line_chart(title: str, y_label: str, series: Sequence[Series], x_max: float,
               events: Sequence[tuple[float, str]] = (), y_max: float | None = None, note: str = "") -> str:
    top = y_max or nice_ceiling(max((y for s in series for _, y in s.points if y is not None), default=0) * 1.05)
    drawings = ""
    for size in SIZES:
        frame = Frame(size, x_max, top)
        body = frame.grid(y_label) + frame.time_ticks() + "".join(_polyline(frame, s) for s in series)
        drawings += frame.svg(title, body + frame.events(events))
    return figure(title, drawings, [(s.label, s.colour) for s in series], note)


def stacked_area(title: str, series: Sequence[Series], x_max: float,
                 events: Sequence[tuple[float, str]] = ()) -> str:
    """Shares (0..1) stacked to 100%; ``series`` share the x of their points, and their gaps (y of None)."""
    drawings = ""
    for size in SIZES:
        frame = Frame(size, x_max, 100)
        body = frame.grid("% of answered", lambda v: f"{v:.0f}%") + frame.time_ticks()
        below = [0.0 if y is not None else None for _, y in series[0].points] if series else []
        for s in series:
            upper = [None if b is None else b + (y or 0.0) for b, (_, y) in zip(below, s.points, strict=True)]
            xs = [x for x, _ in s.points]
            stretches = _runs([(x, None if u is None else (b, u)) for x, b, u in zip(xs, below, upper, strict=True)])
            for stretch in stretches:
                outline = [(frame.x(x), frame.y(u * 100)) for x, (_, u) in stretch]
                outline += [(frame.x(x), frame.y(b * 100)) for x, (b, _) in reversed(stretch)]
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in outline)
                body += f'<polygon points="{coords}" fill="{s.colour}" fill-opacity="0.8" stroke="{s.colour}"/>'
            below = upper
        drawings += frame.svg(title, body + frame.events(events))
    return figure(title, drawings, [(s.label, s.colour) for s in series])


def stacked_bars(title: str, y_label: str, series: Sequence[Series], width: float, x_max: float,
                 events: Sequence[tuple[float, str]] = ()) -> str:
    """Bars ``width`` wide at each x (a bucket's start), the series stacked bottom to top."""
    totals: dict[float, float] = {}
    for s in series:
        for x, y in s.points:
            totals[x] = totals.get(x, 0.0) + y
    top = nice_ceiling(max(totals.values(), default=0) * 1.05)
    drawings = ""
    for size in SIZES:
        frame = Frame(size, x_max, top)
        body = frame.grid(y_label) + frame.time_ticks()
        base: dict[float, float] = {}
        bar = max(1.0, frame.x(width) - frame.x(0) - 1)
        for s in series:
            for x, y in s.points:
                if y:
                    low = base.get(x, 0.0)
                    body += (f'<rect x="{frame.x(x):.1f}" y="{frame.y(low + y):.1f}" width="{bar:.1f}" '
                             f'height="{frame.y(low) - frame.y(low + y):.1f}" fill="{s.colour}"/>')
                    base[x] = low + y
        drawings += frame.svg(title, body + frame.events(events))
    return figure(title, drawings, [(s.label, s.colour) for s in series])


def histogram_chart(title: str, bins: Sequence[tuple[float, float, int]]) -> str:
    """Log-spaced latency bins (low ms, high ms, count), labelled at a few edges."""
    top = nice_ceiling(max((count for _, _, count in bins), default=0) * 1.05)
    drawings = ""
    for size in SIZES:
        frame = Frame(size, len(bins) or 1, top)
        body = frame.grid("requests")
        step = max(1, len(bins) // MAX_X_TICKS[size])
        for i, (low, high, count) in enumerate(bins):
            x0, x1 = frame.x(i), frame.x(i + 1)
            body += (f'<rect x="{x0:.1f}" y="{frame.y(count):.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
                     f'height="{frame.y(0) - frame.y(count):.1f}" fill="{PALETTE[2]}">'
                     f'<title>{low:.2f}-{high:.2f} ms: {count}</title></rect>')
            if i % step == 0:
                body += (f'<text x="{x0:.1f}" y="{frame.height - BOTTOM + X_LABEL_DROP}" class="tick" text-anchor="middle">'
                         f'{low:.3g}</text>')
        drawings += frame.svg(title, body)
    return figure(title, drawings, note="milliseconds, log scale; each bar a range of latencies")


def state_strip(title: str, rows: Sequence[tuple[str, list[tuple[float, float, str]]]], x_max: float,
                colours: dict[str, str]) -> str:
    """One band per backend, coloured by state over time: ``rows`` of (name, [(from s, to s, state)])."""
    drawings = ""
    band, label = 18, 16  # each backend: its name on a line, then its band
    for size in SIZES:
        frame = Frame(size, x_max, 1)
        frame.height = TOP + (band + label) * len(rows) + BOTTOM
        body = frame.time_ticks()
        for i, (name, spans) in enumerate(rows):
            y = TOP + i * (band + label)
            body += f'<text x="{LEFT}" y="{y + 12}" class="tick">{html.escape(name)}</text>'
            for start, end, state in spans:
                body += (f'<rect x="{frame.x(start):.1f}" y="{y + label}" width="{max(1.0, frame.x(end) - frame.x(start)):.1f}"'
                         f' height="{band - 2}" fill="{colours.get(state, "#999")}"><title>{html.escape(name)}: '
                         f'{html.escape(state)} {start:g}-{end:g}s</title></rect>')
        drawings += frame.svg(title, body)
    return figure(title, drawings, list(colours.items()))
