"""The quantized formats' constants as checkpoints store them (docs/spec.md, "Quantized weights").

Facts about the files, shared by the plan (which tensors belong together, what shape they decode
to) and the reader (how bytes become float32).
"""

from __future__ import annotations

import math

FP8_BLOCK = 128  # FP8 block scales cover 128 x 128 blocks

# FP4 e2m1 code -> value (codes 8..15 are the negatives of 0..7)
FP4_E2M1_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
MXFP4_GROUP = 32  # values per scale byte (16 bytes of two codes each)
MXFP4_BIAS = 127


def fp8_scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The `_scale_inv` shape a block-quantized FP8 tensor of this shape needs."""
    return (*shape[:-2], math.ceil(shape[-2] / FP8_BLOCK), math.ceil(shape[-1] / FP8_BLOCK))
