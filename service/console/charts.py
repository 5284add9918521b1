"""Bar charts as SVG, drawn here: no chart library, no script, nothing the Content-Security-Policy must allow.

Colours are SVG presentation attributes (not ``style``); every bar carries a ``<title>`` (its value, read out by
screen readers and shown on hover) and the chart an ``aria-label`` saying what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

COLOURS = ("#0b5cad", "#d4760a", "#17663a", "#8a3ab9", "#a1151f", "#4f5863")
WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 28


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    step = 10 ** (len(str(int(top))) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        if top <= factor * step:
            return float(factor * step)
    return float(10 * step)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.2f}"


def bars(label: str, categories: Sequence[str], series: Sequence[Series], *, stacked: bool = False,
         unit: str = "") -> Markup:
    """Grouped (or ``stacked``) bars: one group per category, one bar per series."""
    n = max(len(categories), 1)
    totals = [sum(s.values[i] for s in series) for i in range(len(categories))]
    peak = max(totals if stacked else [v for s in series for v in s.values] or [0], default=0)
    top = _nice(peak)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / n
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    for tick in range(5):   # grid lines and the value axis
        value = top * tick / 4
        y = TOP + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d7de"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(value))}</text>')
    every = max(1, n // 12)   # at most about a dozen category labels
    for i, category in enumerate(categories):
        x0 = LEFT + group_w * i
        if i % every == 0:
            parts.append(f'<text x="{x0 + group_w / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                         f'{escape(category)}</text>')
        base = 0.0
        inner = group_w * 0.8
        width = inner if stacked else inner / max(len(series), 1)
        for k, s in enumerate(series):
            value = s.values[i]
            h = plot_h * value / top
            x = x0 + group_w * 0.1 + (0 if stacked else width * k)
            y = TOP + plot_h - h - (plot_h * base / top if stacked else 0)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{COLOURS[k % len(COLOURS)]}"><title>{escape(s.name)}, {escape(category)}: '
                         f'{escape(_fmt(value))}{escape(unit)}</title></rect>')
            if stacked:
                base += value
    parts.append("</svg>")
    legend = "".join(f'<span><span class="swatch sw{k % len(COLOURS)}"></span>{escape(s.name)}</span>'
                     for k, s in enumerate(series))
    return Markup("".join(parts) + f'<div class="legend">{legend}</div>')
