"""Every module's singular values, kept as safely as its journal line.

An append-only file beside the journal (`<base>.spectra.bin`, docs/spec.md "The journal") holds
the float32 values back to back. A module's values are written and fsync'd *before* its journal
line, and the line records where they are (`"spectrum": [file, offset, count, crc32]`, the file
named relative to the journal's folder, so that a line folded into another journal, e.g. from a
rank's journal into the main one, still finds its values). So:
- a crash between the two leaves values no line points to: harmless, the module is redone and its
  values are appended again at the end, where the new line points;
- a torn write is never referenced (its line was never written);
- the CRC ties each line to exactly its own bytes: a value block that does not match is refused,
  never attributed to another module.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import SpectrumError
from ..source.header import MAX_DIM
from ..source.safe_files import open_fd, open_regular
from .journal import JOURNAL_SUFFIX, write_all

SUFFIX = ".spectra.bin"


def spectra_log_path(journal: Path) -> Path:
    """The values file that belongs to a journal (`<base>.journal.jsonl` -> `<base>.spectra.bin`)."""
    journal = Path(journal)
    name = journal.name
    base = name.removesuffix(JOURNAL_SUFFIX)
    return journal.with_name(base + SUFFIX)


class SpectraLog:
    """Appends one module's values at a time; read back with `read_spectrum`."""

    def __init__(self, path: Path, fresh: bool = False):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        try:  # a FIFO or a link out of the folder is refused, never waited on
            self._fd = open_fd(self.path, flags, self.path.parent, "a spectra log")
        except OSError as exc:
            raise SpectrumError(f"{self.path}: cannot open ({exc.strerror or exc})") from None

    def append(self, values: np.ndarray) -> list[str | int]:
        """Write the values durably; returns the reference a journal line keeps."""
        data = np.ascontiguousarray(values, dtype="<f4").tobytes()
        offset = os.fstat(self._fd).st_size  # O_APPEND: this write lands here
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            what = exc.strerror or str(exc)
            raise SpectrumError(
                f"{self.path}: cannot write spectra ({what}); every module "
                "before this one is kept, fix this and run again to resume"
            ) from None
        ref: list[str | int] = [self.path.name, offset, len(data) // 4, zlib.crc32(data)]
        return ref

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _plain_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def matrix_k(shape) -> int | None:
    """k = min(m, n) of a journal record's `shape` [m, n] (each 1 .. 2**40), or None when it is
    not such a shape: how many singular values the module has."""
    if (
        isinstance(shape, list)
        and len(shape) == 2
        and all(_plain_int(d) and 0 < d <= MAX_DIM for d in shape)
    ):
        return min(shape)
    return None


def read_spectrum(folder: Path, ref, k: int | None = None) -> np.ndarray | None:
    """The values a journal line points to (its log file in `folder`), or None when they are
    missing or do not match: a count other than `k` (when given), a block past the end of the
    file, a CRC that differs. Every number is checked before anything is allocated or read."""
    try:
        name, offset, count, crc = ref
    except (TypeError, ValueError):
        return None
    if not (isinstance(name, str) and _plain_int(offset) and _plain_int(count) and _plain_int(crc)):
        return None
    if Path(name).name != name or not name.endswith(SUFFIX) or "\x00" in name:
        return None
    if offset < 0 or count < 0 or (k is not None and count != k) or not 0 <= crc < 2**32:
        return None
    try:
        with open_regular(Path(folder) / name, Path(folder), "a spectra log") as f:
            if offset + 4 * count > os.fstat(f.fileno()).st_size:  # before allocating
                return None
            f.seek(offset)
            data = f.read(4 * count)
    except (OSError, SpectrumError):
        return None
    if len(data) != 4 * count or zlib.crc32(data) != crc:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def spectrum_of(folder: Path, record: dict) -> np.ndarray | None:
    """The kept values of a journal record: exactly k = min(m, n) of its recorded shape, or None."""
    k = matrix_k(record.get("shape"))
    if k is None or "spectrum" not in record:
        return None
    return read_spectrum(folder, record["spectrum"], k)


def relocate(records, values_of, log: SpectraLog) -> list[dict]:
    """Copies of `records` whose values (`values_of(record)`, None when lost) now sit in `log`:
    what folding lines into another journal needs, across folders and nodes."""
    out = []
    for rec in records:
        rec = dict(rec)
        values = values_of(rec) if "spectrum" in rec else None
        rec.pop("spectrum", None)
        if values is not None:
            rec["spectrum"] = log.append(values)
        out.append(rec)
    return out
