"""The report's spectrum histograms as inline SVG: a module's singular values on one x range with
its best or worst sibling, the Marchenko-Pastur threshold and the fitted power law (figures.py
draws the grids)."""

from __future__ import annotations

import math
import zlib
from html import escape

import numpy as np

from .grid import Entry
from .keys import human_label
from .svg import fmt, legend_row, log_ticks, nice_ticks, snr_text, svg, text

_LOG_SPAN = 30.0  # log x once a spectrum's positive values span more than this ratio


def mp_threshold(s: np.ndarray, shape: tuple[int, int]) -> float:
    """Marchenko-Pastur cut: sigma * (1 + sqrt(k / max(m, n))), sigma from the interquartile range
    of the singular values (linear-interpolation quantiles), k = min(m, n)."""
    q1, q3 = np.quantile(np.asarray(s, dtype=np.float64), [0.25, 0.75])
    m, n = shape
    return float((q3 - q1) / 1.349 * (1.0 + math.sqrt(min(m, n) / max(m, n))))


def power_law_counts(s: np.ndarray, edges: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    """Expected counts per singular-value bin under the fitted power law of the eigenvalues
    lam = s^2: p(lam) ~ lam^-alpha for lam >= xmin, scaled to the tail's size; NaN for a bin that
    starts below xmin (a partial bin would draw a dip that is not in the fit)."""
    n_tail = int(np.sum(np.asarray(s, dtype=np.float64) ** 2 >= xmin))
    lo = np.maximum(edges[:-1] ** 2, xmin)
    hi = edges[1:] ** 2

    def survival(lam: np.ndarray) -> np.ndarray:
        return (lam / xmin) ** (1.0 - alpha)

    counts = n_tail * (survival(lo) - survival(hi))
    return np.where(edges[:-1] ** 2 >= xmin, counts, np.nan)


class Panel:
    """One histogram: tag (best, worst, only), the module, its values and what to draw on them."""

    def __init__(self, tag: str, entry: Entry, s: np.ndarray, shape, fit) -> None:
        self.tag, self.entry, self.shape, self.fit = tag, entry, shape, fit
        s = np.asarray(s, dtype=np.float64)
        self.s = s[np.isfinite(s)]


def spectra_figure(projection: str, panels: list[Panel]) -> str:
    """Histograms of singular values, side by side on one x range: linear counts with headroom,
    log x where the values span decades, the Marchenko-Pastur threshold (values right of it are
    signal) and, where the metrics give one, the fitted power law with its xmin."""
    allv = np.concatenate([p.s for p in panels]) if panels else np.array([1.0])
    pos = allv[allv > 0]
    logx = pos.size == allv.size and pos.size > 0 and pos.max() / pos.min() > _LOG_SPAN
    lo, hi = (
        (float(pos.min()), float(pos.max())) if logx else (float(allv.min()), float(allv.max()))
    )
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    nbins = 48
    edges = np.geomspace(lo, hi, nbins + 1) if logx else np.linspace(lo, hi, nbins + 1)
    pw, ph, gap = 440.0, 200.0, 60.0
    left, top = 58.0, 74.0
    width = left + len(panels) * (pw + gap)
    height = top + ph + 46
    parts = []

    def xpos(v: float) -> float:
        if logx:
            return pw * (math.log(max(v, lo)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return pw * (v - lo) / (hi - lo)

    for n, panel in enumerate(panels):
        ox = left + n * (pw + gap)
        counts, _ = np.histogram(panel.s, bins=edges)
        ymax_data = max(1, int(counts.max()) if counts.size else 1)
        ticks = [t for t in nice_ticks(0, ymax_data * 1.15, 5) if float(t).is_integer()]
        ymax = max(ymax_data * 1.15, ticks[-1] if ticks else 1)

        def ypos(c: float, ymax: float = ymax) -> float:
            return top + ph * (1 - c / ymax)

        bars = "".join(
            f"M{ox + xpos(edges[b]):.1f} {top + ph:.1f}V{ypos(c):.1f}H{ox + xpos(edges[b + 1]):.1f}V{top + ph:.1f}Z"
            for b, c in enumerate(counts)
            if c > 0
        )
        parts.append(f'<path d="{bars}" fill="#4c72b0"/>')
        parts.append(
            f'<rect x="{ox}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
        )
        for t in ticks:
            y = ypos(t)
            parts.append(f'<line x1="{ox - 4}" y1="{y:.1f}" x2="{ox}" y2="{y:.1f}" stroke="#444"/>')
            parts.append(text(ox - 6, y + 4, f"{int(t)}", size=10, anchor="end"))
        xt = log_ticks(lo, hi) if logx else nice_ticks(lo, hi, 6)
        for t in xt:
            x = ox + xpos(t)
            parts.append(
                f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#444"/>'
            )
            parts.append(text(x, top + ph + 16, fmt(t), size=10, anchor="middle"))
        parts.append(
            text(
                ox + pw / 2,
                top + ph + 34,
                "singular value" + (" (log scale)" if logx else ""),
                size=11,
                anchor="middle",
            )
        )
        parts.append(
            text(
                ox - 40,
                top + ph / 2,
                "count",
                size=11,
                anchor="middle",
                extra=f'transform="rotate(-90 {ox - 40:.1f} {top + ph / 2:.1f})"',
            )
        )
        e = panel.entry
        name = human_label(e.key)
        name = name if len(name) <= 64 else "..." + name[-61:]
        parts.append(
            f'<text x="{ox}" y="16" font-size="11" font-weight="600"><title>{escape(e.key)}</title>{escape(f"{panel.tag}: {name}")}</text>'
        )
        line2 = f"SNR {snr_text(e.snr)}, rank {e.rank} of {e.size}, k = {panel.s.size}"
        legend = []
        if panel.shape is not None and panel.s.size:
            cut = mp_threshold(panel.s, panel.shape)
            above = int((panel.s > cut).sum())
            line2 += f", {above} above the threshold"
            x = ox + xpos(cut)
            if lo <= cut <= hi:
                parts.append(
                    f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#c44e52" stroke-width="1.5" stroke-dasharray="5 3"/>'
                )
            legend.append(
                (
                    '<path d="M0 6H12" stroke="#c44e52" stroke-width="1.5" stroke-dasharray="4 2"/>',
                    f"MP threshold {fmt(cut)}",
                )
            )
        else:
            line2 += " (shape unknown: no threshold)"
        parts.append(text(ox, 32, line2, size=11))
        alpha, xmin = panel.fit if panel.fit else (math.nan, math.nan)
        if math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0:
            expected = power_law_counts(panel.s, edges, alpha, xmin)
            pts = [
                f"{ox + xpos(math.sqrt(edges[b] * edges[b + 1]) if logx else (edges[b] + edges[b + 1]) / 2):.1f},{ypos(min(c, ymax)):.1f}"
                for b, c in enumerate(expected)
                if np.isfinite(c) and c > 0
            ]
            if pts:
                clip = f"clip{zlib.crc32(panel.entry.key.encode()):08x}-{n}"
                parts.append(
                    f'<clipPath id="{clip}"><rect x="{ox}" y="{top}" width="{pw}" '
                    f'height="{ph}"/></clipPath>'
                )
                parts.append(
                    f'<polyline clip-path="url(#{clip})" points="{" ".join(pts)}" fill="none" stroke="#dd8452" stroke-width="2"/>'
                )
            xs = math.sqrt(xmin)
            if lo <= xs <= hi:
                x = ox + xpos(xs)
                parts.append(
                    f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#dd8452" stroke-width="1.2" stroke-dasharray="1 3"/>'
                )
            legend.append(
                (
                    '<path d="M0 6H12" stroke="#dd8452" stroke-width="2"/>',
                    f"power law, alpha {alpha:.2f}",
                )
            )
            legend.append(
                (
                    '<path d="M0 6H12" stroke="#dd8452" stroke-dasharray="1 3"/>',
                    f"its xmin {fmt(xs)}",
                )
            )
        else:
            legend.append(("", "no power-law fit"))
        parts.append(legend_row(ox, 54, legend))
    return svg(width, height, "".join(parts), f"{projection}: singular values")
