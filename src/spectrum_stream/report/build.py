"""build_report: a results set (and optionally spectra and metrics) to an offline HTML page.

Glue only: parse keys once, shape the grids, draw each figure, summarise each type, write the page.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .figures import expert_heatmap, layer_heatmap, spectra_figure
from .grid import Entry, expert_grids, finite, layer_grid
from .keys import parse_key
from .page import PageData, TypeSummary, render


def _file_part(text: str) -> str:
    """A projection name as a safe file name piece."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "x"


def _entries(results: dict[str, dict], selected: set[str]) -> list[Entry]:
    return [
        Entry(
            key,
            str(info.get("type", key)),
            parse_key(key, str(info.get("type", key))),
            finite(info.get("snr")),
            key in selected,
        )
        for key, info in results.items()
    ]


def _type_summaries(entries: list[Entry]) -> list[TypeSummary]:
    """Per type (first-seen order): counts, SNR range, and the selected keys with their rank."""
    by_type: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_type[e.type].append(e)
    out = []
    for t, items in by_type.items():
        ranked = sorted(items, key=lambda e: -e.snr if math.isfinite(e.snr) else math.inf)
        snrs = np.array([e.snr for e in items])
        snrs = snrs[np.isfinite(snrs)]
        stats = (snrs.min(), float(np.median(snrs)), snrs.max()) if snrs.size else (math.nan,) * 3
        chosen = [(e.key, e.snr, rank) for rank, e in enumerate(ranked, 1) if e.selected]
        out.append(
            TypeSummary(
                t,
                items[0].where.projection,
                len(items),
                float(stats[0]),
                stats[1],
                float(stats[2]),
                chosen,
            )
        )
    return out


def _spectra_panels(
    entries: list[Entry], spectra: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]]
) -> dict[str, list]:
    """{projection: panels} with the best and worst module (by SNR) among those with spectra."""
    by_proj: dict[str, list[Entry]] = {}
    for e in entries:  # projections in results order, so figures follow the heatmap's columns
        by_proj.setdefault(e.where.projection, [])
        if e.key in spectra and np.size(spectra[e.key]) and math.isfinite(e.snr):
            by_proj[e.where.projection].append(e)
    panels = {}
    for proj, items in by_proj.items():
        if not items:
            continue
        best = max(items, key=lambda e: e.snr)
        worst = min(items, key=lambda e: e.snr)
        chosen = [("best", best)] + ([("worst", worst)] if worst is not best else [])
        panels[proj] = [
            (tag, e.key, e.snr, np.asarray(spectra[e.key]), shapes.get(e.key)) for tag, e in chosen
        ]
    return panels


def _counts(
    entries: list[Entry], n_types: int, n_selected: int, top_percent: float, n_spectra: int
) -> list[tuple[str, str]]:
    layers = {e.where.layer for e in entries if e.where.layer is not None}
    experts = {e.where.expert for e in entries if e.where.expert is not None}
    projections = {e.where.projection for e in entries}
    counts = [
        ("modules", f"{len(entries):,}"),
        ("types", f"{n_types:,}"),
        ("projections", f"{len(projections):,}"),
        ("layers", f"{len(layers):,}"),
    ]
    if experts:
        counts.append(("experts", f"{len(experts):,}"))
    counts.append(("selected", f"{n_selected:,} (top {top_percent:g}% by SNR within each type)"))
    if n_spectra:
        counts.append(("spectra", f"{n_spectra:,} modules with singular values"))
    return counts


def build_report(
    results: dict[str, dict],
    out_dir: str | Path,
    *,
    selected: set[str],
    top_percent: float,
    spectra: dict[str, np.ndarray] | None = None,
    shapes: dict[str, tuple[int, int]] | None = None,
    metrics: dict[str, dict] | None = None,
    title: str = "",
    notes: list[str] | None = None,
) -> Path:
    """Write out_dir/index.html and its PNGs; return the page's path.

    results: {key: {"snr", "type"}} as in the results file; selected: the keys chosen for training;
    spectra: {key: singular values} for modules to show as histograms (best and worst per
    projection); shapes: {key: (rows, cols)} for their Marchenko-Pastur threshold; metrics:
    {key: {"alpha": ...}} for the alpha heatmap; notes: lines shown at the top of the page (e.g.
    why there are no spectra).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = _entries(results, selected)
    figures: list[tuple[str, str, str]] = []
    notes = list(notes or [])

    layer_heatmap(layer_grid(entries), out / "snr_heatmap.png", label="SNR", title=title)
    figures.append(
        (
            "SNR by layer and module",
            "Each cell is one module's SNR (pooled MoE columns: "
            "the median over experts). Dots mark the selected modules.",
            "snr_heatmap.png",
        )
    )

    alpha = {k: finite(m.get("alpha")) for k, m in (metrics or {}).items() if isinstance(m, dict)}
    if any(math.isfinite(v) for v in alpha.values()):
        layer_heatmap(
            layer_grid(entries, alpha),
            out / "alpha_heatmap.png",
            label="alpha",
            title=title,
            cmap="plasma",
        )
        figures.append(
            (
                "Power-law alpha by layer and module",
                "Heavy-tailed fit exponent of each "
                "module's eigenvalues; about 2 reads as well trained, above 6 as "
                "under-trained. Blank: no alpha for that module.",
                "alpha_heatmap.png",
            )
        )

    for i, grid in enumerate(expert_grids(entries)):
        name = f"experts_{i:02d}_{_file_part(grid.projection)}.png"
        expert_heatmap(grid, out / name)
        figures.append(
            (
                f"Experts: {grid.projection}",
                "SNR of each expert in each layer; dots "
                "mark the selected experts; blank: no such module.",
                name,
            )
        )

    panels = _spectra_panels(entries, spectra or {}, shapes or {})
    for i, (proj, items) in enumerate(panels.items()):
        name = f"spectra_{i:02d}_{_file_part(proj)}.png"
        spectra_figure(proj, items, out / name)
        figures.append(
            (
                f"Spectrum: {proj}",
                "Histogram of singular values of the best and worst "
                "module by SNR; the dashed line is the Marchenko-Pastur threshold.",
                name,
            )
        )

    types = _type_summaries(entries)
    n_selected = sum(e.selected for e in entries)
    missing = len(set(selected) - results.keys())
    if missing:
        notes.append(f"{missing} selected keys are not in the results and are not shown.")
    page = PageData(
        title,
        top_percent,
        _counts(entries, len(types), n_selected, top_percent, len(spectra or {})),
        figures,
        types,
        notes,
    )
    path = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(render(page), encoding="utf-8")
    os.replace(tmp, path)
    return path
