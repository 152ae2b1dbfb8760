"""safetensors dtype names: their size on disk and the torch dtype that holds them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where a tensor is made: header and results readers
    import torch  # (report, select, metrics, plan) need none

# bits per element on disk
DTYPE_BITS: dict[str, int] = {
    "F64": 64,
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "I64": 64,
    "I32": 32,
    "I16": 16,
    "I8": 8,
    "U64": 64,
    "U32": 32,
    "U16": 16,
    "U8": 8,
    "BOOL": 8,
}

_TORCH_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",  # AMD checkpoints
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}

# FP8 dtypes: weights that may come with block scales
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})
# dtypes whose values are weights we can take a spectrum of (F4 only inside MXFP4 blocks)
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"}) | FP8_DTYPES


def nbytes_for(dtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes a tensor of this dtype and shape takes on disk; None if it cannot be whole bytes."""
    numel = 1
    for d in shape:
        numel *= d
    bits = numel * DTYPE_BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


def torch_dtype(dtype: str) -> torch.dtype | None:
    """The torch dtype for a safetensors dtype, or None when this torch build has none."""
    import torch

    name = _TORCH_NAMES.get(dtype)
    return getattr(torch, name, None) if name else None
