"""Results files as the original Spectrum tool writes them: non-finite SNRs, two layouts.

Why: its published scans (Python's json) hold SNRs that are the bare tokens `NaN`, `Infinity`,
`-Infinity` or `null` (a layer norm, a router whose noise estimate is zero), which strict JSON
refuses; and two of them are the per-type sorted layout `{type: {module: snr}}` instead of the
flat `{module: {snr, type}}`. One rule for every command (docs/spec.md, "Results files from other
tools"): such a token is accepted as an SNR value only, anywhere else the file is refused as
before; a module whose SNR is not a finite number is skipped (left out of every ranking, count
and picture) and the caller is told which. Our own files never hold such tokens.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import JsonFileError, SchemaMismatch
from ..source.jsonfile import MAX_JSON_BYTES, Schema, mapping, number, parse_json, string
from ..source.safe_files import read_regular
from .key_grammar import check_results

WHAT = "a results file ({module: {snr, type}})"


class NonFinite(float):
    """The value of a bare `NaN` / `Infinity` / `-Infinity` token, marked so that a schema can
    accept it where an SNR goes and nowhere else."""


def _constant(token: str) -> NonFinite:
    return NonFinite(token)  # float("NaN"), float("Infinity"), float("-Infinity")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: strict JSON readers refuse it, so do we
        raise ValueError(f"number out of range: {text}")
    return value


def snr_value(value: Any, at: str) -> None:
    """An SNR: a finite number, or a non-finite token / null (the module is then skipped)."""
    if value is None or isinstance(value, NonFinite):
        return
    number(value, at)


def _flat_entry(value: Any, at: str) -> None:
    if not isinstance(value, dict):
        raise SchemaMismatch(at, "must be an object with snr and type")
    for name, check in (("snr", snr_value), ("type", string)):
        if name not in value:
            raise SchemaMismatch(f'{at}["{name}"]', "is missing")
        check(value[name], f'{at}["{name}"]')


FLAT: Schema = mapping(_flat_entry)
SORTED: Schema = mapping(mapping(snr_value))  # {type: {module: snr}}


def _is_sorted_layout(doc: Any) -> bool:
    """Every value an object of module -> SNR (no `type` string anywhere): the sorted layout."""
    return (
        isinstance(doc, dict)
        and bool(doc)
        and all(
            isinstance(v, dict) and not isinstance(v.get("type"), str) and "snr" not in v
            for v in doc.values()
        )
    )


def _lenient_parse(data: bytes, path: Path) -> Any:
    """Python's json with non-finite tokens marked; anything else it would take beyond strict
    JSON (a number past 1e308) is refused. Only reached when the strict parse failed."""
    try:
        return json.loads(data, parse_constant=_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past what json parses
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise JsonFileError(f"{path}: not {WHAT}: invalid JSON ({why})", why) from None


@dataclass
class ReadResults:
    """A results file read back: the usable modules, and those skipped (SNR not a finite number)."""

    results: dict[str, dict]
    skipped: list[str] = field(default_factory=list)
    layout: str = "flat"


def read_results_file(path: str | os.PathLike) -> ReadResults:
    """Read a results file (ours or the original tool's) under the rule in the module docstring."""
    path = Path(path)
    data = read_regular(path, None, WHAT, MAX_JSON_BYTES)  # never a FIFO or a device
    try:
        doc = parse_json(data, path, WHAT)
    except JsonFileError:
        if b"NaN" not in data and b"Infinity" not in data:
            raise
        doc = _lenient_parse(data, path)
    layout = "sorted" if _is_sorted_layout(doc) else "flat"
    try:
        (SORTED if layout == "sorted" else FLAT)(doc, "")
    except SchemaMismatch as exc:
        why = " ".join(str(exc).split())
        raise JsonFileError(f"{path}: not {WHAT}: {why}", why) from None
    if layout == "sorted":
        doc = {
            key: {"snr": snr, "type": t}
            for t, members in doc.items()
            for key, snr in members.items()
        }
    check_results(doc, str(path))  # keys are names, never patterns (results/key_grammar.py)
    usable, skipped = {}, []
    for key, info in doc.items():
        snr = info["snr"]
        if snr is None or isinstance(snr, NonFinite) or not math.isfinite(snr):
            skipped.append(key)
        else:
            usable[key] = info
    if skipped and not usable:
        why = f"none of its {len(skipped)} modules has a finite SNR"
        raise JsonFileError(f"{path}: not {WHAT}: {why}", why)
    return ReadResults(usable, skipped, layout)


def skipped_line(path: str | os.PathLike, skipped: list[str], listed: str = "") -> str:
    """One warning line: how many modules were skipped, the first few, and where all are listed."""
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    where = f"; all are listed {listed}" if listed else ""
    return (
        f"{path}: {len(skipped)} modules have no finite SNR (NaN, Infinity or null) and are "
        f"skipped: {shown}{where}"
    )
