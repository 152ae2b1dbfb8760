"""The trainer's parameter view of a checkpoint: which tensors a training run holds, with what shapes.

Memory is counted per parameter as the trainer sees it, not per tensor on disk: quantization scales
are not parameters, quantized weights train at their decoded size, and transformers >= 5 loads
per-expert MoE checkpoints into one fused parameter per projection and layer. A view is any function
`Checkpoint -> list[Param]`; `stored_view` (the tensors as stored) is the default and `fused_view`
is what transformers 5 loads for per-expert layouts. See docs/planner.md, "Parameter views".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from ..source.checkpoint import Checkpoint
from ..source.dtypes import DTYPE_BITS, FLOAT_DTYPES
from ..plan.config import config_int
from ..plan.quantized import BLOCKS_SUFFIX, SCALES_SUFFIX, is_companion

MXFP4_BYTES = 0.5 + 1 / 32  # two FP4 codes per byte, one scale byte per 32 values

_DBRX_EXPERTS = re.compile(r"(^|\.)experts\.mlp\.(w1|v1|w2)$")
_EXPERTS_PART = re.compile(r"(^|\.)experts(\.|$)")
_PER_EXPERT = re.compile(
    r"^(?P<pre>.+)\.(?P<moe>block_sparse_moe|mlp)\.experts\.(?P<e>\d+)\."
    r"(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
# saved in checkpoints but registered by transformers as buffers, never trained
_BUFFERS = re.compile(r"(^|\.)e_score_correction_bias$")
_GATE, _UP, _DOWN = ("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")


@dataclass(frozen=True)
class Param:
    """One parameter: its name as the trainer sees it, its (decoded) shape, and its stored size.

    `experts`: how many experts dim 0 holds (1 for an ordinary matrix): LoRA counts per expert.
    """

    name: str
    shape: tuple[int, ...]
    dtype_bytes: float  # bytes per element on disk (0.53 for MXFP4, 1 for FP8)
    is_float: bool
    experts: int = 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Length of dim 0, what an axolotl row range indexes (1 for a scalar)."""
        return self.shape[0] if self.shape else 1


View = Callable[[Checkpoint], list[Param]]


def _experts_of(name: str, shape: tuple[int, ...], config: dict) -> int:
    if len(shape) == 2 and _DBRX_EXPERTS.search(name):
        return config_int(config, "ffn_config", "moe_num_experts") or 1
    if len(shape) == 3 and _EXPERTS_PART.search(name):
        return shape[0]
    return 1


def stored_view(ckpt: Checkpoint) -> list[Param]:
    """Every tensor as stored, except: FP8 `_scale_inv` and MXFP4 `_scales` are not parameters,
    and MXFP4 `X_blocks` [.., R, G, 16] is the parameter `X` [.., R, G * 32] (its decoded size)."""
    out = []
    for name, (_, entry) in ckpt.tensors.items():
        if is_companion(name, ckpt.tensors):
            continue
        shape, dtype = tuple(entry.shape), entry.dtype
        if name.endswith(BLOCKS_SUFFIX) and name[: -len(BLOCKS_SUFFIX)] + SCALES_SUFFIX in ckpt.tensors \
                and dtype == "U8" and len(shape) >= 3:
            name, shape = name[: -len(BLOCKS_SUFFIX)], (*shape[:-2], shape[-2] * shape[-1] * 2)
            out.append(Param(name, shape, MXFP4_BYTES, True, _experts_of(name, shape, ckpt.config)))
            continue
        out.append(Param(name, shape, DTYPE_BITS[dtype] / 8, dtype in FLOAT_DTYPES,
                         _experts_of(name, shape, ckpt.config)))
    return out


def _fuse(pre: str, members: dict[tuple[int, str], Param]) -> list[Param] | None:
    """`pre.mlp.experts.gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I] from per-expert
    matrices, or None when the experts are not a complete, same-shaped set 0..E-1."""
    experts = sorted({e for e, _ in members})
    if experts != list(range(len(experts))):
        return None

    def pick(e: int, names: tuple[str, str]) -> Param | None:
        return next((members[(e, n)] for n in names if (e, n) in members), None)

    gate, up, down = ([pick(e, names) for e in experts] for names in (_GATE, _UP, _DOWN))
    for group in (gate, up, down):
        if any(p is None or p.shape != group[0].shape or len(p.shape) != 2 for p in group):
            return None
    if gate[0].shape != up[0].shape or 3 * len(experts) != len(members):
        return None
    n, (i, h) = len(experts), gate[0].shape
    base = f"{pre}.mlp.experts."
    return [Param(base + "gate_up_proj", (n, 2 * i, h), gate[0].dtype_bytes, gate[0].is_float, n),
            Param(base + "down_proj", (n, *down[0].shape), down[0].dtype_bytes, down[0].is_float, n)]


def fused_view(ckpt: Checkpoint) -> list[Param]:
    """What transformers >= 5 loads: per-expert `experts.N.{w1,w3,w2}` (Mixtral) or
    `experts.N.{gate,up,down}_proj` (Qwen2/Qwen3-MoE, DeepSeek) become one `experts.gate_up_proj`
    [E, 2I, H] (gate rows first, then up) and one `experts.down_proj` [E, H, I] per layer, placed
    where the first expert tensor was; Mixtral's `.block_sparse_moe.` is renamed `.mlp.`. A set of
    experts that is incomplete or irregular is left per-expert. DeepSeek's router
    `e_score_correction_bias` is a buffer there, not a parameter, and is left out."""
    params = [p for p in stored_view(ckpt) if not _BUFFERS.search(p.name)]
    groups: dict[str, dict[tuple[int, str], Param]] = {}
    for p in params:
        m = _PER_EXPERT.match(p.name)
        if m:
            groups.setdefault(m["pre"], {})[(int(m["e"]), m["proj"])] = p
    fused = {pre: _fuse(pre, members) for pre, members in groups.items()}
    out: list[Param] = []
    for p in params:
        m = _PER_EXPERT.match(p.name)
        if m and fused[m["pre"]] is not None:
            if (int(m["e"]), m["proj"]) == min(groups[m["pre"]]):
                out.extend(fused[m["pre"]])
            continue
        if ".block_sparse_moe." in p.name:
            p = Param(p.name.replace(".block_sparse_moe.", ".mlp."), p.shape, p.dtype_bytes,
                      p.is_float, p.experts)
        out.append(p)
    return out


fused_view.fused_experts = True  # patterns for this view name fused expert parameters
