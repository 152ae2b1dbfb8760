"""Results arranged as numpy grids, ready to draw: layers x projections and layers x experts.

Kept apart from drawing so that the shaping (which cell a key lands in, how experts pool into one
cell) is testable without matplotlib and costs one pass over the keys, not one artist per module.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .keys import ModuleKey


@dataclass(frozen=True)
class Entry:
    """One results row with its coordinates."""

    key: str
    type: str
    where: ModuleKey
    snr: float
    selected: bool


@dataclass
class LayerGrid:
    """values[i, j]: the module at layers[i] x columns[j] (median over experts where pooled),
    NaN where there is none; marks[i, j]: the fraction of that cell's modules that are selected.
    `outside` holds the modules outside the layers (embeddings, head) as (name, value, mark)."""

    layers: list[int]
    columns: list[str]
    values: np.ndarray
    marks: np.ndarray
    pooled: list[bool]
    outside: list[tuple[str, float, float]]


@dataclass
class ExpertGrid:
    """One projection's layers x experts values (NaN where missing) and selection mask."""

    projection: str
    layers: list[int]
    experts: list[int]
    values: np.ndarray
    selected: np.ndarray


def finite(x: object) -> float:
    """A finite number as float, anything else (None, NaN, inf, a string) as NaN: missing."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else math.nan


def layer_grid(entries: Iterable[Entry], value_of: dict[str, float] | None = None) -> LayerGrid:
    """Pool entries into layers x projections; value_of overrides the SNR (e.g. alpha per key)."""
    cells: dict[tuple[int, str], list[tuple[float, bool]]] = defaultdict(list)
    outside: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    columns: dict[str, bool] = {}  # projection -> has experts (insertion order = first seen)
    for e in entries:
        v = e.snr if value_of is None else finite(value_of.get(e.key))
        if e.where.layer is None:
            outside[e.where.projection].append((v, e.selected))
            continue
        columns[e.where.projection] = columns.get(e.where.projection, False) or (
            e.where.expert is not None
        )
        cells[(e.where.layer, e.where.projection)].append((v, e.selected))
    layers = sorted({layer for layer, _ in cells})
    cols = list(columns)
    row = {layer: i for i, layer in enumerate(layers)}
    col = {c: j for j, c in enumerate(cols)}
    values = np.full((len(layers), len(cols)), np.nan)
    marks = np.full_like(values, np.nan)
    for (layer, proj), items in cells.items():
        vals = np.array([v for v, _ in items], dtype=float)
        vals = vals[np.isfinite(vals)]
        i, j = row[layer], col[proj]
        values[i, j] = np.median(vals) if vals.size else np.nan
        marks[i, j] = sum(s for _, s in items) / len(items)
    out = []
    for name, items in outside.items():
        vals = np.array([v for v, _ in items], dtype=float)
        vals = vals[np.isfinite(vals)]
        out.append(
            (
                name,
                float(np.median(vals)) if vals.size else math.nan,
                sum(s for _, s in items) / len(items),
            )
        )
    return LayerGrid(layers, cols, values, marks, [columns[c] for c in cols], out)


def expert_grids(entries: Iterable[Entry]) -> list[ExpertGrid]:
    """One layers x experts grid per projection that has experts in the layers."""
    by_proj: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if e.where.expert is not None and e.where.layer is not None:
            by_proj[e.where.projection].append(e)
    grids = []
    for proj, items in by_proj.items():
        layers = sorted({e.where.layer for e in items})
        experts = sorted({e.where.expert for e in items})
        row = {layer: i for i, layer in enumerate(layers)}
        col = {x: j for j, x in enumerate(experts)}
        values = np.full((len(layers), len(experts)), np.nan)
        selected = np.zeros(values.shape, dtype=bool)
        for e in items:
            i, j = row[e.where.layer], col[e.where.expert]
            values[i, j] = e.snr
            selected[i, j] = e.selected
        grids.append(ExpertGrid(proj, layers, experts, values, selected))
    return grids
