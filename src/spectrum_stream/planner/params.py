"""The trainer's parameter view of a checkpoint: which tensors a training run holds, with what shapes.

Memory is counted per parameter as the trainer sees it, not per tensor on disk: quantization scales
are not parameters, quantized weights train at their decoded size, and transformers >= 5 loads
per-expert MoE checkpoints into one fused parameter per projection and layer. A view is any function
`Checkpoint -> list[Param]` with a `names` attribute (the `--names` whose results keys name its
parameters): `stored_view` (the tensors as stored, transformers 4) and `trainer_view` (what
transformers 5 loads, from the scan's own renaming). See docs/planner.md, "Parameter views".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..layout.config import config_int
from ..layout.quantized import BLOCKS_SUFFIX, SCALES_SUFFIX, is_companion
from ..layout.trainer_names import TrainerNames
from ..source.checkpoint import Checkpoint
from ..source.dtypes import DTYPE_BITS, FLOAT_DTYPES

MXFP4_BYTES = 0.5 + 1 / 32  # two FP4 codes per byte, one scale byte per 32 values

_DBRX_EXPERTS = re.compile(r"(^|\.)experts\.mlp\.(w1|v1|w2)$")
_EXPERTS_PART = re.compile(r"(^|\.)experts(\.|$)")
# saved in checkpoints but registered by transformers as buffers, never trained
_BUFFERS = re.compile(r"(^|\.)e_score_correction_bias$")


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
        if (
            name.endswith(BLOCKS_SUFFIX)
            and name[: -len(BLOCKS_SUFFIX)] + SCALES_SUFFIX in ckpt.tensors
            and dtype == "U8"
            and len(shape) >= 3
        ):
            name, shape = name[: -len(BLOCKS_SUFFIX)], (*shape[:-2], shape[-2] * shape[-1] * 2)
            out.append(Param(name, shape, MXFP4_BYTES, True, _experts_of(name, shape, ckpt.config)))
            continue
        out.append(
            Param(
                name,
                shape,
                DTYPE_BITS[dtype] / 8,
                dtype in FLOAT_DTYPES,
                _experts_of(name, shape, ckpt.config),
            )
        )
    return out


def trainer_view(ckpt: Checkpoint) -> list[Param]:
    """The model as transformers loads it, named by the scan's own mapping (layout/trainer_names.py),
    so results keys written with `--names trainer` name these parameters.

    A `stack` conversion (per-expert `experts.N.w1` + `w3` -> `experts.gate_up_proj`) becomes one
    parameter [E, sum of the sources' rows, ...] placed where its first member was; a `rows`
    conversion (a fused tensor transposed behind dim 0) keeps the stored shape (same rows, same
    elements); an `opaque` one, or a set of experts that is not a complete same-shaped 0..E-1,
    keeps the stored tensors (the scan keeps checkpoint keys for those too). Tensors that are
    buffers in transformers (DeepSeek's `e_score_correction_bias`) are left out."""
    names = TrainerNames.for_config(ckpt.config)
    params = [p for p in stored_view(ckpt) if not _BUFFERS.search(p.name)]
    mapped = [(p, *names.tensor_name(p.name)) for p in params]
    stacks: dict[str, dict[tuple[int, int], Param]] = {}  # target -> {(source, expert): param}
    for p, target, fuse, expert, source in mapped:
        if fuse is not None and fuse.kind == "stack" and expert is not None and source is not None:
            stacks.setdefault(target, {})[(source, expert)] = p
    fused = {target: _stacked(target, members) for target, members in stacks.items()}
    out: list[Param] = []
    placed: set[str] = set()
    for p, target, fuse, _expert, _ in mapped:
        if fuse is None or fuse.kind == "rows":
            out.append(replace(p, name=target))
        elif (stacked := fused.get(target)) is not None:
            if target not in placed:
                placed.add(target)
                out.append(stacked)
        else:  # opaque, or an irregular set of experts: as stored
            out.append(p)
    return out


def _stacked(target: str, members: dict[tuple[int, int], Param]) -> Param | None:
    """[E, rows of source 0 + rows of source 1 ..., rest] from per-expert matrices, or None when
    each source does not hold the same experts 0..E-1 in one shape."""
    sources = sorted({s for s, _ in members})
    experts = sorted({e for _, e in members})
    if experts != list(range(len(experts))) or len(members) != len(sources) * len(experts):
        return None
    firsts = [members[(s, 0)] for s in sources]
    for (s, _), p in members.items():
        if p.shape != firsts[sources.index(s)].shape or len(p.shape) != 2:
            return None
    if any(f.shape[1:] != firsts[0].shape[1:] for f in firsts):
        return None
    n, first = len(experts), firsts[0]
    rows = sum(f.shape[0] for f in firsts)
    return Param(target, (n, rows, *first.shape[1:]), first.dtype_bytes, first.is_float, n)


# The --names whose results keys name each view's parameters.
VIEW_NAMES: dict[Callable[[Checkpoint], list[Param]], str] = {
    stored_view: "checkpoint",
    trainer_view: "trainer",
}
