"""The results files other tools read: axolotl's flat JSON and the per-type sorted JSON.

Both are written atomically (temp file, fsync, rename) and hold finite numbers only.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import orjson

from .naming import slug


def results_paths(out_dir: Path, model_name: str) -> dict[str, Path]:
    """Where a scan of `model_name` keeps its files."""
    base = f"snr_results_{slug(model_name)}"
    return {
        "results": out_dir / f"{base}.json",
        "sorted": out_dir / f"{base}_sorted.json",
        "journal": out_dir / f"{base}.journal.jsonl",
        "lock": out_dir / f"{base}.lock",
    }


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compat_results(records) -> dict[str, dict]:
    """{key: {"snr", "type"}} for every finished module with a finite SNR, in journal order."""
    out = {}
    for rec in records:
        snr = rec.get("snr")
        if rec.get("status") == "ok" and isinstance(snr, float | int) and math.isfinite(snr):
            out[rec["key"]] = {"snr": float(snr), "type": rec["type"]}
    return out


def sorted_by_type(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{type: {key: snr}} with each type's modules in descending SNR order."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, info in results.items():
        groups.setdefault(info["type"], []).append((key, info["snr"]))
    return {t: dict(sorted(items, key=lambda kv: -kv[1])) for t, items in groups.items()}


def write_results(records, paths: dict[str, Path]) -> dict[str, dict]:
    """Write both results files from journal records; returns the flat results."""
    results = compat_results(records)
    atomic_write(paths["results"], orjson.dumps(results, option=orjson.OPT_INDENT_2))
    atomic_write(paths["sorted"], orjson.dumps(sorted_by_type(results), option=orjson.OPT_INDENT_2))
    return results
