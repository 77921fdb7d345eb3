"""Charts drawn on the server as inline SVG: no script, no external library, readable at any
width (each chart scales to its container through its ``viewBox``).

Two shapes: :func:`line_chart` (series of points over a numeric x axis, with an optional limit
drawn as a dashed line) and :func:`timeline` (one row per environment, one mark per deployment,
coloured by outcome, each a link). Every text placed in the markup is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

#: Series colours, chosen to stay apart for the common kinds of colour blindness.
PALETTE = ("#0969da", "#bc4c00", "#8250df", "#1a7f37", "#bf3989", "#6e7781")
OUTCOME_COLOURS = {
    "succeeded": "#1a7f37",
    "rolled_back": "#cf222e",
    "failed": "#cf222e",
    "running": "#bf8700",
    "aborted": "#6e7781",
}

WIDTH, HEIGHT = 480, 180
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 28


@dataclass
class Series:
    """One named line: ``points`` are (x, y); a y of None leaves a gap."""

    name: str
    points: list[tuple[float, float | None]] = field(default_factory=list)


def _number(value: float) -> str:
    """A tick label: short, without trailing zeros."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    unit: str = "",
    limit: float | None = None,
    x_label: Callable[[float], str] = _number,
    x_title: str = "",
    empty: str = "no data",
) -> str:
    """A ``<figure>``: the chart as SVG, its title and a legend naming each series' colour."""
    drawn = [s for s in series if any(y is not None for _x, y in s.points)]
    caption = f"<figcaption>{escape(title)}</figcaption>"
    if not drawn:
        return f'<figure class="chart empty">{caption}<p class="muted">{escape(empty)}</p></figure>'
    xs = [x for s in drawn for x, y in s.points if y is not None]
    ys = [y for s in drawn for _x, y in s.points if y is not None]
    x_min, x_max = min(xs), max(xs)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    top = _nice_top(max([*ys, limit or 0.0]) * 1.05)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_min) / (x_max - x_min) * inner_w

    def py(y: float) -> float:
        return TOP + inner_h - (y / top) * inner_h

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        tick = top * i / 4
        y = py(tick)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_number(tick))}</text>"
        )
    base = HEIGHT - BOTTOM
    parts.append(
        f'<text class="tick" x="{LEFT}" y="{base + 16}">{escape(x_label(x_min))}</text>'
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{base + 16}" text-anchor="end">'
        f"{escape(x_label(x_max))}</text>"
    )
    if x_title:
        parts.append(
            f'<text class="tick" x="{LEFT + inner_w / 2:.1f}" y="{base + 16}" '
            f'text-anchor="middle">{escape(x_title)}</text>'
        )
    if limit is not None:
        y = py(limit)
        parts.append(
            f'<line class="limit" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}">'
            f"<title>limit {escape(_number(limit))} {escape(unit)}</title></line>"
        )
    for index, item in enumerate(drawn):
        colour = PALETTE[index % len(PALETTE)]
        runs: list[list[tuple[float, float]]] = [[]]
        for x, value in item.points:
            if value is None:
                runs.append([])
            else:
                runs[-1].append((x, value))
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                parts.append(f'<polyline fill="none" stroke="{colour}" points="{points}"/>')
        for x, value in item.points:
            if value is None:
                continue
            label = f"{item.name}: {_number(value)} {unit} at {x_label(x)}".strip()
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(value):.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(label)}</title></circle>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch c{i % len(PALETTE)}"></span>{escape(s.name)}</li>'
        for i, s in enumerate(drawn)
    )
    if limit is not None:
        legend += f'<li><span class="swatch limit"></span>limit {escape(_number(limit))}</li>'
    unit_text = f" ({escape(unit)})" if unit else ""
    return (
        f'<figure class="chart"><figcaption>{escape(title)}{unit_text}</figcaption>'
        + "".join(parts)
        + f'<ul class="legend">{legend}</ul></figure>'
    )


@dataclass
class Mark:
    """One deployment on the timeline."""

    at: float  # seconds since the epoch
    status: str
    label: str
    href: str


def timeline(rows: dict[str, list[Mark]], *, x_label: Callable[[float], str]) -> str:
    """One row per environment, one mark per deployment (a link to its release)."""
    marks = [m for items in rows.values() for m in items]
    if not marks:
        return '<p class="muted">no deployments yet</p>'
    start, end = min(m.at for m in marks), max(m.at for m in marks)
    if end == start:
        start, end = start - 60, end + 60
    row_h = 28
    height = TOP + row_h * len(rows) + BOTTOM
    inner_w = WIDTH - LEFT - RIGHT - 40
    left = LEFT + 40

    def px(at: float) -> float:
        return left + (at - start) / (end - start) * inner_w

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="deployments over time" '
        'xmlns="http://www.w3.org/2000/svg"><title>deployments over time</title>'
    ]
    for index, (env, items) in enumerate(rows.items()):
        y = TOP + row_h * index + row_h / 2
        parts.append(
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(env)}</text>"
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
        )
        for mark in items:
            colour = OUTCOME_COLOURS.get(mark.status, "#6e7781")
            parts.append(
                f'<a href="{escape(mark.href)}"><circle cx="{px(mark.at):.1f}" cy="{y:.1f}" '
                f'r="6" fill="{colour}"><title>{escape(mark.label)}</title></circle></a>'
            )
    base = height - BOTTOM
    parts.append(
        f'<text class="tick" x="{left}" y="{base + 16}">{escape(x_label(start))}</text>'
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{base + 16}" text-anchor="end">'
        f"{escape(x_label(end))}</text></svg>"
    )
    legend = "".join(
        f'<li><span class="swatch o-{status}"></span>{escape(status.replace("_", " "))}</li>'
        for status in OUTCOME_COLOURS
        if any(m.status == status for m in marks)
    )
    return (
        f'<figure class="chart timeline">{"".join(parts)}<ul class="legend">{legend}</ul></figure>'
    )
