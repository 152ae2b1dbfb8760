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
    fsync_dir(path.parent)
