"""The plan: every matrix to scan, as TensorJobs in file order.

Which tensors are weight matrices, what each result is called, how to cut it out (docs/spec.md,
"Checkpoint layouts"):
- plain 2-D weights, per-expert ones included (Mixtral `block_sparse_moe.experts.N.w1`, Qwen/DeepSeek
  `mlp.experts.N.gate_proj`): one matrix, keyed by its module name as the original tool does;
- fused expert tensors (DBRX, 3-D `experts` tensors): experts.py;
- FP8 block-scaled and MXFP4 weights: quantized.py. Norms, biases, integers and scales are skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from ..errors import SpectrumError
from ..source.checkpoint import Checkpoint
from ..source.dtypes import FLOAT_DTYPES
from ..source.quant_formats import FP8_BLOCK
from .config import check_config
from .experts import fused_3d, fused_dbrx, fused_jobs
from .naming import module_name, module_type
from .quantized import fp8_scale, is_companion, is_mxfp4_blocks, mxfp4_jobs
from .specs import MatrixSpec, TensorJob, TensorRef
from .trainer_names import TrainerNames

_DBRX_EXPERTS = re.compile(r"(^|\.)experts\.mlp\.(w1|v1|w2)$")
_EXPERTS_PART = re.compile(r"(^|\.)experts(\.|$)")
_BIAS = re.compile(r"(^|[._])bias$")


def plain_job(ckpt: Checkpoint, name: str) -> TensorJob | None:
    """A 2-D (or higher, flattened to [out, rest]) floating tensor scanned as one matrix."""
    shard, entry = ckpt.tensors[name]
    if entry.dtype not in FLOAT_DTYPES or len(entry.shape) < 2:
        return None
    rows = entry.shape[0]
    cols = math.prod(entry.shape[1:])
    key = module_name(name)
    return TensorJob(
        TensorRef(name, shard, entry), (MatrixSpec(key, module_type(key), (rows, cols)),)
    )


def tensor_jobs(ckpt: Checkpoint, name: str) -> list[TensorJob]:
    """The jobs that scan one tensor of the checkpoint (none for norms, biases, scales, integers)."""
    shard, entry = ckpt.tensors[name]
    shape = entry.shape
    if is_companion(name, ckpt.tensors) or _BIAS.search(name):
        return []
    if is_mxfp4_blocks(name, entry.dtype, shape):
        return mxfp4_jobs(ckpt, name)
    if entry.dtype not in FLOAT_DTYPES or len(shape) < 2:
        return []
    main = TensorRef(name, shard, entry)
    scale = fp8_scale(ckpt, name)
    decode, aux = ("fp8_block", (scale,)) if scale is not None else ("plain", ())

    if len(shape) == 2 and _DBRX_EXPERTS.search(name):
        fused = fused_dbrx(name, shape, ckpt.config)
        # FP8 scales cover 128-row blocks: read expert by expert only when experts align with them
        aligned = scale is None or fused.rows % FP8_BLOCK == 0
        return fused_jobs(main, aux, decode, fused, chunkable=aligned)
    if len(shape) == 3 and _EXPERTS_PART.search(name):
        return fused_jobs(main, aux, decode, fused_3d(name, name, shape, ckpt), True)

    job = plain_job(ckpt, name)
    return [] if job is None else [replace(job, decode=decode, aux=aux)]


def plan_jobs(
    ckpt: Checkpoint, include: str | None = None, exclude: str | None = None
) -> list[TensorJob]:
    """Every matrix to scan, in file order (shard, then offset) so reads stay sequential.

    `include`/`exclude` are regexes searched in each result's type or key. A tensor that breaks a
    layout rule raises SpectrumError, unless `exclude` matches its name; so does a config.json
    value a layout rule needs (layout/config.py's check_config, before anything else). Each spec
    gets its trainer key (layout/trainer_names.py).
    """
    check_config(ckpt.config, ckpt, exclude)
    names = TrainerNames.for_config(ckpt.config)
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None

    def wanted(spec: MatrixSpec) -> bool:
        hit = lambda rx: rx.search(spec.type) or rx.search(spec.key)
        return (inc is None or hit(inc)) and (exc is None or not hit(exc))

    jobs = []
    for name in ckpt.tensors:
        try:
            found = tensor_jobs(ckpt, name)
        except SpectrumError:
            if exc is not None and exc.search(name):
                continue
            raise
        for job in found:
            kept = tuple(
                replace(s, trainer_key=names.key(s.key, job.main.name))
                for s in job.matrices
                if wanted(s)
            )
            if kept:
                jobs.append(replace(job, matrices=kept))
    jobs.sort(key=lambda j: (j.main.shard, j.main.entry.start))
    return jobs
