"""Quantized weights in the plan: FP8 with 128x128 block scales, MXFP4 blocks with their scales.

Scale tensors are read with their weight (as the job's aux tensors), never scanned themselves.
"""

from __future__ import annotations

from ..source.checkpoint import Checkpoint
from ..source.dtypes import FP8_DTYPES
from ..source.quant_formats import MXFP4_GROUP, fp8_scale_shape
from .experts import fused_3d, fused_jobs
from .naming import module_name, module_type
from .specs import MatrixSpec, TensorJob, TensorRef, layout_error

SCALE_INV_SUFFIX = "_scale_inv"
BLOCKS_SUFFIX, SCALES_SUFFIX = "_blocks", "_scales"
_SCALE_DTYPES = frozenset({"F32", "BF16", "F16", "F64"})
_MX_SCALE_DTYPES = frozenset({"U8", "F8_E8M0"})


def ref(ckpt: Checkpoint, name: str) -> TensorRef:
    shard, entry = ckpt.tensors[name]
    return TensorRef(name, shard, entry)


def is_companion(name: str, tensors: dict) -> bool:
    """Scale tensors (`_scale_inv`, MXFP4 `_scales`) are read with their weight, never scanned."""
    if name.endswith(SCALE_INV_SUFFIX):
        return True
    return name.endswith(SCALES_SUFFIX) and name[: -len(SCALES_SUFFIX)] + BLOCKS_SUFFIX in tensors


def is_mxfp4_blocks(name: str, dtype: str, shape: tuple[int, ...]) -> bool:
    return (
        name.endswith(BLOCKS_SUFFIX)
        and dtype == "U8"
        and len(shape) >= 3
        and shape[-1] == MXFP4_GROUP // 2
    )


def mxfp4_jobs(ckpt: Checkpoint, name: str) -> list[TensorJob]:
    """gpt-oss `X_blocks` U8 [E, R, G, 16] + `X_scales` [E, R, G] -> [E, R, G*32] per expert."""
    blocks = ref(ckpt, name)
    shape = blocks.entry.shape
    param = name[: -len(BLOCKS_SUFFIX)]
    scales_name = param + SCALES_SUFFIX
    if scales_name not in ckpt.tensors:
        raise layout_error(name, shape, f"MXFP4 blocks without their scales {scales_name!r}")
    scales = ref(ckpt, scales_name)
    if scales.entry.dtype not in _MX_SCALE_DTYPES or scales.entry.shape != shape[:-1]:
        raise layout_error(
            name,
            shape,
            f"MXFP4 scales {scales_name!r} must be U8 of shape "
            f"{list(shape[:-1])}, got {scales.entry.dtype} {list(scales.entry.shape)}",
        )
    decoded = (*shape[:-2], shape[-2] * MXFP4_GROUP)
    if len(decoded) == 2:  # one matrix, not a stack of experts
        key = module_name(param)
        return [
            TensorJob(blocks, (MatrixSpec(key, module_type(key), decoded),), "mxfp4", (scales,))
        ]
    if len(decoded) != 3:
        raise layout_error(name, shape, "MXFP4 blocks must be [E, R, G, 16] or [R, G, 16]")
    fused = fused_3d(name, param, decoded, ckpt, mxfp4=True)
    return fused_jobs(blocks, (scales,), "mxfp4", fused, chunkable=True)


def fp8_scale(ckpt: Checkpoint, name: str) -> TensorRef | None:
    """The `_scale_inv` sibling of an FP8 weight, checked; None when the weight has none."""
    shard, entry = ckpt.tensors[name]
    sibling = name + SCALE_INV_SUFFIX
    if entry.dtype not in FP8_DTYPES or sibling not in ckpt.tensors or len(entry.shape) < 2:
        return None
    scale = ref(ckpt, sibling)
    want = fp8_scale_shape(entry.shape)
    if scale.entry.dtype not in _SCALE_DTYPES or scale.entry.shape != want:
        raise layout_error(
            name,
            entry.shape,
            f"FP8 block scales {sibling!r} must be a float tensor of "
            f"shape {list(want)} (128x128 blocks), got {scale.entry.dtype} "
            f"{list(scale.entry.shape)}",
        )
    return scale
