"""The trainer-name rules derived from one transformers version, kept in a small JSON file.

Importing transformers to read its conversion mapping costs seconds; the rules derived from it
depend only on the installed version. So the first scan that needs them derives the rules of
every model type the mapping lists and writes them here once; later scans read this file.

The file is hostile input like any other: too big, malformed, another version, a field of the
wrong kind -> it is ignored (and rewritten by the next derivation), never an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .rename_rules import Rules

log = logging.getLogger(__name__)

CACHE_ENV = "SPECTRUM_STREAM_CACHE"  # a directory; overrides $XDG_CACHE_HOME/spectrum-stream
FILE_NAME = "transformers-rules.json"
FORMAT = 1
MAX_BYTES = 4 * 1024**2  # the table of transformers 5.25 is about 150 kB
_KINDS = ("stack", "rows", "opaque")


def cache_path() -> Path:
    """Where the rules file lives: $SPECTRUM_STREAM_CACHE, else the user's cache directory."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser() / FILE_NAME
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "spectrum-stream" / FILE_NAME


def rules_to_json(rules: Rules) -> dict[str, Any]:
    return {
        "renames": [[r.source, r.target] for r in rules.renames],
        "fuses": [
            {"sources": list(f.sources), "target": f.target, "kind": f.kind, "parts": list(f.parts)}
            for f in rules.fuses
        ],
    }


def _strings(value: object, count: int | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("expected a list of strings")
    if count is not None and len(value) != count:
        raise ValueError(f"expected {count} strings")
    return tuple(value)


def _pattern(text: str) -> str:
    from .trainer_names import _compile

    _compile(text, r".*")  # as the rules will compile it: refuse a broken one here
    return text


def rules_from_json(value: object) -> Rules:
    """Rules from their JSON form; ValueError (or re.error) on anything else."""
    from .rename_rules import Fuse, Rename, Rules

    if not isinstance(value, dict) or set(value) != {"renames", "fuses"}:
        raise ValueError("expected {renames, fuses}")
    renames = []
    for item in value["renames"] if isinstance(value["renames"], list) else [None]:
        source, target = _strings(item, 2)
        renames.append(Rename(_pattern(source), target))
    fuses = []
    for item in value["fuses"] if isinstance(value["fuses"], list) else [None]:
        if not isinstance(item, dict) or set(item) != {"sources", "target", "kind", "parts"}:
            raise ValueError("expected {sources, target, kind, parts}")
        if item["kind"] not in _KINDS or not isinstance(item["target"], str):
            raise ValueError("bad fuse")
        sources = tuple(_pattern(s) for s in _strings(item["sources"]))
        parts = _strings(item["parts"])
        if parts and len(parts) != len(sources):
            raise ValueError("parts do not match sources")
        fuses.append(Fuse(sources, item["target"], item["kind"], parts))
    return Rules(tuple(renames), tuple(fuses))


def load(version: str) -> tuple[Rules, dict[str, Rules]] | None:
    """(legacy rules, {model type or architecture: rules}) for `version`, or None: no file, a
    file for another version, or a bad file."""
    path = cache_path()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"over {MAX_BYTES} bytes")
        table = json.loads(data)
        if not isinstance(table, dict) or table.get("format") != FORMAT:
            raise ValueError("not a rules file of this format")
        if table.get("transformers") != version:
            return None
        types = table.get("types")
        if not isinstance(types, dict):
            raise ValueError("types: expected an object")
        return rules_from_json(table.get("legacy")), {
            str(name): rules_from_json(rules) for name, rules in types.items()
        }
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, RecursionError, re.error) as exc:
        log.debug("%s: ignored (%s); it will be written again", path, exc)
        return None


def store(version: str, legacy: Rules, types: dict[str, Rules]) -> None:
    """Write the rules of `version`, replacing the file whole; a failure only costs speed."""
    from ..errors import SpectrumError
    from ..results.atomic import atomic_write

    table = {
        "format": FORMAT,
        "transformers": version,
        "legacy": rules_to_json(legacy),
        "types": {name: rules_to_json(rules) for name, rules in sorted(types.items())},
    }
    try:
        atomic_write(cache_path(), json.dumps(table, separators=(",", ":")).encode())
    except (SpectrumError, OSError) as exc:
        log.debug("rules cache not written: %s", exc)
