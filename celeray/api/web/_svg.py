"""A small line chart as inline SVG: the pipeline page's throughput over time.

Pure text building, no plotting library: points are scaled into a fixed box, every label and
tooltip is escaped, and the result is :class:`markupsafe.Markup` for the template.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["line_chart"]

WIDTH, HEIGHT = 640, 180  # the chart's box in SVG units; it scales with the page
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 64, 16, 12, 28  # room for the axis labels


def _fmt(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def line_chart(
    points: Sequence[tuple[float, float]], *, unit: str = "rows/s", title: str = "throughput"
) -> Markup:
    """An SVG line chart of ``(unix time, value)`` points, oldest first.

    The y axis starts at 0 and ends at the largest value; the x axis spans the first to the
    last time (one point sits in the middle). Each point has a tooltip with its time (UTC)
    and value. No points: a box saying so.
    """
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}">'
            f"<title>{escape(title)} ({escape(unit)})</title>")  # fmt: skip
    if not points:
        return Markup(head + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                      "no runs yet</text></svg>")  # fmt: skip
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    top = max(max(p[1] for p in points), 0.0) or 1.0
    inner_w = WIDTH - _PAD_LEFT - _PAD_RIGHT
    inner_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM

    def xy(t: float, v: float) -> tuple[float, float]:
        x = _PAD_LEFT + (inner_w / 2 if x1 == x0 else (t - x0) / (x1 - x0) * inner_w)
        y = _PAD_TOP + inner_h - max(v, 0.0) / top * inner_h
        return round(x, 1), round(y, 1)

    coords = [xy(t, v) for t, v in points]
    base = _PAD_TOP + inner_h
    parts = [
        head,
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{base}" x2="{WIDTH - _PAD_RIGHT}" '
        f'y2="{base}" stroke="currentColor"/>',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{base}" '
        'stroke="currentColor"/>',
        f'<text x="{_PAD_LEFT - 4}" y="{_PAD_TOP + 10}" text-anchor="end">{escape(_fmt(top))}'
        "</text>",
        f'<text x="{_PAD_LEFT - 4}" y="{base}" text-anchor="end">0</text>',
        f'<text x="{_PAD_LEFT - 4}" y="{HEIGHT / 2}" text-anchor="end">{escape(unit)}</text>',
        f'<text x="{_PAD_LEFT}" y="{HEIGHT - 8}">{escape(_when(x0))}</text>',
    ]
    if x1 != x0:
        parts.append(f'<text x="{WIDTH - _PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end">'
                     f"{escape(_when(x1))}</text>")  # fmt: skip
    if len(coords) > 1:
        line = " ".join(f"{x},{y}" for x, y in coords)
        parts.append(f'<polyline fill="none" stroke="currentColor" points="{line}"/>')
    for (x, y), (t, v) in zip(coords, points, strict=True):
        tip = escape(f"{_when(t)} UTC: {_fmt(v)} {unit}")
        parts.append(f'<circle cx="{x}" cy="{y}" r="3"><title>{tip}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))
