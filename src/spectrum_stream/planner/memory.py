"""Training memory per GPU for full fine-tuning, Spectrum, LoRA and QLoRA, sharded as ZeRO-3/FSDP.

Bytes per element (mixed precision): weights 2 (bf16), gradients 2 (bf16), fp32 master weights 4
and optimizer moments 8 (AdamW) or 2 (8-bit AdamW). Gradients, master weights and moments exist
for every element of every tensor that receives a gradient: torch allocates `.grad` and AdamW's
`zeros_like(param)` moments for the whole tensor, even when a hook zeroes some rows. Sharding over
N GPUs divides weights, gradients, master weights and moments by N; each GPU also gathers the
largest unit (a decoder layer, or everything outside the layers) to compute with. Constants and
formulas: docs/planner.md, "Memory".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .params import Param
from .trainable import Trained, lora_params, lora_targets

WEIGHT_BYTES = 2  # bf16 weights, also of quantized checkpoints (FP8, MXFP4 train decoded)
GRAD_BYTES = 2  # bf16 gradients
MASTER_BYTES = 4  # fp32 master copy of every gradient-receiving element
OPTIMIZER_BYTES = {"adamw": 8, "adamw-8bit": 2}  # two moments: fp32 or 8-bit
# QLoRA base: 4-bit NF4 codes, one 8-bit absmax per 64-element block and one fp32 constant per
# 256 blocks (bitsandbytes' double quantization): 0.5 + 1/64 + 4/16384 bytes per element.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
PREFETCH_UNITS = 2  # gathered at once when sharded: the unit computing and the next one
OVERHEAD_FIXED = 2 * 1024**3  # per GPU: CUDA context, NCCL and cuBLAS workspaces
OVERHEAD_FRACTION = 0.10  # per GPU, on top of the model's bytes: allocator fragmentation
GPU_COUNTS = (1, 2, 4, 8)
METHODS = ("full", "spectrum", "lora", "qlora")
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Footprint:
    """One method's bytes for the whole model (before sharding), its largest unit's share (what
    a GPU gathers), and the activations of one GPU (never sharded)."""

    trainable: int  # elements the optimizer changes
    weights: int
    grads: int
    optimizer: int
    master: int
    unit_weights: int
    unit_grads: int
    activations: int


def _unit(name: str) -> str:
    m = _LAYER.search(name)
    return m.group(1) if m else "outside layers"


def _weight_bytes(p: Param) -> float:
    return p.numel * (WEIGHT_BYTES if p.is_float else p.dtype_bytes)


def _largest(per_unit: Mapping[str, float]) -> int:
    return math.ceil(max(per_unit.values(), default=0))


def footprint(
    params: list[Param],
    method: str,
    trained: list[Trained] | None = None,
    optimizer: str = "adamw",
    lora_rank: int = 16,
    activations: int = 0,
) -> Footprint:
    """Bytes of `method`; `trained` is the Spectrum (or full) selection, unused for LoRA/QLoRA."""
    opt = OPTIMIZER_BYTES[optimizer]
    weights: dict[str, float] = {}
    grad_elems: dict[str, int] = {}
    if method in ("lora", "qlora"):
        targets = {p.name for p in lora_targets(params)}
        trainable = 0
        for p in params:
            u = _unit(p.name)
            quantized = method == "qlora" and p.name in targets
            weights[u] = weights.get(u, 0) + (
                p.numel * NF4_BYTES if quantized else _weight_bytes(p)
            )
            if p.name in targets:
                a = lora_params(p, lora_rank)
                trainable += a
                weights[u] += a * WEIGHT_BYTES
                grad_elems[u] = grad_elems.get(u, 0) + a
    elif method in ("full", "spectrum"):
        for p in params:
            u = _unit(p.name)
            weights[u] = weights.get(u, 0) + _weight_bytes(p)
        trainable = sum(t.trainable for t in trained or [])
        for t in trained or []:
            u = _unit(t.param.name)
            grad_elems[u] = grad_elems.get(u, 0) + t.grad
    else:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    grads = sum(grad_elems.values())
    return Footprint(
        trainable=trainable,
        weights=math.ceil(sum(weights.values())),
        grads=grads * GRAD_BYTES,
        optimizer=grads * opt,
        master=grads * MASTER_BYTES,
        unit_weights=_largest(weights),
        unit_grads=_largest(grad_elems) * GRAD_BYTES,
        activations=activations,
    )


def per_gpu(fp: Footprint, gpus: int) -> dict[str, int]:
    """Bytes on each of `gpus` GPUs (ZeRO-3/FSDP full sharding), without the overhead."""
    gathered = gpus > 1
    out = {
        "weights": math.ceil(fp.weights / gpus)
        + (PREFETCH_UNITS * fp.unit_weights if gathered else 0),
        "grads": math.ceil(fp.grads / gpus) + (fp.unit_grads if gathered else 0),
        "optimizer": math.ceil(fp.optimizer / gpus),
        "master": math.ceil(fp.master / gpus),
        "activations": fp.activations,
    }
    out["total"] = sum(out.values())
    return out


def with_overhead(total: int) -> int:
    """What a GPU must have free for `total` bytes of model state and activations."""
    return math.ceil(total * (1 + OVERHEAD_FRACTION)) + OVERHEAD_FIXED


def fits(fp: Footprint, gpu_mem: int, counts: tuple[int, ...] = GPU_COUNTS) -> dict[str, dict]:
    """{"N": {"fits", "need", "margin"}}: bytes needed per GPU (overhead included) and what is
    left of `gpu_mem` (negative when it does not fit)."""
    out = {}
    for n in counts:
        need = with_overhead(per_gpu(fp, n)["total"])
        out[str(n)] = {"fits": need <= gpu_mem, "need": need, "margin": gpu_mem - need}
    return out


def fewest_gpus(fit: dict[str, dict]) -> int | None:
    """The smallest GPU count that fits, or None."""
    ok = [int(n) for n, f in fit.items() if f["fits"]]
    return min(ok) if ok else None
