"""Reading one tensor's bytes from disk, memory-mapped, and turning them into float32 on a device.

Only the tensor's own byte range is mapped, and the mapping dies with the tensor, so resident
memory follows the tensor being scanned, not the shard (DESIGN.md section 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dtypes import torch_dtype
from .errors import SpectrumError
from .header import TensorEntry


def read_raw(path: Path, entry: TensorEntry) -> torch.Tensor:
    """The tensor as stored (its own dtype and shape), backed by a private mapping of its bytes."""
    dtype = torch_dtype(entry.dtype)
    if dtype is None:
        raise SpectrumError(
            f"{path}: tensor {entry.name!r} has dtype {entry.dtype}, which torch "
            f"{torch.__version__} cannot hold"
        )
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    try:
        mapped = np.memmap(path, dtype=np.uint8, mode="c", offset=entry.start, shape=(entry.nbytes,))
    except (OSError, ValueError) as exc:
        raise SpectrumError(f"{path}: cannot map tensor {entry.name!r} ({exc})") from None
    return torch.from_numpy(mapped).view(dtype).view(entry.shape)


def to_float32(raw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 copy on `device` (never a view of the mapping, so the file can be let go)."""
    if raw.device == device and raw.dtype == torch.float32:
        return raw.clone()
    return raw.to(device=device, dtype=torch.float32)
