"""Reading one tensor's bytes from disk, memory-mapped, and turning them into float32 on a device.

Only the tensor's own byte range is mapped, and the mapping dies with the tensor, so resident
memory follows the tensor being scanned, not the shard (docs/spec.md, "Memory").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import ModuleFailed
from ..source.dtypes import torch_dtype
from ..source.header import TensorEntry
from .device import bind_thread, is_cuda
from .staging import StagingPool, copy_through, read_ahead


def read_raw(path: Path, entry: TensorEntry) -> torch.Tensor:
    """The tensor as stored (its own dtype and shape), backed by a private mapping of its bytes."""
    dtype = torch_dtype(entry.dtype)
    if dtype is None:
        raise ModuleFailed(
            f"{path}: tensor {entry.name!r} has dtype {entry.dtype}, which torch "
            f"{torch.__version__} cannot hold"
        )
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    try:
        mapped = np.memmap(
            path, dtype=np.uint8, mode="c", offset=entry.start, shape=(entry.nbytes,)
        )
    except (OSError, ValueError) as exc:
        raise ModuleFailed(f"{path}: cannot map tensor {entry.name!r} ({exc})") from None
    return torch.from_numpy(mapped).view(dtype).view(entry.shape)


def to_device(raw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The raw tensor on `device`, in its own dtype (for dequantizers that work on the device).

    To a GPU the bytes go through the device's few page-locked buffers (read/staging.py), on a
    side stream, so that a copy started by a reading thread overlaps the decomposition running
    on the default stream, and page-locked memory stays bounded.
    """
    if not is_cuda(device):
        return raw.to(device)
    return copy_through(raw, device, staging_pool(device), _copy_stream(device))


def staged_blocks(blocks: Iterable[torch.Tensor], device: torch.device) -> Iterable[torch.Tensor]:
    """Blocks of a matrix streamed to `device`: on a GPU, each read and copied by a thread one
    block ahead of the caller (bound to the device first); on CPU, as they are."""
    if not is_cuda(device):
        return blocks
    return read_ahead(
        (to_device(b, device) for b in blocks), depth=1, init=lambda: bind_thread(device)
    )


def to_float32(raw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 copy on `device` (never a view of the mapping, so the file can be let go)."""
    if is_cuda(device):
        return to_device(raw, device).to(torch.float32)
    if raw.device == device and raw.dtype == torch.float32:
        return raw.clone()
    return raw.to(device=device, dtype=torch.float32)


_COPY_STREAMS: dict = {}
_STAGING: dict = {}
_MADE = threading.Lock()  # the read-ahead and block-reading threads may ask first at once


def staging_pool(device: torch.device) -> StagingPool:
    """The device's bounded pool of page-locked buffers (made on first use, once)."""
    with _MADE:
        if device not in _STAGING:
            _STAGING[device] = StagingPool()
        return _STAGING[device]


def _copy_stream(device: torch.device):
    with _MADE:
        if device not in _COPY_STREAMS:
            _COPY_STREAMS[device] = torch.cuda.Stream(device)
        return _COPY_STREAMS[device]


def block_len(other_dim: int, budget_bytes: int, itemsize: int = 8) -> int:
    """How many rows (or columns) of `other_dim` float64 values fit a block of `budget_bytes`."""
    return max(1, budget_bytes // max(1, other_dim * itemsize))


def iter_row_blocks(path: Path, entry: TensorEntry, rows: int):
    """[r, cols] row blocks of a matrix, each mapped on its own and let go before the next.

    Resident memory stays at one block however large the tensor is (a 152064 x 8192 embedding).
    """
    dtype = torch_dtype(entry.dtype)
    if dtype is None:
        raise ModuleFailed(f"{path}: tensor {entry.name!r}: this torch has no dtype {entry.dtype}")
    n_rows = entry.shape[0]
    row_bytes = entry.nbytes // max(1, n_rows)
    cols = int(np.prod(entry.shape[1:]))
    for r0 in range(0, n_rows, rows):
        r1 = min(n_rows, r0 + rows)
        try:
            part = np.memmap(
                path,
                dtype=np.uint8,
                mode="c",
                offset=entry.start + r0 * row_bytes,
                shape=((r1 - r0) * row_bytes,),
            )
        except (OSError, ValueError) as exc:
            raise ModuleFailed(f"{path}: cannot map tensor {entry.name!r} ({exc})") from None
        yield torch.from_numpy(part).view(dtype).view(r1 - r0, cols)
        del part


def iter_col_blocks(path: Path, entry: TensorEntry, cols: int):
    """[rows, c] column blocks of a wide matrix, read from one mapping of the stored bytes."""
    raw = read_raw(path, entry)
    raw = raw.reshape(entry.shape[0], -1)
    for c0 in range(0, raw.shape[1], cols):
        yield raw[:, c0 : c0 + cols]
