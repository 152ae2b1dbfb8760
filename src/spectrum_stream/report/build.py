"""build_report: a results set (and optionally spectra and metrics) to an offline HTML page.

Glue only: rank and select exactly as `select` does (results/select.py, so the page can never
show another selection), parse keys once, shape the grids, draw each figure, write the page and
the selection's YAML beside it.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..results.select import group, select, to_yaml, unfrozen_parameters
from .figures import (
    MAX_COLUMNS,
    MAX_EXPERT_COLUMNS,
    MAX_OUTSIDE,
    expert_heatmap,
    layer_heatmap,
    outside_strip,
)
from .grid import (
    Entry,
    expert_grids,
    finite,
    layer_grid,
    split_columns,
    split_experts,
)
from .histograms import Panel, spectra_figure
from .keys import human_label, parse_key
from .page import Figure, PageData, TypeSummary, render

SELECTION_FILE = "selection.yaml"
MAX_SPECTRA_FIGURES = 40  # projections with a histogram figure; the busiest ones first


def _entries(results: dict[str, dict], top_percent: float, grouping: str | None) -> list[Entry]:
    """Every module with its ranking group, rank and whether `select` trains it (its top P% of
    the group, or outside the layers: embeddings and head are always trained)."""
    chosen = {k for keys in select(results, top_percent, grouping).values() for k in keys}
    place: dict[str, tuple[str, int, int]] = {}
    for t, items in group(results, grouping).items():
        for rank, (key, _) in enumerate(items, 1):
            place[key] = (t, rank, len(items))
    out = []
    for key, info in results.items():
        t = str(info["type"])
        g, rank, size = place[key]
        out.append(
            Entry(
                key,
                t,
                parse_key(key, t),
                finite(info["snr"]),
                key in chosen or t == key,
                g,
                rank,
                size,
            )
        )
    return out


def _type_summaries(entries: list[Entry], patterns: set[str]) -> list[TypeSummary]:
    """Per ranking group, sorted by name: counts, SNR range and the selected modules by rank."""
    by_group: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_group[e.group].append(e)
    out = []
    for g in sorted(by_group):
        items = by_group[g]
        snrs = np.array([e.snr for e in items])
        chosen = sorted((e for e in items if e.selected), key=lambda e: e.rank)
        out.append(
            TypeSummary(
                g,
                items[0].where.projection,
                len(items),
                float(snrs.min()),
                float(np.median(snrs)),
                float(snrs.max()),
                [
                    (e.key if e.key in patterns else f"^{e.key}.weight$", e.key, e.snr, e.rank)
                    for e in chosen
                ],
                always=items[0].type == items[0].key,
            )
        )
    return out


def _spectra_panels(
    entries: list[Entry],
    spectra: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, int]],
    fits: dict[str, tuple[float, float]],
) -> list[tuple[str, list[Panel]]]:
    """Per projection (most modules first, at most MAX_SPECTRA_FIGURES): the best and worst module
    by SNR among those with spectra, or the only one."""
    by_proj: dict[str, list[Entry]] = {}
    for e in entries:
        if e.key in spectra and np.size(spectra[e.key]) and math.isfinite(e.snr):
            by_proj.setdefault(e.where.projection, []).append(e)
    busiest = sorted(by_proj, key=lambda p: -len(by_proj[p]))[:MAX_SPECTRA_FIGURES]
    out = []
    for proj in [p for p in by_proj if p in set(busiest)]:
        items = by_proj[proj]
        best = max(items, key=lambda e: e.snr)
        worst = min(items, key=lambda e: e.snr)
        chosen = (
            [("best", best), ("worst", worst)] if worst is not best else [("the only one", best)]
        )
        out.append(
            (
                proj,
                [
                    Panel(tag, e, spectra[e.key], shapes.get(e.key), fits.get(e.key))
                    for tag, e in chosen
                ],
            )
        )
    return out


def _params(keys: list[str], shapes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(parameters of the keys whose shape is known, how many keys have no known shape)."""
    known = [shapes[k] for k in keys if k in shapes]
    return sum(int(m) * int(n) for m, n in known), len(keys) - len(known)


def _deficient_words(entries: list[Entry], deficient: dict[str, tuple[int, int]]) -> str:
    """The summary row for numerically rank-deficient modules ("" when there are none)."""
    hits = [e for e in entries if e.key in deficient]
    if not hits:
        return ""
    chosen = [e for e in hits if e.selected]
    shown = ", ".join(
        f"{e.key} (rank {deficient[e.key][0]} of {deficient[e.key][1]}"
        + (", selected)" if e.selected else ")")
        for e in (chosen + [e for e in hits if not e.selected])[:8]
    )
    more = f" and {len(hits) - 8} more" if len(hits) > 8 else ""
    return (
        f"{len(hits)} module(s), {len(chosen)} of them selected: singular values at or below the "
        "float32 floor, so part of the noise their SNR divides by is rounding error (docs/spec.md, "
        f"'The numerical floor'; select --drop-rank-deficient leaves them out): {shown}{more}"
    )


def build_report(
    results: dict[str, dict],
    out_dir: str | Path,
    *,
    top_percent: float,
    grouping: str | None = None,
    spectra: dict[str, np.ndarray] | None = None,
    shapes: dict[str, tuple[int, int]] | None = None,
    metrics: dict[str, dict] | None = None,
    title: str = "",
    notes: list[str] | None = None,
    scanned: list[tuple[str, str]] | None = None,
    skipped: list[str] | None = None,
    results_arg: str = "RESULTS.json",
    deficient: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Write out_dir/index.html and out_dir/selection.yaml; return the page's path.

    results: {key: {"snr", "type"}} as in the results file (entries whose SNR is not a finite
    number are skipped, as every command skips them); the selection is `select`'s for
    `top_percent` and `grouping`. spectra: {key: singular values} for the histograms; shapes:
    {key: (rows, cols)} for the Marchenko-Pastur threshold and the parameter count; metrics:
    {key: {"alpha", "xmin", "num_pl_spikes"}} for the alpha grid and the fitted power laws;
    scanned: (label, value) lines saying what was scanned; results_arg: the results path as the
    user typed it, for the commands the page suggests; deficient: {key: (numerical rank,
    min(m, n))} of the modules whose SNR is partly rounding error (results/rank_floor.py).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped = list(skipped or [])
    notes = list(notes or [])
    clean = {}
    for key, info in results.items():
        if math.isfinite(finite(info.get("snr"))) and isinstance(info.get("type"), str):
            clean[key] = info
        else:
            skipped.append(key)
    shapes = dict(shapes or {})
    spectra = spectra or {}
    entries = _entries(clean, top_percent, grouping)
    patterns = unfrozen_parameters(clean, top_percent, grouping)
    pattern_set = set(patterns)
    yaml_text = to_yaml(clean, top_percent, grouping, skipped=skipped)
    dense = not any(e.where.expert is not None for e in entries)
    figures: list[Figure] = []

    grid = layer_grid(entries)
    for n, part in enumerate(split_columns(grid, MAX_COLUMNS)):
        if part.values.size == 0:
            break
        suffix = f" ({n + 1})" if len(grid.columns) > MAX_COLUMNS else ""
        figures.append(
            Figure(
                f"SNR rank by layer and module{suffix}",
                "Each cell is a module coloured by where its SNR ranks within its type, the group "
                "select chooses the top "
                f"{top_percent:g}% from: bright = highest. Dots mark what select trains."
                + (
                    ""
                    if dense
                    else " A column of experts shows the median rank over its experts; the dot's "
                    "area is the share of them selected."
                ),
                layer_heatmap(part, top_percent=top_percent, label="SNR rank by layer"),
                "rank",
            )
        )
    if grid.outside:
        more = len(grid.outside) - MAX_OUTSIDE
        figures.append(
            Figure(
                "Outside the layers: always trained",
                "Embeddings and output head are trained by every selection; their SNR is shown "
                "on its own scale, as they are ranked against nothing."
                + (f" {more} more are listed in the tables below." if more > 0 else ""),
                outside_strip(grid.outside),
                "outside",
            )
        )

    alpha = {k: finite(m.get("alpha")) for k, m in (metrics or {}).items() if isinstance(m, dict)}
    if any(math.isfinite(v) for v in alpha.values()):
        tails = {
            k: finite(m.get("num_pl_spikes"))
            for k, m in (metrics or {}).items()
            if isinstance(m, dict) and math.isfinite(finite(m.get("num_pl_spikes")))
        }
        agrid = layer_grid(entries, alpha)
        for part in split_columns(agrid, MAX_COLUMNS):
            if part.values.size == 0:
                break
            figures.append(
                Figure(
                    "Power-law alpha by layer and module",
                    "Alpha on a fixed scale from 1 to 8 (8 and above share the top colour); the "
                    "bracket marks 2-6, the usual range of trained layers. A cross marks a fit on "
                    "fewer than 20 tail eigenvalues: read its alpha as rough.",
                    layer_heatmap(
                        part, top_percent=top_percent, alpha=alpha, tails=tails, label="alpha"
                    ),
                    "alpha",
                )
            )

    for eg in expert_grids(entries):
        for piece in split_experts(eg, MAX_EXPERT_COLUMNS):
            figures.append(
                Figure(
                    f"Experts: {human_label(piece.projection)}",
                    f"{len(piece.layers)} layers x {len(piece.experts)} experts, coloured by SNR "
                    f"rank within the type; {int(piece.selected.sum())} selected. Hover a cell "
                    "for its key.",
                    expert_heatmap(piece, top_percent=top_percent),
                    "experts",
                )
            )

    fits = {
        k: (finite(m.get("alpha")), finite(m.get("xmin")))
        for k, m in (metrics or {}).items()
        if isinstance(m, dict)
    }
    panels = _spectra_panels(entries, spectra, shapes, fits)
    for proj, items in panels:
        pair = len(items) == 2
        figures.append(
            Figure(
                f"Spectrum: {human_label(proj)}",
                ("The modules with the highest and lowest SNR" if pair else "The only module")
                + " with kept singular values: histogram on one x range; the dashed line is the "
                "Marchenko-Pastur threshold, the orange curve the fitted power law of the "
                "eigenvalues from its xmin (dotted).",
                spectra_figure(proj, items),
                "spectra",
            )
        )
    with_spectra = sum(1 for e in entries if e.key in spectra)
    if with_spectra and len(panels) < len(
        {e.where.projection for e in entries if e.key in spectra}
    ):
        notes.append(
            f"Histograms are drawn for the {MAX_SPECTRA_FIGURES} projections with most modules."
        )

    selected_keys = [e.key for e in entries if e.selected]
    n_params, unknown = _params(selected_keys, shapes)
    all_params, all_unknown = _params([e.key for e in entries], shapes)
    size = (
        f"{n_params:,} of {all_params:,} parameters in the scanned matrices "
        f"({100 * n_params / all_params:.1f}%)"
        if all_params and not unknown and not all_unknown
        else "parameters unknown: the shapes were not kept (no spectra file or journal)"
        if not shapes
        else f"{n_params:,} parameters in the {len(selected_keys) - unknown} selected modules "
        f"whose shape is known ({unknown} unknown)"
    )
    (out / f".{SELECTION_FILE}.tmp").write_text(yaml_text, encoding="utf-8")
    os.replace(out / f".{SELECTION_FILE}.tmp", out / SELECTION_FILE)
    page = PageData(
        title=title,
        top_percent=top_percent,
        grouping=grouping,
        scanned=list(scanned or []),
        modules=len(entries),
        n_selected=len(selected_keys),
        patterns=patterns,
        size=size,
        figures=figures,
        types=_type_summaries(entries, pattern_set),
        notes=notes,
        skipped=skipped,
        results_arg=results_arg,
        selection_file=SELECTION_FILE,
        has_alpha=any(math.isfinite(v) for v in alpha.values()),
        dense=dense,
        deficient=_deficient_words(entries, deficient or {}),
    )
    path = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(render(page), encoding="utf-8")
    os.replace(tmp, path)
    return path
