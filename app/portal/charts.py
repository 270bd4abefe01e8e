"""A trend chart of a repeated numeric result (e.g. glucose over time), drawn on the server as SVG.

Pure (no Flask): points in, SVG text out. No script, no style element: only presentation attributes, so the
chart passes the portal's strict Content-Security-Policy. The chart carries a text alternative (role img,
<title> and <desc> listing every value) for screen readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from html import escape

W, H = 320, 210
MAX_TICKS = 10  # gridlines: _nice gives about 4
PLOTTABLE = 1e15  # no result is this large; beyond it a float axis loses its steps, and the table shows the value
LEFT, RIGHT, TOP, BOTTOM = 40, 14, 26, 34


@dataclass(frozen=True)
class Point:
    when: datetime
    value: float


def _nice(lo: float, hi: float) -> tuple[float, float, float]:
    """Axis bounds and step with round numbers. Values that are equal, or closer than a float can step between
    at their size (1e17 and 1e17 + 16), get an axis around them."""
    size = max(abs(lo), abs(hi), 1.0)
    if hi - lo < size * 1e-9:
        pad = max(1.0, size / 10)
        hi, lo = hi + pad, lo - pad
    span = hi - lo
    raw = span / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = min(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = (lo // step) * step
    end = -((-hi) // step) * step
    return start, end, step


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.1f}"


def _plottable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and abs(value) < PLOTTABLE


def trend_svg(points: list[Point], label: str, unit: str = "", low: float | None = None,
              high: float | None = None) -> str:
    """The chart, or "" when fewer than two values can be drawn (the page's table lists every value anyway)."""
    pts = sorted((p for p in points if _plottable(p.value)), key=lambda p: p.when)
    if len(pts) < 2:
        return ""
    low, high = (low if _plottable(low) else None), (high if _plottable(high) else None)
    values = [p.value for p in pts] + [v for v in (low, high) if v is not None]
    y0, y1, step = _nice(min(values), max(values))
    t0, t1 = pts[0].when.timestamp(), pts[-1].when.timestamp()
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(p: Point) -> float:
        return LEFT + (pw / 2 if t1 == t0 else (p.when.timestamp() - t0) / (t1 - t0) * pw)

    def y(v: float) -> float:
        return TOP + ph - (v - y0) / (y1 - y0) * ph

    desc = "; ".join(f"{p.when:%Y-%m-%d} {_fmt(p.value)} {unit}".strip() for p in pts)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{escape(label)}">',
           f"<title>{escape(label)}</title><desc>{escape(desc)}</desc>",
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>']
    if low is not None and high is not None:
        out.append(f'<rect x="{LEFT}" y="{y(high):.1f}" width="{pw}" height="{max(0.0, y(low) - y(high)):.1f}" '
                   f'fill="#e3f1e6"/>')
    for i in range(min(MAX_TICKS, round((y1 - y0) / step)) + 1):
        v = y0 + i * step
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#c9d3dd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="13" '
                   f'fill="#1a1a1a">{_fmt(v)}</text>')
    coords = " ".join(f"{x(p):.1f},{y(p.value):.1f}" for p in pts)
    out.append(f'<polyline points="{coords}" fill="none" stroke="#0a4a85" stroke-width="2.5"/>')
    for p in pts:
        outside = (high is not None and p.value > high) or (low is not None and p.value < low)
        out.append(f'<circle cx="{x(p):.1f}" cy="{y(p.value):.1f}" r="4.5" '
                   f'fill="{"#a11b1b" if outside else "#0a4a85"}"/>')
    for p, anchor in ((pts[0], "start"), (pts[-1], "end")):
        out.append(f'<text x="{x(p):.1f}" y="{H - 12}" text-anchor="{anchor}" font-size="13" '
                   f'fill="#1a1a1a">{p.when:%Y-%m-%d}</text>')
    if unit:
        out.append(f'<text x="4" y="{TOP - 10}" font-size="13" fill="#1a1a1a">{escape(unit)}</text>')
    out.append("</svg>")
    return "".join(out)
