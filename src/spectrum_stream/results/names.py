"""Which name and which type a result is written under: `--names` and `--expert-grouping`.

The journal holds both names of every module (`key`: the checkpoint's, the identity a resume goes
by; `trainer_key`: the parameter rows of the model as transformers 5 loads it), so the results
files can be written under either without a rescan. The type is what Spectrum ranks within
(docs/moe.md, "Selecting experts"):
- `per-expert`: the part of the key after the layer index, expert index included;
- `pooled` (the default): the expert index and row range taken out, so all experts of a
  projection rank together, as every other projection ranks across layers.
"""

from __future__ import annotations

import re

from ..errors import SpectrumError
from ..layout.naming import module_type
from ..modes import GROUPINGS, NAMES, Grouping, Names

__all__ = ["DEFAULT_GROUPING", "DEFAULT_NAMES", "GROUPINGS", "NAMES"]  # and the functions below

DEFAULT_NAMES: Names = "trainer"
DEFAULT_GROUPING: Grouping = "pooled"

_EXPERT_INDEX = re.compile(r"(^|\.)experts\.\d+\.")
_ROW_RANGE = re.compile(r"\$\[[0-9]*(:[0-9]*)?\]$")


def check_names(names: str) -> str:
    if names not in NAMES:
        raise SpectrumError(f"names {names!r}: expected one of {', '.join(NAMES)}")
    return names


def check_grouping(grouping: str) -> str:
    if grouping not in GROUPINGS:
        raise SpectrumError(f"grouping {grouping!r}: expected one of {', '.join(GROUPINGS)}")
    return grouping


def pooled_type(type_: str) -> str:
    """The type with the expert index taken out, so all experts of a projection rank together."""
    return _ROW_RANGE.sub("", _EXPERT_INDEX.sub(r"\1experts.*.", type_))


def result_type(key: str, grouping: str = DEFAULT_GROUPING, per_expert: str | None = None) -> str:
    """The type a results file gives `key` under `grouping`; `per_expert` is its per-expert type
    when known (a journal record's, for its checkpoint key), else the key's module type."""
    t = per_expert if per_expert is not None else module_type(key)
    return pooled_type(t) if check_grouping(grouping) == "pooled" else t


def result_key(record: dict, names: str = DEFAULT_NAMES) -> str:
    """A journal record's key under `names` (journals written before trainer keys: its key)."""
    if check_names(names) == "trainer" and isinstance(record.get("trainer_key"), str):
        return record["trainer_key"]
    return record["key"]


def key_map(records, names: str = DEFAULT_NAMES) -> dict[str, str]:
    """{checkpoint key: results key} of journal records: for anything keyed by results keys
    (e.g. stored spectra) to follow a switch of `--names`."""
    return {rec["key"]: result_key(rec, names) for rec in records}
