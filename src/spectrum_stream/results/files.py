"""The results files other tools read: axolotl's flat JSON and the per-type sorted JSON.

Both are written atomically (temp file, fsync, rename) and hold finite numbers only. They are a
view of the journal: `rebuild_results(journal_path)` writes them again from it at any time.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
from pathlib import Path

import orjson

from ..errors import SpectrumError
from ..journal.journal import fsync_dir, read_journal, write_all
from .names import DEFAULT_GROUPING, DEFAULT_NAMES, result_key, result_type
from .paths import ResultPaths

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never half.

    Raises SpectrumError naming `path` when it cannot be written (no space, no permission).
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode follows the umask
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            what = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    else exc.strerror or str(exc))
            raise SpectrumError(f"{path}: cannot write ({what})") from None
        raise
    fsync_dir(path.parent)


def compat_results(records, names: str = DEFAULT_NAMES,
                   grouping: str = DEFAULT_GROUPING) -> dict[str, dict]:
    """{key: {"snr", "type"}} for every finished module with a finite SNR, in journal order.

    Keys follow `names` (trainer or checkpoint), types the expert `grouping` (results/names.py).
    """
    out = {}
    for rec in records:
        snr = rec.get("snr")
        number = isinstance(snr, float | int) and not isinstance(snr, bool)
        if rec.get("status") == "ok" and number and math.isfinite(snr):
            key = result_key(rec, names)
            if key in out:  # two matrices under one name: keep the first, say so
                log.warning("%s: %s names more than one scanned matrix (%s); keeping the first",
                            names, key, rec["key"])
                continue
            known = rec.get("type") if key == rec["key"] and isinstance(rec.get("type"), str) else None
            out[key] = {"snr": float(snr), "type": result_type(key, grouping, known)}
    return out


def sorted_by_type(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{type: {key: snr}} with each type's modules in descending SNR order."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, info in results.items():
        groups.setdefault(info["type"], []).append((key, info["snr"]))
    return {t: dict(sorted(items, key=lambda kv: -kv[1])) for t, items in groups.items()}


def write_results(records, paths: ResultPaths, names: str = DEFAULT_NAMES,
                  grouping: str = DEFAULT_GROUPING) -> dict[str, dict]:
    """Write both results files from journal records; returns the flat results."""
    results = compat_results(records, names, grouping)
    atomic_write(paths.results, orjson.dumps(results, option=orjson.OPT_INDENT_2))
    atomic_write(paths.sorted, orjson.dumps(sorted_by_type(results), option=orjson.OPT_INDENT_2))
    return results


def rebuild_results(journal_path: str | os.PathLike, names: str = DEFAULT_NAMES,
                    grouping: str = DEFAULT_GROUPING) -> tuple[ResultPaths, dict[str, dict],
                                                              list[tuple[str, str]]]:
    """Write both results files again from a journal, e.g. while a scan runs or after a crash.

    Returns (paths, results, failed) with failed = [(key, reason)] of modules journaled as failed.
    Safe beside a live scan: it reads whole lines only, and the files are replaced atomically.
    """
    paths = ResultPaths.for_journal(Path(journal_path))
    if not paths.journal.is_file():
        raise SpectrumError(f"{paths.journal}: no such journal")
    header, records, _ = read_journal(paths.journal)
    if header is None:
        raise SpectrumError(f"{paths.journal}: the journal is empty")
    failed = [(k, str(r.get("reason"))) for k, r in records.items() if r.get("status") != "ok"]
    return paths, write_results(records.values(), paths, names, grouping), failed
