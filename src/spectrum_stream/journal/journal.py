"""The scan journal: one JSON line per finished module, fsync'd, so a scan can die and resume.

Line 1 is a header naming the checkpoint (shard names, sizes, header hashes) and the settings that
change results; a resume against anything else is refused with a message that says what differs.
Every later line is one module's record, written with one `write` and fsync'd before the scan moves
on. A torn last line (power cut, disk full) is dropped on the next open and that module is redone;
a garbled line in the middle is skipped, never the lines after it.

Writes go through an unbuffered file descriptor opened with O_APPEND: no library buffer can hold a
half line that reaches the disk later, and a failed write is cut back to the last whole line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson

from ..errors import ResumeError, SpectrumError
from ..source.jsonfile import (
    JsonFileError,
    SchemaMismatch,
    anything,
    integer,
    list_of,
    mapping,
    number,
    obj,
    parse_json,
    string,
)

JOURNAL_VERSION = 1
JOURNAL_SUFFIX = ".journal.jsonl"
MAX_LINE_BYTES = 64 * 1024**2  # one module's line, spectra included; a longer one is garbage
HEADER_SCHEMA = obj(
    {"journal": integer(), "checkpoint": list_of(obj({"shard": string}))},
    {"settings": mapping(anything)},
)
RECORD_SCHEMA = obj({"key": string, "status": string})
OK_RECORD_SCHEMA = obj({"key": string, "type": string, "snr": number})


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write may be partial); tests replace this."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(folder: Path) -> None:
    """Make a new or renamed entry in `folder` durable (best effort: not every OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_difference(old: dict, new: dict) -> str:
    """One phrase saying what differs between two journal headers."""
    if old.get("journal") != new.get("journal"):
        return (
            f"it is journal format {old.get('journal')!r}, "
            f"this version writes {new.get('journal')!r}"
        )
    if old.get("checkpoint") != new.get("checkpoint"):
        try:
            before = {s["shard"]: s for s in old.get("checkpoint") or []}
        except (TypeError, KeyError):
            before = {}
        after = {s["shard"]: s for s in new.get("checkpoint", [])}
        for shard in sorted(set(before) | set(after)):
            if shard not in after:
                return f"the checkpoint no longer has shard {shard}"
            if shard not in before:
                return f"the checkpoint has a new shard {shard}"
            a, b = before[shard], after[shard]
            if a.get("size") != b.get("size"):
                return f"shard {shard} was {a.get('size')} bytes, now {b.get('size')}"
            if a != b:
                return f"the header of shard {shard} changed"
        return "the checkpoint differs"
    old_settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    new_settings = new.get("settings", {})
    for key in sorted(set(old_settings) | set(new_settings)):
        a, b = old_settings.get(key), new_settings.get(key)
        if a != b:
            show = lambda v: "not set" if v is None else repr(v)
            return f"--{key} was {show(a)}, now {show(b)}"
    return "the journal header differs"


def _fail_write(path: Path, exc: OSError) -> SpectrumError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk is full" if full else (exc.strerror or str(exc))
    return SpectrumError(
        f"{path}: cannot write the journal ({what}); every module before this one is kept, "
        "fix this and run the same command again to resume"
    )


class Journal:
    """Append-only record of finished (and failed) modules, keyed by result key."""

    def __init__(self, path: Path, header: dict, records: dict[str, dict], fd: int, size: int):
        self.path = path
        self.header = header
        self.records = records
        self._fd = fd
        self._size = size  # bytes of whole lines on disk

    @classmethod
    def open(cls, path: Path, header: dict, fresh: bool = False) -> Journal:
        """Start a journal, or resume one written with the same header (else ResumeError)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # through JSON and back, so that it compares equal to what a later run reads from disk
        header = orjson.loads(orjson.dumps({"journal": JOURNAL_VERSION, **header}))
        if path.exists() and not fresh:
            old_header, records, good_len = read_journal(path)
            if old_header is not None:
                if old_header != header:
                    raise ResumeError(
                        f"{path}: cannot resume, {_describe_difference(old_header, header)}; "
                        "run again with --fresh to start over"
                    )
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    if os.fstat(fd).st_size != good_len:
                        os.ftruncate(fd, good_len)  # drop a torn last line
                        _fsync(fd)
                except OSError as exc:
                    os.close(fd)
                    raise _fail_write(path, exc) from None
                return cls(path, header, records, fd, good_len)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o666)
        journal = cls(path, header, {}, fd, 0)
        try:
            journal._write(header)
        except BaseException:
            journal.close()
            raise
        fsync_dir(path.parent)
        return journal

    def _write(self, doc: dict | None, lines: bytes | None = None) -> None:
        line = orjson.dumps(doc) + b"\n" if lines is None else lines
        try:
            write_all(self._fd, line)
            _fsync(self._fd)
        except BaseException as exc:  # OSError, or Ctrl-C mid-write: end on a whole line
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # a reader drops a torn last line anyway
            if isinstance(exc, OSError):
                raise _fail_write(self.path, exc) from None
            raise
        self._size += len(line)

    def append(self, record: dict) -> None:
        """Record one finished (or failed) module durably."""
        self._write(record)
        self.records[record["key"]] = record

    def extend(self, records: list[dict]) -> None:
        """Record many modules with one write and one fsync (merging other journals in)."""
        if records:
            self._write(None, b"".join(orjson.dumps(r) + b"\n" for r in records))
            for rec in records:
                self.records[rec["key"]] = rec

    def finished(self) -> set[str]:
        """Keys of modules whose SNR is journaled; failed modules are not finished (retried)."""
        return finished_keys(self.records)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_journal(path: Path) -> tuple[dict | None, dict[str, dict], int]:
    """(header, records by key, length of the whole-line prefix) of a journal file.

    The header is None for an empty file or one whose first line never finished. A file whose
    first whole line is not a journal header raises ResumeError: it is not ours to overwrite.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpectrumError(f"{path}: cannot read the journal ({exc.strerror or exc})") from None
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
    header = None
    records: dict[str, dict] = {}
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if lineno == 1:
            try:
                header = parse_json(line, path, "a journal header", HEADER_SCHEMA, MAX_LINE_BYTES)
            except JsonFileError as exc:
                raise ResumeError(
                    f"{path}: not a spectrum-stream journal (line 1: {exc.why}); "
                    "move it away, or scan with --fresh to replace it"
                ) from None
            continue
        try:
            doc = parse_json(line, path, "a journal line", RECORD_SCHEMA, MAX_LINE_BYTES)
            if doc["status"] == "ok":
                OK_RECORD_SCHEMA(doc, "")
        except (JsonFileError, SchemaMismatch):
            continue  # a garbled line (disk corruption): its module is simply redone
        records[doc["key"]] = doc
    return header, records, end


def finished_keys(records: dict[str, dict]) -> set[str]:
    """Keys of the records whose module is done (status ok); failed ones are tried again."""
    return {key for key, rec in records.items() if rec.get("status") == "ok"}
