"""The report's pictures, one PNG per function, drawn headless with matplotlib's Agg canvas.

Every grid is one image artist (imshow on a numpy array) and every selection overlay one scatter,
so a 20,000-module MoE draws in about the time of a small dense model. Pyplot is never imported:
figures are built with the object API, which keeps them out of any global state and GUI backend.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .grid import ExpertGrid, LayerGrid

DPI = 100
_LOG_SPAN = 30.0  # log colour once the finite values span more than this ratio


def _save(fig: Figure, path: Path) -> Path:
    """Render and move into place, so a reader never sees half a PNG."""
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def _norm(*arrays: np.ndarray) -> tuple[Normalize, bool]:
    """Log colour where the positive values span decades (zeros clip to the bottom), else linear."""
    vals = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.array([])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return Normalize(0.0, 1.0), False
    pos = vals[vals > 0]
    if pos.size and vals.min() >= 0 and pos.max() / pos.min() > _LOG_SPAN:
        return LogNorm(pos.min(), pos.max(), clip=True), True
    lo, hi = float(vals.min()), float(vals.max())
    return Normalize(lo, hi if hi > lo else lo + 1.0), False


def _cmap(name: str = "viridis"):
    # missing values: transparent, over the light grey axes background
    return colormaps[name].with_extremes(bad="#ffffff00")


def _thin_ticks(axis, labels: list, most: int) -> None:
    """At most `most` integer ticks on an index axis, labelled with the real layer/expert number."""
    axis.set_major_locator(MaxNLocator(nbins=max(1, most), integer=True, min_n_ticks=1))
    axis.set_major_formatter(
        FuncFormatter(
            lambda x, _pos: str(labels[int(x)]) if 0 <= int(x) < len(labels) and x == int(x) else ""
        )
    )


def _fix_neg_for_log(values: np.ndarray, logged: bool, norm: Normalize) -> np.ndarray:
    """LogNorm masks zeros and negatives; show them at the bottom of the scale instead."""
    if not logged:
        return values
    out = values.copy()
    finite = np.isfinite(out)
    out[finite] = np.maximum(out[finite], norm.vmin)
    return out


def _outside_strip(ax, grid: LayerGrid, norm: Normalize, logged: bool, cmap) -> None:
    """The modules outside the layers (embeddings, head) as one row of cells above the grid."""
    strip = np.array([[v for _, v, _ in grid.outside]], dtype=float)
    ax.imshow(
        _fix_neg_for_log(strip, logged, norm),
        cmap=cmap,
        norm=norm,
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_xticks(range(len(grid.outside)), [n for n, _, _ in grid.outside], fontsize=8)
    ax.set_yticks([])
    ax.set_facecolor("#eeeeee")
    ax.set_title("outside the layers", fontsize=8, loc="left")
    picked = [i for i, (_, _, m) in enumerate(grid.outside) if m > 0]
    ax.scatter(picked, [0] * len(picked), s=36, c="white", edgecolors="black", linewidths=0.8)


def layer_heatmap(
    grid: LayerGrid, path: Path, *, label: str, title: str = "", cmap: str = "viridis"
) -> Path:
    """Layers x projections, selected cells marked by a dot (sized by the selected share of experts
    where a cell pools experts); modules outside the layers get their own strip on top."""
    rows, cols = grid.values.shape
    colours = _cmap(cmap)
    norm, logged = _norm(grid.values, np.array([v for _, v, _ in grid.outside]))
    width = max(6.5, 2.8 + 0.42 * max(cols, len(grid.outside)))
    body = min(14.0, max(3.0, 1.6 + 0.13 * rows))
    strip = 0.45 if grid.outside else 0.0
    fig = Figure(figsize=(width, body + strip + 1.9), layout="constrained")
    if rows == 0 or cols == 0:  # nothing inside layers: the strip alone, or a note
        fig.set_size_inches(width, 2.8)
        ax = fig.subplots()
        if grid.outside:
            _outside_strip(ax, grid, norm, logged, colours)
            fig.colorbar(ax.images[0], ax=ax, label=label, orientation="horizontal")
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"no {label} values to show", ha="center", va="center")
        fig.suptitle(f"{title}: {label}" if title else label, fontsize=10)
        return _save(fig, path)
    if grid.outside:
        top, ax = fig.subplots(2, 1, height_ratios=[strip, body])
        _outside_strip(top, grid, norm, logged, colours)
    else:
        ax = fig.subplots()
    image = ax.imshow(
        _fix_neg_for_log(grid.values, logged, norm),
        cmap=colours,
        norm=norm,
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_facecolor("#eeeeee")
    ax.set_xticks(
        range(cols), grid.columns, rotation=35, ha="right", rotation_mode="anchor", fontsize=8
    )
    _thin_ticks(ax.yaxis, grid.layers, most=min(rows, 24))
    ax.set_ylabel("layer")
    marks = np.nan_to_num(grid.marks, nan=0.0)
    yy, xx = np.nonzero(marks > 0)
    cell = min(1.0, 16.0 / max(rows, 1)) * 40
    ax.scatter(
        xx, yy, s=cell * np.sqrt(marks[yy, xx]), c="white", edgecolors="black", linewidths=0.6
    )
    fig.colorbar(
        image, ax=ax, label=label + (" (log scale)" if logged else ""), shrink=0.9, aspect=30
    )
    pooled = any(grid.pooled)
    ax.set_title(
        "dot: selected"
        + (
            "; expert columns: median over experts, dot area = share of experts selected"
            if pooled
            else ""
        ),
        fontsize=8,
        loc="left",
    )
    fig.suptitle(f"{title}: {label}" if title else f"{label} by layer and module", fontsize=10)
    return _save(fig, path)


_SELECTION = ListedColormap(["#e6e6e6", "#d62728"]).with_extremes(bad="#ffffff00")
DOTS_UP_TO = 64  # experts per row (and layers) up to which selected cells get dots, not a panel


def expert_heatmap(grid: ExpertGrid, path: Path, *, label: str = "SNR") -> Path:
    """Layers x experts for one projection. Selected experts are dots while cells are big enough to
    hold one; past that, a second panel below shows the selection, red on grey, cell for cell."""
    rows, cols = grid.values.shape
    norm, logged = _norm(grid.values)
    dots = cols <= DOTS_UP_TO and rows <= DOTS_UP_TO
    width = min(14.0, max(6.5, 3.0 + 0.045 * cols))
    panel = min(5.0, max(2.0, 0.6 + 0.06 * rows))
    fig = Figure(figsize=(width, (panel if dots else 2 * panel) + 1.2), layout="constrained")
    axes = [fig.subplots()] if dots else list(fig.subplots(2, 1, sharex=True))
    n_sel = int(grid.selected.sum())
    image = axes[0].imshow(
        _fix_neg_for_log(grid.values, logged, norm),
        cmap=_cmap(),
        norm=norm,
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(
        image, ax=axes[0], label=label + (" (log scale)" if logged else ""), shrink=0.9, aspect=30
    )
    if dots:
        yy, xx = np.nonzero(grid.selected)
        axes[0].scatter(
            xx,
            yy,
            s=min(30.0, 900.0 / max(rows, cols)),
            c="white",
            edgecolors="black",
            linewidths=0.5,
        )
        axes[0].set_title(
            f"{rows} layers x {cols} experts; dot: selected ({n_sel})", fontsize=8, loc="left"
        )
    else:
        mask = np.where(np.isfinite(grid.values), grid.selected.astype(float), np.nan)
        sel = axes[1].imshow(
            mask, cmap=_SELECTION, vmin=0, vmax=1, aspect="auto", interpolation="nearest"
        )
        bar = fig.colorbar(sel, ax=axes[1], ticks=[0.25, 0.75], shrink=0.9)
        bar.ax.set_yticklabels(["not\nselected", "selected"], fontsize=8)
        axes[0].set_title(f"{rows} layers x {cols} experts", fontsize=8, loc="left")
        axes[1].set_title(
            f"selected: {n_sel} of {int(np.isfinite(grid.values).sum())}", fontsize=8, loc="left"
        )
    for ax in axes:
        ax.set_facecolor("#eeeeee")
        _thin_ticks(ax.xaxis, grid.experts, most=min(cols, 32))
        _thin_ticks(ax.yaxis, grid.layers, most=min(rows, 12 if not dots else 20))
        ax.set_ylabel("layer")
    axes[-1].set_xlabel("expert")
    fig.suptitle(f"{grid.projection}: {label} per expert", fontsize=10)
    return _save(fig, path)


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 x 10^k written as plain numbers: matplotlib's default labels
    one power of ten per decade, or, under two decades, minor labels that overlap."""
    lo, hi = sorted(v for v in axis.get_view_interval() if v > 0) or (1.0, 1.0)
    few_decades = hi / lo < 1e3  # wider: one tick per decade, as 1, 2, 5 would crowd
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if few_decades else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def mp_threshold(s: np.ndarray, shape: tuple[int, int]) -> float:
    """Marchenko-Pastur cut: sigma * (1 + sqrt(k / max(m, n))), sigma from the interquartile range
    of the singular values (linear-interpolation quantiles), k = min(m, n)."""
    q1, q3 = np.quantile(np.asarray(s, dtype=np.float64), [0.25, 0.75])
    m, n = shape
    return float((q3 - q1) / 1.349 * (1.0 + math.sqrt(min(m, n) / max(m, n))))


def spectra_figure(
    projection: str,
    panels: list[tuple[str, str, float, np.ndarray, tuple[int, int] | None]],
    path: Path,
) -> Path:
    """Histograms of singular values, one panel per (tag, key, snr, values, shape), with the
    Marchenko-Pastur threshold where the shape is known: values right of it count as signal."""
    width, height = 5.2 * len(panels), 3.4
    fig = Figure(figsize=(width, height))  # fixed margins: constrained layout doubled the time
    fig.subplots_adjust(
        left=0.65 / width,
        right=1 - 0.2 / width,
        bottom=0.5 / height,
        top=1 - 0.75 / height,
        wspace=0.7 / (width / len(panels) - 0.85),
    )
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (tag, key, snr, s, shape) in zip(axes, panels):
        s = np.asarray(s, dtype=np.float64)
        s = s[np.isfinite(s)]
        nbins = int(min(80, max(10, s.size // 6)))
        pos = s[s > 0]
        if pos.size == s.size and s.size and pos.max() / pos.min() > _LOG_SPAN:
            ax.set_xscale("log")  # a bulk near zero and a few large values: both stay visible
            nbins = np.geomspace(pos.min(), pos.max(), nbins + 1)
        ax.hist(s, bins=nbins, color="#4c72b0")
        if ax.get_xscale() == "log":
            _plain_log_ticks(ax.xaxis)
        ax.set_yscale("log")  # the few values past the bulk stay visible
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel("singular value")
        ax.set_ylabel("count")
        name = key if len(key) <= 60 else "..." + key[-57:]
        text = f"{tag}: {name}\nSNR {snr:.4g}, k = {s.size}"
        if shape is not None and s.size:
            cut = mp_threshold(s, shape)
            ax.axvline(cut, color="#c44e52", linestyle="--", label=f"MP threshold {cut:.3g}")
            ax.legend(fontsize=8, loc="upper right")
            text += f", {int((s > cut).sum())} above threshold"
        else:
            text += " (shape unknown: no threshold)"
        ax.set_title(text, fontsize=8, loc="left")
    fig.suptitle(f"{projection}: singular values, best and worst module by SNR", fontsize=10)
    return _save(fig, path)
