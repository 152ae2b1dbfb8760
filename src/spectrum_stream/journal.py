"""The scan journal: one JSON line per finished module, fsync'd, so a scan can die and resume.

Line 1 is a header naming the checkpoint (shard names, sizes, header hashes) and the settings that
change results; a resume against anything else is refused. A torn last line is dropped.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import orjson

from .errors import ResumeError, SpectrumError

JOURNAL_VERSION = 1


def _describe_difference(old: dict, new: dict) -> str:
    """One phrase saying what differs between two journal headers."""
    if old.get("checkpoint") != new.get("checkpoint"):
        before = {s["shard"]: s for s in old.get("checkpoint", [])}
        after = {s["shard"]: s for s in new.get("checkpoint", [])}
        for shard in sorted(set(before) | set(after)):
            if shard not in after:
                return f"the checkpoint no longer has shard {shard}"
            if shard not in before:
                return f"the checkpoint has a new shard {shard}"
            if before[shard] != after[shard]:
                return f"shard {shard} changed (size or header differ)"
        return "the checkpoint differs"
    for key in sorted(set(old.get("settings", {})) | set(new.get("settings", {}))):
        a, b = old.get("settings", {}).get(key), new.get("settings", {}).get(key)
        if a != b:
            return f"setting {key} was {a!r}, now {b!r}"
    return "the journal header differs"


class Journal:
    """Append-only record of finished modules, keyed by result key."""

    def __init__(self, path: Path, header: dict, records: dict[str, dict], handle):
        self.path = path
        self.header = header
        self.records = records
        self._f = handle

    @classmethod
    def open(cls, path: Path, header: dict, fresh: bool = False) -> "Journal":
        """Start a journal, or resume one written with the same header (else ResumeError)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"journal": JOURNAL_VERSION, **header}
        records: dict[str, dict] = {}
        if path.exists() and not fresh:
            old_header, records, good_len = read_journal(path)
            if old_header is not None:
                if old_header != header:
                    raise ResumeError(
                        f"{path}: cannot resume, {_describe_difference(old_header, header)}; "
                        "run again with --fresh to start over"
                    )
                f = open(path, "r+b")
                f.truncate(good_len)  # drop a torn last line
                f.seek(good_len)
                return cls(path, header, records, f)
        f = open(path, "w+b")
        journal = cls(path, header, {}, f)
        journal._write(header)
        return journal

    def _write(self, doc: dict) -> None:
        line = orjson.dumps(doc) + b"\n"
        start = self._f.tell()
        try:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            try:  # leave the journal ending on a whole line
                self._f.truncate(start)
                self._f.seek(start)
            except OSError:
                pass
            what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise SpectrumError(f"{self.path}: cannot write the journal ({what})") from None

    def append(self, record: dict) -> None:
        """Record one finished (or failed) module durably."""
        self._write(record)
        self.records[record["key"]] = record

    def close(self) -> None:
        self._f.close()


def read_journal(path: Path) -> tuple[dict | None, dict[str, dict], int]:
    """(header, records by key, length of the whole-line prefix) of a journal file."""
    data = path.read_bytes()
    header = None
    records: dict[str, dict] = {}
    good = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # torn last line: no newline
        try:
            doc = orjson.loads(data[pos:nl])
        except orjson.JSONDecodeError:
            break  # torn or garbled: everything from here is redone
        if header is None:
            header = doc
        elif isinstance(doc, dict) and "key" in doc:
            records[doc["key"]] = doc
        pos = good = nl + 1
    return header, records, good


class ScanLock:
    """An exclusive lock on a results location; the kernel drops it when its process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    def __enter__(self) -> "ScanLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise SpectrumError(
                f"{self.path}: another scan is writing these results; wait for it or use --out-dir"
            ) from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"{os.getpid()}\n")
        self._f.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()
