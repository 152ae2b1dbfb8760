"""The results files other tools read: axolotl's flat JSON and the per-type sorted JSON.

Both are written atomically (temp file, fsync, rename) and hold finite numbers only. They are a
view of the journal: `rebuild_results(journal_path)` writes them again from it at any time.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import orjson

from ..errors import SpectrumError, WouldOverwrite
from ..journal.journal import read_journal
from ..journal.ranks import main_journal_of, rank_journals, read_all
from ..journal.records import numerical_rank_of
from ..journal.spectra_log import spectrum_of
from ..printable import printable
from .atomic import atomic_write_set
from .key_grammar import is_key
from .names import DEFAULT_GROUPING, DEFAULT_NAMES, result_key, result_type
from .paths import RESULTS_PREFIX, ResultPaths
from .spectra import spectra_bytes, write_spectra

log = logging.getLogger(__name__)


def ranks(rec: dict) -> bool:
    """Whether a journal record holds a result: finished, with a finite SNR."""
    snr = rec.get("snr")
    if not isinstance(snr, float | int) or isinstance(snr, bool):
        return False
    return rec.get("status") == "ok" and math.isfinite(snr)


def compat_results(
    records, names: str = DEFAULT_NAMES, grouping: str = DEFAULT_GROUPING
) -> dict[str, dict]:
    """{key: {"snr", "type"}} for every finished module with a finite SNR, in journal order.

    Keys follow `names` (trainer or checkpoint), types the expert `grouping` (results/names.py).
    """
    out = {}
    refused: list[str] = []
    for rec in records:
        if ranks(rec):
            snr = rec["snr"]
            key = result_key(rec, names)
            if not is_key(key):  # a tensor name no reader would accept (key_grammar.py)
                refused.append(key)
                continue
            if key in out:  # two matrices under one name: keep the first, say so
                log.warning(
                    "%s: %s names more than one scanned matrix (%s); keeping the first",
                    names,
                    key,
                    rec["key"],
                )
                continue
            known = (
                rec.get("type") if key == rec["key"] and isinstance(rec.get("type"), str) else None
            )
            out[key] = {"snr": float(snr), "type": result_type(key, grouping, known)}
    if refused:
        log.warning(
            "%d module(s) left out of the results: their names are not module names a results "
            "key may hold (e.g. %s; docs/robustness.md, 'Results keys')",
            len(refused),
            printable(str(refused[0]), limit=120),
        )
    return out


def sorted_by_type(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{type: {key: snr}} with each type's modules in descending SNR order."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, info in results.items():
        groups.setdefault(info["type"], []).append((key, info["snr"]))
    return {t: dict(sorted(items, key=lambda kv: -kv[1])) for t, items in groups.items()}


def write_results(
    records, paths: ResultPaths, names: str = DEFAULT_NAMES, grouping: str = DEFAULT_GROUPING
) -> dict[str, dict]:
    """Write the results files from journal records; returns the flat results.

    The three files are replaced as a set (atomic_write_set): everything is read and checked
    first, so a bad record or a crash before the renames leaves the previous set, not a mix.
    """
    records = list(records)
    results = compat_results(records, names, grouping)
    spectra, shapes, numerical = kept_spectra(records, results, paths, names)
    atomic_write_set(
        {
            paths.results: orjson.dumps(results, option=orjson.OPT_INDENT_2),
            paths.sorted: orjson.dumps(sorted_by_type(results), option=orjson.OPT_INDENT_2),
            paths.spectra: spectra_bytes(spectra, shapes, numerical),
        }
    )
    return results


def write_spectra_file(
    records, results: dict[str, dict], paths: ResultPaths, names: str = DEFAULT_NAMES
) -> int:
    """`<base>_spectra.safetensors`: the values of every results key the spectra log holds (a
    journal from before spectra were kept has none for its modules). Returns how many."""
    spectra, shapes, numerical = kept_spectra(records, results, paths, names)
    write_spectra(paths.spectra, spectra, shapes, numerical)
    return len(spectra)


def kept_spectra(
    records, results: dict[str, dict], paths: ResultPaths, names: str = DEFAULT_NAMES
) -> tuple[dict, dict, dict[str, tuple[int, int]]]:
    """({key: values}, {key: (m, n)}) of every results key whose values the spectra log holds, and
    {key: (numerical rank, min(m, n))} of every results key whose record has one."""
    spectra, shapes = {}, {}
    numerical: dict[str, tuple[int, int]] = {}
    decided: set[str] = set()  # a key's first finished record is its result (compat_results)
    for rec in records:
        key = result_key(rec, names)
        if key not in results or key in decided or not ranks(rec):
            continue
        decided.add(key)
        known = numerical_rank_of(rec)
        if known is not None:
            numerical[key] = known
        values = spectrum_of(paths.journal.parent, rec)  # None for a damaged line or block
        if values is not None:
            spectra[key], shapes[key] = values, (rec["shape"][0], rec["shape"][1])
    return spectra, shapes, numerical


def rebuild_results(
    journal_path: str | os.PathLike, names: str = DEFAULT_NAMES, grouping: str = DEFAULT_GROUPING
) -> tuple[ResultPaths, dict[str, dict], list[tuple[str, str]]]:
    """Write both results files again from a journal, e.g. while a scan runs or after a crash.

    Returns (paths, results, failed) with failed = [(key, reason)] of modules journaled as failed.
    Safe beside a live scan: it reads whole lines only, and the files are replaced atomically.
    The rank journals of a multi-rank scan beside it are merged in (a rank journal given stands
    for its main journal).
    """
    paths = ResultPaths.for_journal(main_journal_of(Path(journal_path)))
    ranks = rank_journals(paths.journal)
    if not paths.journal.is_file() and not ranks:
        raise SpectrumError(f"{paths.journal}: no such journal")
    if paths.journal.is_file():
        header, _, _ = read_journal(paths.journal)  # not a journal: refused, as ever
        if header is None and not ranks:
            raise SpectrumError(f"{paths.journal}: the journal is empty")
    if not paths.results.name.startswith(RESULTS_PREFIX):
        raise WouldOverwrite(
            f"{printable(str(journal_path))}: not a scan's journal (its name does not start with "
            f"{RESULTS_PREFIX}); rebuild writes only {RESULTS_PREFIX}* files beside it"
        )
    records = read_all(paths.journal)  # the main journal and the rank journals of its scan
    failed = [(k, str(r.get("reason"))) for k, r in records.items() if r.get("status") != "ok"]
    return paths, write_results(records.values(), paths, names, grouping), failed
