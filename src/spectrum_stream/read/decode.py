"""From a job's raw tensors to one float32 tensor on the device (dequantizing where needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..layout.specs import TensorJob, TensorRef
from .loader import read_raw, to_device, to_float32
from .quant import dequant_fp8_block, dequant_mxfp4


def _raw(ref: TensorRef, path_of: Callable[[str], Path], device: torch.device) -> torch.Tensor:
    """The tensor as stored, on `device` (on CPU: still the mapped bytes, not a copy)."""
    return to_device(read_raw(path_of(ref.shard), ref.entry), device)


def decode_plain(
    job: TensorJob, path_of: Callable[[str], Path], device: torch.device
) -> torch.Tensor:
    raw = read_raw(path_of(job.main.shard), job.main.entry)
    return to_float32(raw, device)


def decode_fp8_block(
    job: TensorJob, path_of: Callable[[str], Path], device: torch.device
) -> torch.Tensor:
    """FP8 weight times its 128x128 block `_scale_inv` (job.aux[0])."""
    weight = _raw(job.main, path_of, device)
    scale = _raw(job.aux[0], path_of, device)
    return dequant_fp8_block(weight, scale, job.main.name)


def decode_mxfp4(
    job: TensorJob, path_of: Callable[[str], Path], device: torch.device
) -> torch.Tensor:
    """gpt-oss MXFP4 `_blocks` (job.main) with their `_scales` (job.aux[0])."""
    blocks = _raw(job.main, path_of, device)
    scales = _raw(job.aux[0], path_of, device)
    return dequant_mxfp4(blocks, scales, job.main.name)


DECODERS: dict[str, Callable[[TensorJob, Callable[[str], Path], torch.device], torch.Tensor]] = {
    "plain": decode_plain,
    "fp8_block": decode_fp8_block,
    "mxfp4": decode_mxfp4,
}


def decode(job: TensorJob, path_of: Callable[[str], Path], device: torch.device) -> torch.Tensor:
    """The job's main tensor as float32 on `device`, ready for `decoded[spec.index]`."""
    return DECODERS[job.decode](job, path_of, device)
