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
        try:
            self._fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise SpectrumError(f"{self.path}: cannot open ({exc.strerror or exc})") from None

    def append(self, values: np.ndarray) -> list[int]:
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
        return [self.path.name, offset, len(data) // 4, zlib.crc32(data)]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_spectrum(folder: Path, ref) -> np.ndarray | None:
    """The values a journal line points to (its log file in `folder`), or None when they are
    missing or do not match."""
    try:
        name, offset, count, crc = ref
        offset, count, crc = int(offset), int(count), int(crc)
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(SUFFIX):
            return None
        with open(Path(folder) / name, "rb") as f:
            f.seek(offset)
            data = f.read(4 * count)
    except (OSError, TypeError, ValueError):
        return None
    if count < 0 or len(data) != 4 * count or zlib.crc32(data) != crc:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


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
