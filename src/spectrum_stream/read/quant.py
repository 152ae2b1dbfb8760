"""Dequantizing stored weights to float32 before their SVD (docs/spec.md, "Quantized weights").

Two formats:
- FP8 with block scales (DeepSeek-V3): an F8_E4M3 weight `W` [.., M, N] and its sibling
  `W_scale_inv` [.., ceil(M/128), ceil(N/128)]; W[i, j] = float(Wq[i, j]) * scale_inv[i//128, j//128].
- MXFP4 (gpt-oss): `X_blocks` U8 [.., R, G, 16] and `X_scales` U8 [.., R, G]. Each byte holds two FP4
  (e2m1) codes, low nibble first; a group of 32 values shares one scale byte s meaning 2^(s - 127).
  Decoded shape [.., R, G * 32].

Both are exact in float32: every product of an FP8/FP4 value and its scale is representable (or
overflows to inf, which the scan reports as a failed matrix).
"""

from __future__ import annotations

import torch

from ..errors import ModuleFailed
from ..source.quant_formats import (
    FP4_E2M1_VALUES,
    FP8_BLOCK,
    MXFP4_BIAS,
    MXFP4_GROUP,
    fp8_scale_shape,
)


def dequant_fp8_block(
    weight: torch.Tensor, scale_inv: torch.Tensor, name: str = "tensor"
) -> torch.Tensor:
    """float32 W from an FP8 weight [.., M, N] and its 128x128 block scales (on weight's device)."""
    if weight.dim() < 2 or tuple(scale_inv.shape) != fp8_scale_shape(tuple(weight.shape)):
        raise ModuleFailed(
            f"{name}: FP8 weight of shape {list(weight.shape)} needs a _scale_inv of shape "
            f"{list(fp8_scale_shape(tuple(weight.shape))) if weight.dim() >= 2 else '?'}, "
            f"got {list(scale_inv.shape)}"
        )
    w = weight.to(torch.float32, copy=True)  # never scale the caller's (mapped) tensor in place
    s = scale_inv.to(device=w.device, dtype=torch.float32)
    m, n = w.shape[-2:]
    mb, nb = s.shape[-2:]
    if m % FP8_BLOCK == 0 and n % FP8_BLOCK == 0:
        # whole blocks: broadcast each scale over its block without materialising a full-size copy
        blocks = w.view(*w.shape[:-2], mb, FP8_BLOCK, nb, FP8_BLOCK)
        blocks.mul_(s[..., :, None, :, None])
        return w
    full = s.repeat_interleave(FP8_BLOCK, dim=-2)[..., :m, :]
    full = full.repeat_interleave(FP8_BLOCK, dim=-1)[..., :n]
    return w.mul_(full)


def _pow2_table(device: torch.device) -> torch.Tensor:
    """2^(s - 127) for every scale byte s, exact in float32 (s = 255 overflows to inf)."""
    return torch.tensor([2.0 ** (s - MXFP4_BIAS) for s in range(256)], dtype=torch.float64).to(
        device=device, dtype=torch.float32
    )


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 view of a U8 or F8_E8M0 tensor (the same bytes either way)."""
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def dequant_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """float32 [.., R, G * 32] from MXFP4 `_blocks` [.., R, G, 16] and `_scales` [.., R, G]."""
    if blocks.element_size() != 1 or scales.element_size() != 1:
        raise ModuleFailed(
            f"{name}: MXFP4 blocks and scales must be bytes, got {blocks.dtype} and {scales.dtype}"
        )
    blocks, scales = _as_bytes(blocks), _as_bytes(scales)
    if (
        blocks.dim() < 3
        or blocks.shape[-1] != MXFP4_GROUP // 2
        or scales.shape != blocks.shape[:-1]
    ):
        raise ModuleFailed(
            f"{name}: MXFP4 _blocks {list(blocks.shape)} need shape [.., R, G, 16] and _scales "
            f"[.., R, G]; got _scales {list(scales.shape)}"
        )
    device = blocks.device
    lut = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=device)
    values = torch.empty(
        (*blocks.shape, 2), dtype=torch.float32, device=device
    )  # [.., R, G, 16, 2]
    values[..., 0] = lut[(blocks & 0x0F).to(torch.int64)]  # low nibble first
    values[..., 1] = lut[(blocks >> 4).to(torch.int64)]
    values = values.view(*blocks.shape[:-1], MXFP4_GROUP)  # [.., R, G, 32]
    values.mul_(_pow2_table(device)[scales.to(device=device, dtype=torch.int64)][..., None])
    return values.view(*blocks.shape[:-2], blocks.shape[-2] * MXFP4_GROUP)
