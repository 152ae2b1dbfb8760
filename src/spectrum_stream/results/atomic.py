"""Replacing a file so that readers see the old one or the new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from ..errors import SpectrumError
from ..journal.journal import fsync_dir, write_all


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never half.

    Raises SpectrumError naming `path` when it cannot be written (no space, no permission).
    """
    atomic_write_set({Path(path): data})


def _temp_of(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_write_set(files: dict[Path, bytes]) -> None:
    """Replace several files as one set: every new file is written and fsync'd beside its target
    first, and only then are they renamed into place, one rename each. A failure before the
    renames (a full disk, Ctrl-C) leaves every old file as it was; only a crash within the few
    renames themselves can leave some old and some new."""
    temps: dict[Path, Path] = {}
    path = None
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temps[path] = tmp = _temp_of(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: the umask's
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temps.values():
            with contextlib.suppress(OSError):  # e.g. the parent is a file: no tmp to remove
                tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            what = (
                "the disk is full"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else exc.strerror or str(exc)
            )
            raise SpectrumError(f"{path}: cannot write ({what})") from None
        raise
    for folder in {p.parent for p in files}:
        fsync_dir(folder)
