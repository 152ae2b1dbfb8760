"""Where a result sits in the model: its layer, its projection and (for MoE) its expert.

The report draws layers x projections and layers x experts grids, so each results key has to be
split into those coordinates. Keys come in several shapes (plain module names, per-expert module
names, fused-expert rows `name$[e]`, DBRX row ranges `name$[start:end]`); anything unrecognised
still gets a layer and a projection, and expert None, so an odd key never breaks a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..results.names import pooled_type

_ROWS = re.compile(r"\$\[(?P<a>\d+)(?::(?P<b>\d+))?\]$")  # trailing `$[e]` or `$[start:end]`
_EXPERT_PART = re.compile(r"(^|\.)experts\.(?P<e>\d+)(?=\.|$)")  # `experts.5` inside a dotted name


@dataclass(frozen=True)
class ModuleKey:
    """A key's coordinates: layer (None outside the layers), projection, expert (None if dense)."""

    layer: int | None
    projection: str
    expert: int | None


def _layer(key: str) -> int | None:
    """The first all-digit dotted component that is not an expert index (`experts.5`)."""
    parts = _ROWS.sub("", key).split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and part.isascii() and not (i and parts[i - 1] == "experts"):
            return int(part)
    return None


def _expert_from_rows(key: str) -> int | None:
    """`$[5]` -> 5; `$[512:768]` -> 512 // 256 = 2 (rows of equal-sized experts); else None."""
    m = _ROWS.search(key)
    if m is None:
        return None
    start = int(m["a"])
    if m["b"] is None:
        return start
    width = int(m["b"]) - start
    if width <= 0 or start % width:
        return None
    return start // width


def _expert_from_name(key: str) -> int | None:
    """`...experts.5.w1` -> 5."""
    m = _EXPERT_PART.search(key)
    return int(m["e"]) if m else None


@lru_cache(maxsize=65536)  # a type recurs in every layer: one regex pass per type, not per key
def projection_of(type_: str) -> str:
    """The type without its expert index: `mlp.experts.5.up_proj` -> `mlp.experts.*.up_proj`,
    `mlp.experts.down_proj$[5]` -> `mlp.experts.down_proj`; other types are returned unchanged.
    The same rule as the results' pooled expert grouping (results/names.py)."""
    return pooled_type(type_) or type_


def parse_key(key: str, type: str) -> ModuleKey:
    """Split one results key (with its type from the results file) into grid coordinates."""
    expert = _expert_from_rows(key)
    if expert is None and not _ROWS.search(key):
        expert = _expert_from_name(key)
    return ModuleKey(_layer(key), projection_of(type), expert)


_FUSED_PART = re.compile(r"\(\?#(?P<part>[A-Za-z_]+)\)")


def human_label(name: str) -> str:
    """A projection, type or key as a reader says it: `experts.gate_up_proj(?#gate)` ->
    `experts.gate_up_proj, gate rows`; `down_proj$[5]` -> `down_proj, expert 5`;
    `w1$[512:768]` -> `w1, rows 512-767`. The raw key stays on hover and in the tables."""
    parts = []
    m = _ROWS.search(name)
    if m is not None:
        name = name[: m.start()]
        if m["b"] is None:
            parts.append(f"expert {m['a']}")
        else:
            parts.append(f"rows {m['a']}-{int(m['b']) - 1}")
    f = _FUSED_PART.search(name)
    if f is not None:
        name = name[: f.start()] + name[f.end() :]
        parts.insert(0, f"{f['part']} rows")
    return ", ".join([name, *parts])
