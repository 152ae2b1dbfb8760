"""Reading back a metrics table (.csv or .json) that `spectrum-stream metrics` wrote.

Why: `report --metrics FILE` reuses a table computed once (minutes for a big MoE) instead of
fitting every spectrum again. The file may have been edited or come from elsewhere, so it is read
with the same guards as any other input: a size cap, and one error line naming what is wrong.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..errors import SpectrumError
from ..source.jsonfile import MAX_JSON_BYTES, list_of, obj, read_json, string
from ..source.safe_files import read_regular
from .spectral import METRIC_NAMES

_WHAT = "a metrics table (a list of rows with a key)"


def read_metrics_table(path) -> dict[str, dict]:
    """{key: {metric: float or None}} from a .csv or .json written by write_table."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = read_json(path, _WHAT, list_of(obj({"key": string})))
    elif suffix == ".csv":
        rows = _csv_rows(path)
    else:
        raise SpectrumError(f"{path}: a metrics table must end in .csv or .json")
    return {
        row["key"]: {name: _number(row.get(name), path, row["key"], name) for name in METRIC_NAMES}
        for row in rows
    }


def _csv_rows(path: Path) -> list[dict]:
    try:
        text = read_regular(path, None, _WHAT, MAX_JSON_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise SpectrumError(f"{path}: not {_WHAT}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "key" not in reader.fieldnames:
        raise SpectrumError(f"{path}: not {_WHAT}: no 'key' column in its header")
    try:
        return [row for row in reader if row.get("key")]
    except csv.Error as exc:
        raise SpectrumError(f"{path}: not {_WHAT}: {exc}") from None


def _number(value, path: Path, key: str, name: str):
    """A cell or JSON value as a float; empty / null / missing is None (no value for that module)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise SpectrumError(f"{path}: {key!r} {name} must be a number, not a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpectrumError(f"{path}: {key!r} {name} must be a number, not {value!r}") from None
    return number if math.isfinite(number) else None
