"""Rank journals: under torchrun each rank appends to its own journal beside the main one,
`<base>.rank<R>-of-<W>.journal.jsonl`, so that no two processes write one file.

Every reader (each rank, a later one-process scan, `rebuild`) takes the union of the main journal
and every rank journal it can see; a module done in any of them is done. A one-process scan folds
the rank journals into the main journal (one write, one fsync) and then removes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from ..errors import ResumeError, SpectrumError
from .journal import JOURNAL_SUFFIX as SUFFIX
from .journal import JOURNAL_VERSION, Journal, _describe_difference, finished_keys, read_journal
from .spectra_log import SpectraLog, relocate, spectra_log_path, spectrum_of

_RANK = re.compile(r"\.rank(\d+)-of-(\d+)$")


def _base(main: Path) -> str:
    return Path(main).name.removesuffix(SUFFIX)


def rank_journal(main: Path, rank: int, world: int) -> Path:
    """The journal rank `rank` of `world` appends to, beside the main journal `main`."""
    main = Path(main)
    return main.with_name(f"{_base(main)}.rank{rank}-of-{world}{SUFFIX}")


def rank_lock(lock: Path, rank: int, world: int) -> Path:
    """The lock a rank holds on its own journal."""
    lock = Path(lock)
    return lock.with_name(f"{lock.stem}.rank{rank}-of-{world}{lock.suffix}")


def main_journal_of(path: Path) -> Path:
    """The main journal a rank journal belongs to (`path` itself for a main journal)."""
    path = Path(path)
    base = _base(path)
    m = _RANK.search(base)
    return path.with_name(base[: m.start()] + SUFFIX) if m else path


def rank_journals(main: Path) -> list[Path]:
    """Every rank journal beside `main`, of any world size, in a stable order."""
    main = Path(main)
    base = _base(main)
    if not main.parent.is_dir():
        return []
    found = []
    for path in main.parent.glob(f"{glob_escape(base)}.rank*-of-*{SUFFIX}"):
        m = _RANK.fullmatch(_base(path)[len(base) :])
        if m:
            found.append((int(m.group(2)), int(m.group(1)), path))
    return [p for _, _, p in sorted(found)]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def normal_header(header: dict) -> dict:
    """A header as Journal.open writes it and a reader reads it back."""
    return orjson.loads(orjson.dumps({"journal": JOURNAL_VERSION, **header}))


def merge_records(into: dict[str, dict], records: dict[str, dict]) -> None:
    """Add `records` to `into`; a finished (ok) record wins over a failed one."""
    for key, rec in records.items():
        if key not in into or (rec.get("status") == "ok" and into[key].get("status") != "ok"):
            into[key] = rec


def read_all(main: Path, header: dict | None = None, ranks_only: bool = False) -> dict[str, dict]:
    """Records of the main journal and every rank journal beside it.

    With `header`, a journal written for another checkpoint or other settings is refused
    (ResumeError, like a resume of the main journal); without it, such a journal is ignored.
    """
    want = normal_header(header) if header is not None else None
    strict = want is not None
    records: dict[str, dict] = {}
    paths = rank_journals(main) if ranks_only else [Path(main), *rank_journals(main)]
    for path in paths:
        if not path.is_file():
            continue
        try:
            got, recs, _ = read_journal(path)
        except SpectrumError:
            if strict:
                raise
            continue
        if got is None:
            continue
        if want is not None and got != want:
            raise ResumeError(
                f"{path}: cannot resume, {_describe_difference(got, want)}; "
                "run again with --fresh to start over"
            )
        if want is None:  # the first journal found decides which checkpoint counts
            want = got
        elif got != want:
            continue
        merge_records(records, recs)
    return records


def finished_everywhere(main: Path) -> set[str]:
    """Modules done in the main journal or any rank journal (unreadable ones count as empty)."""
    try:
        records = read_all(main)
    except SpectrumError:
        return set()
    return finished_keys(records)


def missing_from(journal: Journal, records) -> list[dict]:
    """The records `journal` lacks (or holds only as failed), in the order given."""
    out = []
    for rec in records:
        have = journal.records.get(rec["key"])
        if have is None or (rec.get("status") == "ok" and have.get("status") != "ok"):
            out.append(rec)
    return out


def remove_journal(path: Path) -> None:
    """A journal and the spectra log beside it."""
    Path(path).unlink(missing_ok=True)
    spectra_log_path(path).unlink(missing_ok=True)


def fold_rank_journals(journal: Journal, fresh: bool = False) -> int:
    """One process: copy every rank journal's records into the main `journal` (their singular
    values into its spectra log), then remove the rank journals (with `fresh`, only remove them).
    Returns the number of records copied."""
    paths = rank_journals(journal.path)
    copied = 0
    if not fresh and paths:
        records = read_all(journal.path, journal.header, ranks_only=True)
        new = missing_from(journal, records.values())
        folder = journal.path.parent
        log = SpectraLog(spectra_log_path(journal.path))
        try:
            journal.extend(relocate(new, lambda rec: spectrum_of(folder, rec), log))
        finally:
            log.close()
        copied = len(new)
    for path in paths:
        remove_journal(path)
    return copied
