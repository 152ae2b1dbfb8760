"""Results arranged as numpy grids, ready to draw: layers x projections and layers x experts.

Kept apart from drawing so that the shaping (which cell a key lands in, how experts pool into one
cell, where a module ranks within its type) is testable without drawing and costs one pass over
the keys.
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
    """One results row with its coordinates and its place in the ranking `select` makes.

    group: the type it is ranked in (the file's type, or its regrouping); rank: 1 = highest SNR
    of its group of `size`; percentile: (size - rank) / (size - 1), 1 = highest, 0 = lowest (1 for
    a group of one)."""

    key: str
    type: str
    where: ModuleKey
    snr: float
    selected: bool
    group: str = ""
    rank: int = 1
    size: int = 1

    @property
    def percentile(self) -> float:
        return 1.0 if self.size <= 1 else (self.size - self.rank) / (self.size - 1)


@dataclass
class LayerGrid:
    """values[i, j]: the colour value at layers[i] x columns[j] (the median over a cell's modules
    where it pools experts), NaN where there is none; marks[i, j]: the fraction of the cell's
    modules that are selected; members[(i, j)]: the cell's entries, for its hover text.
    `outside` holds the modules outside the layers (embeddings, head)."""

    layers: list[int]
    columns: list[str]
    values: np.ndarray
    marks: np.ndarray
    pooled: list[bool]
    members: dict[tuple[int, int], list[Entry]]
    outside: list[Entry]


@dataclass
class ExpertGrid:
    """One projection's layers x experts: colour values (NaN where missing), selection mask and
    the entry of each cell."""

    projection: str
    layers: list[int]
    experts: list[int]
    values: np.ndarray
    selected: np.ndarray
    members: dict[tuple[int, int], Entry]


def finite(x: object) -> float:
    """A finite number as float, anything else (None, NaN, inf, a string) as NaN: missing."""
    return (
        float(x)
        if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        else math.nan
    )


def layer_grid(entries: Iterable[Entry], value_of: dict[str, float] | None = None) -> LayerGrid:
    """Pool entries into layers x projections. The colour value is the entry's percentile within
    its type, or value_of[key] (e.g. alpha) where given."""
    cells: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    outside: list[Entry] = []
    columns: dict[str, bool] = {}  # projection -> has experts (insertion order = first seen)
    for e in entries:
        if e.where.layer is None:
            outside.append(e)
            continue
        columns[e.where.projection] = columns.get(e.where.projection, False) or (
            e.where.expert is not None
        )
        cells[(e.where.layer, e.where.projection)].append(e)
    layers = sorted({layer for layer, _ in cells})
    cols = list(columns)
    row = {layer: i for i, layer in enumerate(layers)}
    col = {c: j for j, c in enumerate(cols)}
    values = np.full((len(layers), len(cols)), np.nan)
    marks = np.full_like(values, np.nan)
    members: dict[tuple[int, int], list[Entry]] = {}
    for (layer, proj), items in cells.items():
        if value_of is None:
            vals = np.array([e.percentile for e in items if math.isfinite(e.snr)], dtype=float)
        else:
            vals = np.array([finite(value_of.get(e.key)) for e in items], dtype=float)
        vals = vals[np.isfinite(vals)]
        i, j = row[layer], col[proj]
        values[i, j] = np.median(vals) if vals.size else np.nan
        marks[i, j] = sum(e.selected for e in items) / len(items)
        members[(i, j)] = items
    return LayerGrid(layers, cols, values, marks, [columns[c] for c in cols], members, outside)


def expert_grids(entries: Iterable[Entry]) -> list[ExpertGrid]:
    """One layers x experts grid per projection that has experts in the layers; colour value:
    the module's percentile within its type."""
    by_proj: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if e.where.expert is not None and e.where.layer is not None:
            by_proj[e.where.projection].append(e)
    grids = []
    for proj, items in by_proj.items():
        layers = sorted({e.where.layer for e in items if e.where.layer is not None})
        experts = sorted({e.where.expert for e in items if e.where.expert is not None})
        row = {layer: i for i, layer in enumerate(layers)}
        col = {x: j for j, x in enumerate(experts)}
        values = np.full((len(layers), len(experts)), np.nan)
        selected = np.zeros(values.shape, dtype=bool)
        members: dict[tuple[int, int], Entry] = {}
        for e in items:
            assert e.where.layer is not None and e.where.expert is not None
            i, j = row[e.where.layer], col[e.where.expert]
            values[i, j] = e.percentile if math.isfinite(e.snr) else np.nan
            selected[i, j] = e.selected
            members[(i, j)] = e
        grids.append(ExpertGrid(proj, layers, experts, values, selected, members))
    return grids


def split_columns(grid: LayerGrid, most: int) -> list[LayerGrid]:
    """A grid with more than `most` columns as several grids of at most `most` columns."""
    if len(grid.columns) <= most:
        return [grid]
    parts = []
    for start in range(0, len(grid.columns), most):
        stop = min(start + most, len(grid.columns))
        members = {(i, j - start): v for (i, j), v in grid.members.items() if start <= j < stop}
        parts.append(
            LayerGrid(
                grid.layers,
                grid.columns[start:stop],
                grid.values[:, start:stop],
                grid.marks[:, start:stop],
                grid.pooled[start:stop],
                members,
                grid.outside if start == 0 else [],
            )
        )
    return parts


def split_experts(grid: ExpertGrid, most: int) -> list[ExpertGrid]:
    """An expert grid with more than `most` experts as several grids, each naming its experts."""
    if len(grid.experts) <= most:
        return [grid]
    parts = []
    for start in range(0, len(grid.experts), most):
        stop = min(start + most, len(grid.experts))
        members = {(i, j - start): v for (i, j), v in grid.members.items() if start <= j < stop}
        parts.append(
            ExpertGrid(
                f"{grid.projection} (experts {grid.experts[start]}-{grid.experts[stop - 1]})",
                grid.layers,
                grid.experts[start:stop],
                grid.values[:, start:stop],
                grid.selected[:, start:stop],
                members,
            )
        )
    return parts
