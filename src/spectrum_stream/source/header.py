"""Reading and checking one safetensors file's header, without touching its data.

Every rule of docs/spec.md ("Checkpoint files") is checked here, for local files and for headers
read from the Hub alike, so that later stages can trust offsets and sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, UnsafeFileError
from .dtypes import DTYPE_BITS, nbytes_for
from .safe_files import open_regular

MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap on the header length
MAX_DIM = 2**40  # one tensor dimension; a zero-sized tensor could otherwise claim [10**400, 0]


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: absolute byte range [start, end) in its file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ShardHeader:
    """A checked header: its tensors by name, metadata, and what identifies the file."""

    path: Path
    size: int
    header_sha256: str
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise CheckpointError(f"duplicate tensor name {key!r}")
        seen[key] = value
    return seen


def parse_header(raw: bytes, data_size: int, data_start: int, where: str) -> tuple[dict, dict]:
    """Check a header's JSON against a data buffer of `data_size` bytes; return (entries, metadata).

    Raises CheckpointError naming `where` for every broken rule.
    """

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}")

    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except CheckpointError as exc:
        raise fail(str(exc)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise fail("header is not a JSON object")

    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise fail("__metadata__ must map strings to strings")

    entries: dict[str, TensorEntry] = {}
    for name, info in doc.items():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(f"tensor name {name!r} is not valid Unicode") from None
        if not isinstance(info, dict):
            raise fail(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise fail(f"tensor {name!r}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
        ):
            raise fail(
                f"tensor {name!r}: shape must be a list of non-negative integers of at most "
                f"2**{MAX_DIM.bit_length() - 1} (no real dimension is bigger)"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise fail(f"tensor {name!r}: data_offsets must be two integers 0 <= begin <= end")
        expected = nbytes_for(dtype, tuple(shape))
        if expected is None or expected != offsets[1] - offsets[0]:
            raise fail(
                f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for {dtype} {shape}, "
                f"expected {expected}"
            )
        entries[name] = TensorEntry(
            name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1]
        )

    cursor = data_start
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.end > data_start + data_size:
            raise fail(
                f"tensor {entry.name!r}: its data ends {entry.end - data_start - data_size} bytes "
                "past the end of the file (truncated file)"
            )
        if entry.start < cursor:
            raise fail(f"tensor {entry.name!r}: data overlaps the tensor before it")
        if entry.start > cursor:
            raise fail(
                f"tensor {entry.name!r}: gap of {entry.start - cursor} bytes before its data"
            )
        cursor = entry.end
    if cursor != data_start + data_size:
        raise fail(
            f"data buffer is {data_size} bytes but tensors cover {cursor - data_start} "
            "(truncated or padded file)"
        )
    return entries, metadata


def header_length(prefix: bytes, file_size: int, where: str) -> int:
    """The header length N from a file's first 8 bytes, checked against the cap and the file size.

    The one length-prefix check for local files and for headers read over HTTP.
    """
    if len(prefix) < 8 or file_size < 8:
        raise CheckpointError(f"{where}: file is {file_size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{where}: header length {n} is absurd (safetensors' cap is {MAX_HEADER_BYTES} bytes)"
        )
    if 8 + n > file_size:
        raise CheckpointError(
            f"{where}: header length {n} runs past the end of the {file_size}-byte file"
        )
    return n


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Read and check the header of one .safetensors file."""
    path = Path(path)
    try:
        with open_regular(path, what="a shard") as f:
            size = os.fstat(f.fileno()).st_size
            n = header_length(f.read(8), size, str(path))
            raw = f.read(n)
    except UnsafeFileError as exc:  # a FIFO, a device: a checkpoint problem like any other
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    entries, metadata = parse_header(raw, size - 8 - n, 8 + n, str(path))
    return ShardHeader(path, size, hashlib.sha256(raw).hexdigest(), entries, metadata)
