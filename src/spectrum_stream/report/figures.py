"""The report's grids as inline SVG strings: the layer grids, the outside strip, the expert grids
(the spectra's histograms are histograms.py).

Each function takes data already shaped (grid.py) and returns one `<svg>` element. Sizes are
capped whatever the results hold: a figure has at most MAX_COLUMNS grid columns (build.py splits
the rest into more figures), cells shrink to a floor and the drawing to a ceiling, so a page's
pictures are bounded in pixels, and each is written in one pass over its cells.
"""

from __future__ import annotations

import math
import zlib
from html import escape

import numpy as np

from .grid import Entry, ExpertGrid, LayerGrid
from .keys import human_label
from .svg import (
    PLASMA,
    VIRIDIS,
    cell,
    colourbar,
    colours,
    legend_row,
    snr_text,
    svg,
    text,
    thin,
)

MAX_COLUMNS = 48  # projections per layer grid; more are split over several figures
MAX_EXPERT_COLUMNS = 256  # experts per expert grid; more are split over several figures
MAX_OUTSIDE = 24  # outside-the-layer modules drawn; the rest are in the tables
ALPHA_LO, ALPHA_HI = 1.0, 8.0  # the alpha colour scale; the 2-6 band is marked on it
FEW_TAIL = 20  # a power-law fit on fewer tail eigenvalues than this is marked as rough
SELECTED_RED, UNSELECTED_GREY = "#d62728", "#d9d9d9"


def entry_title(e: Entry) -> str:
    """The hover text of one module: raw key, SNR, rank within its type, selected or not."""
    state = "selected" if e.selected else "not selected"
    return (
        f"{e.key}\nSNR {snr_text(e.snr)}, rank {e.rank} of {e.size} in {e.group}\n{state}"
        if math.isfinite(e.snr)
        else f"{e.key}\nno SNR"
    )


DOT_SWATCH = '<circle cx="6" cy="6" r="4.5" fill="white" stroke="black" stroke-width="1"/>'
MISSING_SWATCH = '<rect width="12" height="12" fill="url(#missing)" stroke="#999"/>'
CROSS_SWATCH = '<path d="M2 2L10 10M10 2L2 10" stroke="black" stroke-width="1.5"/>'
RED_SWATCH = f'<rect width="12" height="12" fill="{SELECTED_RED}"/>'
GREY_SWATCH = f'<rect width="12" height="12" fill="{UNSELECTED_GREY}"/>'


def _rank_ticks(top_percent: float) -> list[tuple[float, str]]:
    ticks = [(0.0, "lowest"), (0.5, "median"), (1.0, "highest")]
    if 0 < top_percent < 100:
        ticks.append((1 - top_percent / 100, f"top {top_percent:g}%"))
    return ticks


def _alpha_position(alpha: np.ndarray) -> np.ndarray:
    return (np.asarray(alpha, dtype=float) - ALPHA_LO) / (ALPHA_HI - ALPHA_LO)


def layer_heatmap(
    grid: LayerGrid,
    *,
    top_percent: float,
    alpha: dict[str, float] | None = None,
    tails: dict[str, float] | None = None,
    label: str = "",
) -> str:
    """Layers x projections. Colour: the module's rank within its type (selection is made within
    each type), or alpha on a fixed 1-8 scale with the 2-6 band marked. Dots: selected (area =
    share of the cell's experts); hatched: no such module; x: alpha fitted on few tail values."""
    rows, cols = grid.values.shape
    is_alpha = alpha is not None
    heads = [human_label(c) for c in grid.columns]
    longest = max((len(h) for h in heads), default=4)
    cw = min(64.0, max(22.0, 760.0 / max(cols, 1)))
    rh = min(24.0, max(5.0, 560.0 / max(rows, 1)))
    left, top = 62.0, 34.0 + min(longest, 48) * 6.0 * 0.5 + 10
    gw, gh = cw * cols, rh * rows
    width = left + gw + max(210.0, min(longest, 48) * 6.0 * 0.87 - gw + 40)
    bar_h = max(170.0, min(gh, 260.0))
    height = top + max(gh, bar_h) + 30
    fills = colours(
        _alpha_position(grid.values) if is_alpha else grid.values, PLASMA if is_alpha else VIRIDIS
    )
    parts = []
    if is_alpha:
        legend = [
            (MISSING_SWATCH, "no alpha for that module"),
            (CROSS_SWATCH, f"fit on < {FEW_TAIL} tail values"),
        ]
    else:
        legend = [
            (DOT_SWATCH, "selected" + (" (area: share of experts)" if any(grid.pooled) else "")),
            (MISSING_SWATCH, "no such module"),
        ]
    parts.append(legend_row(left, 14, legend))
    for j, head in enumerate(heads):
        x = left + (j + 0.5) * cw
        short = head if len(head) <= 48 else "..." + head[-45:]
        parts.append(
            f'<text x="{x:.1f}" y="{top - 6:.1f}" font-size="11" transform="rotate(-30 {x:.1f} '
            f'{top - 6:.1f})"><title>{escape(grid.columns[j])}</title>{escape(short)}</text>'
        )
    every = thin(rows, rh, 13)
    for i, layer in enumerate(grid.layers):
        if i % every == 0 or i == rows - 1 and rows <= 40:
            parts.append(
                text(left - 6, top + (i + 0.5) * rh + 4, str(layer), size=10, anchor="end")
            )
    parts.append(
        text(
            14,
            top + gh / 2,
            "layer",
            size=11,
            anchor="middle",
            extra=f'transform="rotate(-90 14 {top + gh / 2:.1f})"',
        )
    )
    dots = []
    for i in range(rows):
        for j in range(cols):
            members = grid.members.get((i, j), [])
            x, y = left + j * cw, top + i * rh
            fill = fills[i * cols + j]
            parts.append(
                cell(
                    x, y, cw, rh, fill, _cell_title(grid.layers[i], grid.columns[j], members, alpha)
                )
            )
            share = grid.marks[i, j]
            if not is_alpha and share > 0:
                r = max(1.6, min(cw, rh) * 0.34 * math.sqrt(share))
                dots.append(f'<circle cx="{x + cw / 2:.2f}" cy="{y + rh / 2:.2f}" r="{r:.2f}"/>')
            if is_alpha and tails is not None and members:
                few = [tails.get(e.key, math.inf) < FEW_TAIL for e in members if e.key in tails]
                if few and sum(few) * 2 > len(few):
                    s = min(cw, rh) * 0.3
                    cx, cy = x + cw / 2, y + rh / 2
                    dots.append(
                        f'<path d="M{cx - s:.1f} {cy - s:.1f}L{cx + s:.1f} {cy + s:.1f}M{cx + s:.1f} {cy - s:.1f}L{cx - s:.1f} {cy + s:.1f}" stroke="black" stroke-width="1.3"/>'
                    )
    if dots:
        parts.append(
            f'<g fill="white" stroke="black" stroke-width="0.8" pointer-events="none">{"".join(dots)}</g>'
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{gw:.1f}" height="{gh:.1f}" fill="none" stroke="#888" stroke-width="0.6"/>'
    )
    bx = left + gw + 40
    if is_alpha:
        ticks = [(float(_alpha_position(np.array([a]))[0]), f"{a:g}") for a in (1, 2, 4, 6, 8)]
        ticks[-1] = (1.0, ">= 8")
        parts.append(
            colourbar(bx, top, bar_h, "alpha-bar", PLASMA, "alpha (power-law exponent)", ticks)
        )
        lo, hi = (float(_alpha_position(np.array([v]))[0]) for v in (2.0, 6.0))
        y_hi, y_lo = top + bar_h * (1 - hi), top + bar_h * (1 - lo)
        parts.append(
            f'<path d="M{bx + 50} {y_hi:.1f}h4v{y_lo - y_hi:.1f}h-4" fill="none" stroke="black" stroke-width="1.2"/>'
        )
        parts.append(text(bx + 58, (y_hi + y_lo) / 2 + 4, "2-6: typical", size=10))
    else:
        parts.append(
            colourbar(
                bx,
                top,
                bar_h,
                "rank-bar",
                VIRIDIS,
                "SNR rank within its type",
                _rank_ticks(top_percent),
            )
        )
    return svg(width, height, "".join(parts), label or "heatmap")


def _cell_title(
    layer: int, column: str, members: list[Entry], alpha: dict[str, float] | None
) -> str:
    if not members:
        return f"layer {layer}, {column}: no such module"
    if len(members) == 1:
        e = members[0]
        extra = f"\nalpha {snr_text(alpha.get(e.key, math.nan))}" if alpha is not None else ""
        return entry_title(e) + extra
    chosen = sum(e.selected for e in members)
    return (
        f"layer {layer}, {column}: {len(members)} experts, {chosen} selected\n"
        "colour: the median over its experts"
    )


def outside_strip(entries: list[Entry]) -> str:
    """The modules outside the layers (embeddings, head), which `select` always trains: their SNR
    written out, on their own log colour scale (they are not ranked against anything)."""
    shown = entries[:MAX_OUTSIDE]
    vals = np.array([e.snr for e in shown], dtype=float)
    pos = vals[np.isfinite(vals) & (vals > 0)]
    if pos.size and pos.max() > pos.min():
        scaled = (np.log(np.where(vals > 0, vals, pos.min())) - math.log(pos.min())) / math.log(
            pos.max() / pos.min()
        )
    else:
        scaled = np.where(np.isfinite(vals), 0.5, np.nan)
    fills = colours(scaled, PLASMA)
    cw, per_row = 150.0, 7
    rows = math.ceil(len(shown) / per_row) if shown else 1
    parts = [
        text(10, 14, "colour: SNR on a log scale over these modules only (not ranked)", size=11)
    ]
    for i, (e, fill) in enumerate(zip(shown, fills)):
        x, y = 10 + (i % per_row) * (cw + 6), 24 + (i // per_row) * 52
        parts.append(cell(x, y, cw, 24, fill, entry_title(e)))
        dark = fill == "url(#missing)" or scaled[i] > 0.55
        parts.append(
            text(
                x + cw / 2,
                y + 16,
                f"SNR {snr_text(e.snr)}",
                size=11,
                anchor="middle",
                extra=f'fill="{"black" if dark else "white"}" pointer-events="none"',
            )
        )
        name = human_label(e.key)
        parts.append(
            text(
                x + cw / 2,
                y + 38,
                name if len(name) <= 24 else "..." + name[-21:],
                size=10,
                anchor="middle",
            )
        )
    width = 20 + min(len(shown), per_row) * (cw + 6)
    return svg(max(width, 420), 24 + rows * 52, "".join(parts), "outside the layers")


def expert_heatmap(grid: ExpertGrid, *, top_percent: float, label: str = "") -> str:
    """Layers x experts for one projection, colour = rank within its type. Big cells carry a dot
    when selected; small ones get a second panel, selected red on grey, cell for cell; missing
    modules are hatched in both, as the legend says."""
    rows, cols = grid.values.shape
    cw = min(40.0, max(3.0, 1000.0 / max(cols, 1)))
    rh = min(18.0, max(3.0, 600.0 / max(rows, 1)))
    dots = cw >= 9 and rh >= 9
    left, top = 54.0, 30.0
    gw, gh = cw * cols, rh * rows
    fills = colours(grid.values)
    legend = (
        [(DOT_SWATCH, "selected")]
        if dots
        else [(RED_SWATCH, "selected"), (GREY_SWATCH, "not selected")]
    )
    legend.append((MISSING_SWATCH, "no such module"))
    parts = [legend_row(left, 14, legend)]
    panels = [top] if dots else [top, top + gh + 44]
    missing = ~np.isfinite(grid.values)
    for p, y0 in enumerate(panels):
        cells = []
        for i in range(rows):
            for j in range(cols):
                x, y = left + j * cw, y0 + i * rh
                e = grid.members.get((i, j))
                if p == 0:
                    title = (
                        entry_title(e)
                        if e
                        else f"layer {grid.layers[i]}, expert {grid.experts[j]}: no such module"
                    )
                    cells.append(cell(x, y, cw, rh, fills[i * cols + j], title))
                elif missing[i, j]:
                    cells.append(cell(x, y, cw, rh, "url(#missing)"))
                elif grid.selected[i, j]:
                    cells.append(cell(x, y, cw, rh, SELECTED_RED))
        if p == 1:
            parts.append(
                f'<rect x="{left}" y="{y0}" width="{gw:.1f}" height="{gh:.1f}" fill="{UNSELECTED_GREY}"/>'
            )
        parts.append("".join(cells))
        if dots and p == 0:
            yy, xx = np.nonzero(grid.selected)
            r = min(cw, rh) * 0.3
            parts.append(
                '<g fill="white" stroke="black" stroke-width="0.8" pointer-events="none">'
                + "".join(
                    f'<circle cx="{left + (j + 0.5) * cw:.1f}" cy="{y0 + (i + 0.5) * rh:.1f}" r="{r:.1f}"/>'
                    for i, j in zip(yy, xx)
                )
                + "</g>"
            )
        parts.append(
            f'<rect x="{left}" y="{y0}" width="{gw:.1f}" height="{gh:.1f}" fill="none" stroke="#888" stroke-width="0.6"/>'
        )
        every_row = thin(rows, rh, 13)
        for i, layer in enumerate(grid.layers):
            if i % every_row == 0:
                parts.append(
                    text(left - 5, y0 + (i + 0.5) * rh + 4, str(layer), size=10, anchor="end")
                )
        every_col = thin(cols, cw, 26)
        for j, expert in enumerate(grid.experts):
            if j % every_col == 0:
                parts.append(
                    text(left + (j + 0.5) * cw, y0 + gh + 13, str(expert), size=10, anchor="middle")
                )
        parts.append(
            text(
                14,
                y0 + gh / 2,
                "layer",
                size=11,
                anchor="middle",
                extra=f'transform="rotate(-90 14 {y0 + gh / 2:.1f})"',
            )
        )
        parts.append(text(left + gw / 2, y0 + gh + 27, "expert", size=11, anchor="middle"))
    bar_h = max(150.0, min(gh, 220.0))
    parts.append(
        colourbar(
            left + gw + 34,
            top,
            bar_h,
            f"xbar{zlib.crc32(grid.projection.encode()):08x}",
            VIRIDIS,
            "SNR rank within its type",
            _rank_ticks(top_percent),
        )
    )
    width = left + gw + 140
    height = max(panels[-1] + gh + 36, top + bar_h + 20)
    return svg(width, height, "".join(parts), label or grid.projection)
