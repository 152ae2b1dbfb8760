"""One scan at a time per results location: an exclusive lock that dies with its process.

Not filelock's FileLock: a second scan should be told *which* process holds the results (its pid),
and filelock's flock-based lock records no holder (only its soft, marker-file fallback does, and
that one is not released when the process is killed). So this is fcntl.flock on the lock file,
with the holder's pid written into it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import SpectrumError
from ..source.safe_files import open_fd


class ScanLock:
    """An exclusive lock on a results location; the kernel drops it when its process dies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = -1

    def __enter__(self) -> ScanLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # a FIFO or a link out of the folder is refused, never waited on
            fd = open_fd(self.path, os.O_RDWR | os.O_CREAT, self.path.parent, "a lock file")
        except OSError as exc:
            raise SpectrumError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                pid = os.pread(fd, 32, 0).decode().strip()
                holder = f" (pid {int(pid)})" if pid else ""
            except (OSError, ValueError):
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpectrumError(
                    f"{self.path}: another scan{holder} is writing these results; wait for it to "
                    "finish, or use another --out-dir or --name"
                ) from None
            raise SpectrumError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
        try:  # the holder's pid, for the message a second scan prints
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing drops the lock too
            raise SpectrumError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
