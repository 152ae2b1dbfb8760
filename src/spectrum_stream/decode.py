"""From a job's raw tensors to one float32 tensor on the device (dequantizing where needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .layout import TensorJob
from .loader import read_raw, to_float32


def decode_plain(job: TensorJob, path_of: Callable[[str], Path], device: torch.device) -> torch.Tensor:
    raw = read_raw(path_of(job.main.shard), job.main.entry)
    return to_float32(raw, device)


DECODERS: dict[str, Callable[[TensorJob, Callable[[str], Path], torch.device], torch.Tensor]] = {
    "plain": decode_plain,
}


def decode(job: TensorJob, path_of: Callable[[str], Path], device: torch.device) -> torch.Tensor:
    """The job's main tensor as float32 on `device`, ready for `decoded[spec.index]`."""
    return DECODERS[job.decode](job, path_of, device)
