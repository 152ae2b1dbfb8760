"""Every file the tool opens is a regular file inside its folder: one place that checks it.

Why: a config.json that links to /proc/kmsg blocks the read for ever (and we may run as root); a
spectra log that is a FIFO blocks a resume, and the first SIGTERM cannot interrupt the open; an
index that links out of the checkpoint folder makes the scan read a file the user never gave it.
So each reader and writer opens through here (docs/robustness.md, "Files"):
- the path must resolve (symlinks followed) inside `folder`, when a folder is given; the one
  exception is a Hugging Face cache snapshot, whose files link to the repo's own `blobs/`;
- it is opened with O_NONBLOCK, so opening a FIFO or a device never waits, and then refused
  unless fstat says it is a regular file; O_NONBLOCK is taken off again before any read;
- a name holding NUL is a SpectrumError, never Python's plain ValueError.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import UnsafeFileError
from ..printable import printable

_KIND = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, what in _KIND:
        if test(mode):
            return what
    return "not a regular file"


def _shown(path: Path | str) -> str:
    return printable(str(path))


def check_name(path: Path | str) -> Path:
    """`path` as a Path; UnsafeFileError (not ValueError) for a name holding NUL."""
    if "\x00" in str(path):
        raise UnsafeFileError(f"{_shown(path)}: a file name holding NUL; refused")
    return Path(path)


def in_hf_snapshot(folder: Path, real: Path) -> bool:
    """Whether `real` is a blob of the Hugging Face cache repo whose snapshot `folder` is."""
    snapshot = folder.parent
    return (
        snapshot.name == "snapshots"
        and snapshot.parent.name.startswith(("models--", "datasets--"))
        and real.is_relative_to(snapshot.parent / "blobs")
    )


def check_inside(path: Path, folder: Path, what: str = "a file") -> Path:
    """`path`, refused (UnsafeFileError) when it resolves outside `folder` (symlinks followed),
    except a Hugging Face cache snapshot's links into its own blobs."""
    path, folder = check_name(path), check_name(folder)
    try:
        real, inside = path.resolve(), folder.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafeFileError(f"{_shown(path)}: cannot resolve ({exc})") from None
    if real.is_relative_to(inside) or in_hf_snapshot(inside, real):
        return path
    raise UnsafeFileError(
        f"{_shown(path)}: a symlink to {_shown(real)}, outside {_shown(folder)}; refused as "
        f"{what} (copy the file into the folder)"
    )


def _open(path: Path, flags: int, what: str, mode: int = 0o666) -> int:
    """os.open without waiting (an OSError of its own when it fails), then the kind checked."""
    try:  # a FIFO opened for writing without a reader fails with ENXIO: say what it is instead
        mode_before = os.stat(path).st_mode
    except OSError:
        mode_before = None
    if mode_before is not None and not stat.S_ISREG(mode_before):
        raise UnsafeFileError(
            f"{_shown(path)}: {kind_of(mode_before)}, not a regular file; refused as {what}"
        )
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(
                f"{_shown(path)}: {kind_of(st.st_mode)}, not a regular file; refused as {what}"
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_fd(
    path: Path | str,
    flags: int,
    folder: Path | None = None,
    what: str = "a file",
    mode: int = 0o666,
) -> int:
    """An fd of `path` opened with `flags` (read or write), refused (UnsafeFileError) unless it
    is a regular file (inside `folder` when given); OSError when it cannot be opened. The caller
    closes it. `what` says what the file is for, in messages ("a journal")."""
    path = check_name(path)
    if folder is not None:
        check_inside(path, folder, what)
    return _open(path, flags, what, mode)


@contextlib.contextmanager
def open_regular(path: Path | str, folder: Path | None = None, what: str = "a file") -> Iterator:
    """`open(path, "rb")` for a regular file only (inside `folder` when given)."""
    fd = open_fd(path, os.O_RDONLY, folder, what)
    with os.fdopen(fd, "rb") as f:
        yield f


def read_regular(
    path: Path | str, folder: Path | None = None, what: str = "a file", max_bytes: int | None = None
) -> bytes:
    """The bytes of a regular file (inside `folder` when given); UnsafeFileError when it is too
    big (checked before reading) or cannot be read."""
    try:
        return _read(path, folder, what, max_bytes)
    except UnsafeFileError:
        raise
    except OSError as exc:
        raise UnsafeFileError(f"{_shown(path)}: cannot read ({exc.strerror or exc})") from None


def _read(path: Path | str, folder: Path | None, what: str, max_bytes: int | None) -> bytes:
    with open_regular(path, folder, what) as f:
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise UnsafeFileError(
                f"{_shown(path)}: {size} bytes, more than the {max_bytes} this tool reads "
                f"for {what}"
            )
        return f.read() if max_bytes is None else f.read(max_bytes + 1)


def is_regular(path: Path | str) -> bool:
    """Whether `path` exists as a regular file, by lstat-free stat (symlinks followed), without
    opening it (so a FIFO never blocks)."""
    try:
        return stat.S_ISREG(os.stat(check_name(path)).st_mode)
    except OSError:
        return False


def exists(path: Path | str) -> bool:
    """Whether anything (a file, a link, a FIFO, a dangling link) is at `path`."""
    try:
        os.lstat(check_name(path))
    except OSError:
        return False
    return True
