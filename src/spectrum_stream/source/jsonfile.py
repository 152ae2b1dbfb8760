"""The one guarded way this tool reads JSON: index, config.json, journal lines, results files.

Those files come from strangers (a downloaded repo, a results file someone mailed you), so a bad
one must be a one-line refusal naming the file, never a traceback. Every reader here:
- refuses a file over `max_bytes` before reading it whole (a results file of 2 GB is not one);
- parses with orjson, which refuses nesting past 1024 levels (the stdlib `json` recurses and dies
  with RecursionError on 200,000 brackets), invalid UTF-8, NaN/Infinity and out-of-range numbers;
- checks the document against a small schema and says which key is wrong.

Use: `read_json(path, "a results file", schema)` for a file, `parse_json(data, where, what, schema)`
for bytes already in hand (one journal line, a Hub response). Both raise `JsonFileError`, a
SpectrumError whose message is `<where>: not <what>: <why>`. Schemas are built from the helpers
below (`obj`, `mapping`, `list_of`, `string`, `number`, `integer`, `anything`) or any callable
`check(value, at)` that raises `SchemaMismatch(at, "must be ...")`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..errors import JsonFileError, SchemaMismatch

MAX_JSON_BYTES = 256 * 1024**2  # no index, config or results file of a real model comes close
Schema = Callable[[Any, str], None]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _key(at: str, key: Any) -> str:
    text = key if isinstance(key, str) else str(key)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{at}[{orjson.dumps(text).decode()}]" if isinstance(key, str) else f"{at}[{text}]"


# -- schema helpers ------------------------------------------------------------------------------


def anything(value: Any, at: str) -> None:
    """Any JSON value."""


def string(value: Any, at: str) -> None:
    if not isinstance(value, str):
        raise SchemaMismatch(at, f"must be a string, not {_kind(value)}")


def number(value: Any, at: str) -> None:
    """A finite number (orjson never yields NaN/Inf, but a float past 1e308 is refused too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SchemaMismatch(at, f"must be a finite number, not {_kind(value)}")


def integer(minimum: int | None = None) -> Schema:
    def check(value: Any, at: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaMismatch(at, f"must be an integer, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise SchemaMismatch(at, f"must be at least {minimum}, not {value}")

    return check


def list_of(item: Schema) -> Schema:
    def check(value: Any, at: str) -> None:
        if not isinstance(value, list):
            raise SchemaMismatch(at, f"must be a list, not {_kind(value)}")
        for i, v in enumerate(value):
            item(v, _key(at, i))

    return check


def mapping(values: Schema) -> Schema:
    """An object with any keys, every value matching `values`."""

    def check(value: Any, at: str) -> None:
        if not isinstance(value, dict):
            raise SchemaMismatch(at, f"must be an object, not {_kind(value)}")
        for k, v in value.items():
            values(v, _key(at, k))

    return check


def obj(
    required: dict[str, Schema] | None = None, optional: dict[str, Schema] | None = None
) -> Schema:
    """An object with these keys (other keys are allowed and not looked at)."""
    required, optional = required or {}, optional or {}

    def check(value: Any, at: str) -> None:
        if not isinstance(value, dict):
            raise SchemaMismatch(at, f"must be an object, not {_kind(value)}")
        for k, schema in required.items():
            if k not in value:
                raise SchemaMismatch(_key(at, k), "is missing")
            schema(value[k], _key(at, k))
        for k, schema in optional.items():
            if k in value:
                schema(value[k], _key(at, k))

    return check


# -- readers -------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_json(
    data: bytes | str,
    where: str | os.PathLike,
    what: str,
    schema: Schema | None = None,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Parse and check JSON held in memory; JsonFileError `<where>: not <what>: <why>` if bad."""

    def fail(why: str) -> JsonFileError:
        why = _one_line(why)
        return JsonFileError(f"{where}: not {what}: {why}", why)

    if len(data) > max_bytes:
        raise fail(f"{len(data)} bytes, more than the {max_bytes} this tool reads")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise fail(f"invalid JSON ({exc})") from None
    if schema is not None:
        try:
            schema(doc, "")
        except SchemaMismatch as exc:
            raise fail(str(exc)) from None
    return doc


def read_json(
    path: str | os.PathLike,
    what: str,
    schema: Schema | None = None,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Read, parse and check a JSON file; every failure is one JsonFileError line naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                why = f"{size} bytes, more than the {max_bytes} this tool reads"
                raise JsonFileError(f"{path}: not {what}: {why}", why)
            data = f.read(max_bytes + 1)  # a file growing while read is still capped
    except OSError as exc:
        raise JsonFileError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    return parse_json(data, path, what, schema, max_bytes)
