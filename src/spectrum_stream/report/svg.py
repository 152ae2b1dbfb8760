"""Small SVG building blocks for the report's pictures: colour maps, nice ticks, escaped text.

Why SVG written by hand, not matplotlib: the pictures are grids of cells and a few histograms; as
inline SVG they are sharp at any zoom, carry each module's raw key as a hover `<title>`, cost no
import of a plotting library (about a second) and render 20,000 cells in well under a second.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

# Colour-blind-safe, perceptually uniform maps, as 11 evenly spaced stops (the published viridis
# and plasma values); colours in between are interpolated linearly in RGB.
VIRIDIS = (
    "#440154 #482475 #414487 #355f8d #2a788e #21918c #22a884 #44bf70 #7ad151 #bddf26 #fde725"
).split()
PLASMA = (
    "#0d0887 #41049d #6a00a8 #8f0da4 #b12a90 #cc4778 #e16462 #f2844b #fca636 #fcce25 #f0f921"
).split()
MISSING_FILL = "url(#missing)"  # hatched: no such module
FONT = "font-family:system-ui,sans-serif"


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


def colours(values: np.ndarray, stops: list[str] = VIRIDIS) -> list[str]:
    """Hex colours for values in [0, 1] (clipped); NaN -> the missing-cell pattern."""
    table = np.array([_rgb(c) for c in stops])
    v = np.asarray(values, dtype=float).ravel()
    ok = np.isfinite(v)
    pos = np.clip(np.where(ok, v, 0.0), 0.0, 1.0) * (len(stops) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(stops) - 2)
    frac = (pos - lo)[:, None]
    rgb = np.rint(table[lo] * (1 - frac) + table[lo + 1] * frac).astype(int)
    out = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]
    return [c if good else MISSING_FILL for c, good in zip(out, ok)]


def defs() -> str:
    """Shared definitions: the hatch that marks a missing module."""
    return (
        '<defs><pattern id="missing" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#9a9a9a" stroke-width="2"/></pattern></defs>'
    )


def gradient(ident: str, stops: list[str] = VIRIDIS, vertical: bool = True) -> str:
    """A linear gradient through the map's stops, bottom (0) to top (1) when vertical."""
    end = 'x1="0" y1="1" x2="0" y2="0"' if vertical else 'x1="0" y1="0" x2="1" y2="0"'
    parts = "".join(
        f'<stop offset="{i / (len(stops) - 1):.3f}" stop-color="{c}"/>' for i, c in enumerate(stops)
    )
    return f'<linearGradient id="{ident}" {end}>{parts}</linearGradient>'


def text(
    x: float, y: float, body: str, *, size: float = 11, anchor: str = "start", extra: str = ""
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}" {extra}>'
        f"{escape(body)}</text>"
    )


def svg(width: float, height: float, body: str, label: str) -> str:
    """A scalable SVG element: drawn at width x height units, shrunk to fit narrower pages."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label, quote=True)}"'
        f' viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}"'
        f' style="{FONT}">{defs()}{body}</svg>'
    )


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi], at most about `most`."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, most)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^k inside [lo, hi] (only powers of ten past three decades)."""
    if lo <= 0 or hi <= lo:
        return []
    subs = (1.0, 2.0, 5.0) if hi / lo < 1e3 else (1.0,)
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in subs:
            v = m * 10.0**k
            if lo <= v <= hi:
                out.append(v)
    return out


def fmt(x: float) -> str:
    """A tick or value label: short, no float noise."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def thin(count: int, cell: float, spacing: float) -> int:
    """Label every k-th of `count` cells of size `cell` so labels are `spacing` apart."""
    if cell <= 0:
        return max(1, count)
    k = max(1, math.ceil(spacing / cell))
    for nice in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 256, 500, 1000):
        if nice >= k:
            return nice
    return k


def snr_text(x: float) -> str:
    """An SNR as the pictures print it."""
    return f"{x:.4g}" if math.isfinite(x) else "none"


def legend_row(x: float, y: float, items: list[tuple[str, str]]) -> str:
    """One line of (swatch svg at the origin, words); returns the drawn group."""
    parts, cx = [], x
    for swatch, words in items:
        parts.append(f'<g transform="translate({cx:.1f},{y - 9:.1f})">{swatch}</g>')
        parts.append(text(cx + 16, y, words, size=11))
        cx += 24 + 6.2 * len(words)
    return "".join(parts)


def cell(x: float, y: float, w: float, h: float, fill: str, title: str = "") -> str:
    """One grid cell, its hover text in a `<title>`."""
    tip = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{fill}">{tip}</rect>'
    )


def colourbar(
    x: float, y: float, height: float, ident: str, stops: list[str], label: str, ticks
) -> str:
    """A vertical bar with its scale named, ticks as (position 0..1, label)."""
    parts = [
        f"<defs>{gradient(ident, stops)}</defs>",
        f'<rect x="{x}" y="{y}" width="14" height="{height:.1f}" fill="url(#{ident})" '
        'stroke="#888" stroke-width="0.5"/>',
    ]
    for pos, label_text in ticks:
        ty = y + height * (1 - pos)
        parts.append(
            f'<line x1="{x + 14}" y1="{ty:.1f}" x2="{x + 18}" y2="{ty:.1f}" stroke="#444"/>'
        )
        parts.append(text(x + 21, ty + 4, label_text, size=10))
    parts.append(
        text(
            x - 12,
            y + height / 2,
            label,
            size=11,
            anchor="middle",
            extra=f'transform="rotate(-90 {x - 12:.1f} {y + height / 2:.1f})"',
        )
    )
    return "".join(parts)
