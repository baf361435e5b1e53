"""Small line charts as inline SVG, so an HTML report needs no plotting library and no network."""
from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high == low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def line_chart(series: dict[str, Sequence[tuple[float, float]]], *, title: str, x_label: str = "step",
               width: int = 560, height: int = 260) -> str:
    """One SVG with a line per series (points are (x, y)); empty string when there is nothing to draw."""
    series = {name: sorted(points) for name, points in series.items() if points}
    if not series:
        return ""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    left, right, top, bottom = 56, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>']
    for y in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.3g}</text>')
    for x in _ticks(x0, x1):
        parts.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" font-size="11" '
                     f'text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" font-size="11" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        if len(pts) <= 40:  # markers only where they stay readable
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in pts]
        parts.append(f'<text x="{left + plot_w - 4}" y="{top + 16 + 14 * i}" font-size="12" text-anchor="end" '
                     f'fill="{colour}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
