"""Layout rules: which tensors are weight matrices, what each result is called, how to cut it out.

The plan is a list of TensorJobs, one per tensor read from disk; each yields one or more matrices
(a plain weight gives one; a fused expert tensor gives one per expert and projection).

Layouts (DESIGN.md section 4):
- plain 2-D weights, per-expert ones included (Mixtral `block_sparse_moe.experts.N.w1`, Qwen/DeepSeek
  `mlp.experts.N.gate_proj`): one matrix, keyed by its module name as the original tool does;
- DBRX `ffn.experts.mlp.{w1,v1,w2}` [E * ffn, d_model]: expert e is rows [e*ffn, (e+1)*ffn), with E and
  ffn from config.json; key `<tensor>$[start:end]`;
- fused 3-D expert tensors [E, ., .] (a name with an `experts` part): one matrix per expert along dim 0,
  key `<tensor>$[e]`; a `gate_up_proj` is split into its gate and up halves (or even/odd rows for
  gpt-oss), keys `<tensor>(?#gate)$[e]` and `<tensor>(?#up)$[e]`;
- FP8 weights with a `<name>_scale_inv` sibling are dequantized with 128x128 block scales, MXFP4
  `<name>_blocks` + `<name>_scales` as gpt-oss stores them; scale tensors are never scanned.

Fused keys are axolotl `unfrozen_parameters` patterns: `name$` matches exactly the parameter `name`
and `[start:end]` limits training to those rows of its first dimension, i.e. to that one expert. Gate
and up of one expert share their rows in a fused `gate_up_proj`, so both keys unfreeze the whole
gate_up block of that expert; the `(?#gate)`/`(?#up)` regex comments only keep the keys apart.

A fused tensor bigger than EXPERT_CHUNK_BYTES (as float32) is read a few experts at a time: its job
covers only those experts' bytes (experts are the outermost dimension, so they are contiguous).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable

from .checkpoint import Checkpoint
from .dtypes import FLOAT_DTYPES
from .errors import SpectrumError
from .header import TensorEntry
from .naming import module_name, module_type
from .quant import FP8_BLOCK, MXFP4_GROUP, fp8_scale_shape

EXPERT_CHUNK_BYTES = 256 * 1024**2  # decoded float32 bytes one fused-expert job holds (>= 1 expert)

SCALE_INV_SUFFIX = "_scale_inv"
BLOCKS_SUFFIX, SCALES_SUFFIX = "_blocks", "_scales"
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2"})
_SCALE_DTYPES = frozenset({"F32", "BF16", "F16", "F64"})
_MX_SCALE_DTYPES = frozenset({"U8", "F8_E8M0"})

_DBRX_EXPERTS = re.compile(r"(^|\.)experts\.mlp\.(w1|v1|w2)$")
_EXPERTS_PART = re.compile(r"(^|\.)experts(\.|$)")
_BIAS = re.compile(r"(^|[._])bias$")
_GATE_UP = re.compile(r"gate_up_proj(\.weight)?$")


@dataclass(frozen=True)
class MatrixSpec:
    """One result: its key (module name or axolotl pattern), type, and where it sits in the tensor."""

    key: str
    type: str
    shape: tuple[int, int]
    index: tuple = ()  # applied to the decoded tensor: `decoded[index]` is this [m, n] matrix


@dataclass(frozen=True)
class TensorRef:
    """A tensor on disk: its name, the shard file holding it, and its byte range.

    For a fused tensor read a few experts at a time, `entry` covers only those experts' bytes.
    """

    name: str
    shard: str
    entry: TensorEntry


@dataclass(frozen=True)
class TensorJob:
    """One tensor to read (plus any scale tensors it needs) and the matrices it yields."""

    main: TensorRef
    matrices: tuple[MatrixSpec, ...]
    decode: str = "plain"  # how raw bytes become float32: plain | fp8_block | mxfp4
    aux: tuple[TensorRef, ...] = field(default=())

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.main.shard, *(a.shard for a in self.aux)]))

    @property
    def nbytes(self) -> int:
        return self.main.entry.nbytes + sum(a.entry.nbytes for a in self.aux)


def _ref(ckpt: Checkpoint, name: str) -> TensorRef:
    shard, entry = ckpt.tensors[name]
    return TensorRef(name, shard, entry)


def _numel(shape) -> int:
    return math.prod(shape)


def _fail(name: str, shape, what: str) -> SpectrumError:
    return SpectrumError(f"tensor {name!r} {list(shape)}: {what} (--exclude it to scan the rest)")


def _config_int(config: dict, *path: str) -> int | None:
    """An integer from config.json (also looked up under `text_config`), or None."""
    for scope in (config, config.get("text_config")):
        value = scope
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _model_types(config: dict) -> set[str]:
    text = config.get("text_config")
    found = {config.get("model_type"), text.get("model_type") if isinstance(text, dict) else None}
    return {t for t in found if isinstance(t, str)}


def is_companion(name: str, tensors: dict) -> bool:
    """Scale tensors (`_scale_inv`, MXFP4 `_scales`) are read with their weight, never scanned."""
    if name.endswith(SCALE_INV_SUFFIX):
        return True
    return name.endswith(SCALES_SUFFIX) and name[: -len(SCALES_SUFFIX)] + BLOCKS_SUFFIX in tensors


def plain_job(ckpt: Checkpoint, name: str) -> TensorJob | None:
    """A 2-D (or higher, flattened to [out, rest]) floating tensor scanned as one matrix."""
    shard, entry = ckpt.tensors[name]
    if entry.dtype not in FLOAT_DTYPES or len(entry.shape) < 2:
        return None
    rows = entry.shape[0]
    cols = _numel(entry.shape[1:])
    key = module_name(name)
    return TensorJob(TensorRef(name, shard, entry), (MatrixSpec(key, module_type(key), (rows, cols)),))


# --- fused experts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Fused:
    """How a fused expert tensor splits: E experts along dim 0 of the (decoded) tensor.

    `matrices(e, local)` gives the specs of global expert e, which sits at `local` in the job's chunk;
    `rows` is how many dim-0 rows each expert has on disk (ffn for DBRX, 1 for 3-D tensors).
    """

    experts: int
    rows: int
    expert_bytes: int  # float32 bytes of one decoded expert
    matrices: Callable[[int, int], list[MatrixSpec]]


def _spec(key: str, shape: tuple[int, int], index: tuple) -> MatrixSpec:
    return MatrixSpec(key, module_type(key), shape, index)


def _gate_up_split(name: str, shape: tuple[int, ...], ckpt: Checkpoint, mxfp4: bool) -> int:
    """Which dim of a fused gate_up [E, A, B] holds the 2 * intermediate size (1 or 2).

    [E, 2I, H] (transformers' fused format, gpt-oss MXFP4 decoded) splits dim 1; [E, H, 2I] (Llama 4,
    gpt-oss unquantized) splits dim 2. Told apart by the sibling down_proj ([E, H, I] or [E, I, H]),
    else by config.json's hidden size, else by the model type.
    """
    _, a, b = shape
    down = ckpt.tensors.get(re.sub(r"gate_up_proj(?=(\.weight)?$)", "down_proj", name))
    down_shape = down[1].shape if down is not None else ()
    hidden = _config_int(ckpt.config, "hidden_size") or _config_int(ckpt.config, "d_model")
    if mxfp4:
        dim = 1
    elif len(down_shape) == 3 and (b == down_shape[1]) != (a == down_shape[2]):
        dim = 1 if b == down_shape[1] else 2
    elif hidden is not None and (a == hidden) != (b == hidden):
        dim = 2 if a == hidden else 1
    else:
        dim = 2 if _model_types(ckpt.config) & {"llama4", "llama4_text", "gpt_oss"} else 1
    if shape[dim] % 2:
        raise _fail(name, shape, f"gate_up_proj needs an even size on dim {dim} to split gate and up")
    return dim


def _fused_3d(name: str, param: str, shape: tuple[int, ...], ckpt: Checkpoint,
              mxfp4: bool = False) -> _Fused:
    """[E, A, B] -> one [A, B] matrix per expert (gate and up apart for a gate_up_proj)."""
    experts, a, b = shape
    if not _GATE_UP.search(param):
        def whole(e: int, local: int) -> list[MatrixSpec]:
            return [_spec(f"{param}$[{e}]", (a, b), (local,))]
        return _Fused(experts, 1, a * b * 4, whole)

    dim = _gate_up_split(name, shape, ckpt, mxfp4)
    half = shape[dim] // 2
    if mxfp4 or "gpt_oss" in _model_types(ckpt.config):  # gpt-oss interleaves gate (even), up (odd)
        parts = {"gate": slice(0, None, 2), "up": slice(1, None, 2)}
    else:  # gate is the first half, up the second
        parts = {"gate": slice(0, half), "up": slice(half, 2 * half)}
    mat_shape = (half, b) if dim == 1 else (a, half)

    def gate_up(e: int, local: int) -> list[MatrixSpec]:
        return [
            _spec(f"{param}(?#{part})$[{e}]", mat_shape,
                  (local, cut) if dim == 1 else (local, slice(None), cut))
            for part, cut in parts.items()
        ]
    return _Fused(experts, 1, a * b * 4, gate_up)


def _fused_dbrx(name: str, shape: tuple[int, ...], config: dict) -> _Fused:
    """DBRX [E * ffn, d_model] -> one [ffn, d_model] matrix per expert, rows [e*ffn, (e+1)*ffn)."""
    rows, cols = shape
    experts = _config_int(config, "ffn_config", "moe_num_experts")
    ffn = _config_int(config, "ffn_config", "ffn_hidden_size")
    if experts is None and ffn is None:
        raise _fail(name, shape, "a DBRX fused expert tensor; config.json must give "
                    "ffn_config.moe_num_experts and ffn_config.ffn_hidden_size to split it")
    experts = experts or rows // ffn
    ffn = ffn or rows // experts
    if experts * ffn != rows:
        raise _fail(name, shape, f"config.json says {experts} experts of {ffn} rows "
                    f"(= {experts * ffn} rows) for this DBRX fused expert tensor")

    def expert(e: int, local: int) -> list[MatrixSpec]:
        return [_spec(f"{name}$[{e * ffn}:{(e + 1) * ffn}]", (ffn, cols),
                      (slice(local * ffn, (local + 1) * ffn),))]
    return _Fused(experts, ffn, ffn * cols * 4, expert)


def _slice_ref(ref: TensorRef, parts: int, first: int, stop: int) -> TensorRef:
    """The bytes of parts [first, stop) of a tensor cut into `parts` equal slices along dim 0."""
    e = ref.entry
    if first == 0 and stop == parts:
        return ref
    step = e.nbytes // parts
    rows = e.shape[0] // parts
    sub = replace(e, shape=((stop - first) * rows, *e.shape[1:]),
                  start=e.start + first * step, end=e.start + stop * step)
    return TensorRef(ref.name, ref.shard, sub)


def _fused_jobs(main: TensorRef, aux: tuple[TensorRef, ...], decode: str, fused: _Fused,
                chunkable: bool) -> list[TensorJob]:
    """Jobs of at most EXPERT_CHUNK_BYTES decoded each (at least one expert), in expert order."""
    per_job = max(1, EXPERT_CHUNK_BYTES // max(1, fused.expert_bytes)) if chunkable else fused.experts
    jobs = []
    for first in range(0, fused.experts, per_job):
        stop = min(first + per_job, fused.experts)
        specs = tuple(s for e in range(first, stop) for s in fused.matrices(e, e - first))
        jobs.append(TensorJob(
            _slice_ref(main, fused.experts, first, stop), specs, decode,
            tuple(_slice_ref(a, fused.experts, first, stop) for a in aux),
        ))
    return jobs


# --- per tensor ----------------------------------------------------------------------------------

def _mxfp4_jobs(ckpt: Checkpoint, name: str) -> list[TensorJob]:
    """gpt-oss `X_blocks` U8 [E, R, G, 16] + `X_scales` [E, R, G] -> [E, R, G*32] per expert."""
    blocks = _ref(ckpt, name)
    shape = blocks.entry.shape
    param = name[: -len(BLOCKS_SUFFIX)]
    scales_name = param + SCALES_SUFFIX
    if scales_name not in ckpt.tensors:
        raise _fail(name, shape, f"MXFP4 blocks without their scales {scales_name!r}")
    scales = _ref(ckpt, scales_name)
    if scales.entry.dtype not in _MX_SCALE_DTYPES or scales.entry.shape != shape[:-1]:
        raise _fail(name, shape, f"MXFP4 scales {scales_name!r} must be U8 of shape "
                    f"{list(shape[:-1])}, got {scales.entry.dtype} {list(scales.entry.shape)}")
    decoded = (*shape[:-2], shape[-2] * MXFP4_GROUP)
    if len(decoded) == 2:  # one matrix, not a stack of experts
        key = module_name(param)
        return [TensorJob(blocks, (_spec(key, decoded, ()),), "mxfp4", (scales,))]
    if len(decoded) != 3:
        raise _fail(name, shape, "MXFP4 blocks must be [E, R, G, 16] or [R, G, 16]")
    fused = _fused_3d(name, param, decoded, ckpt, mxfp4=True)
    return _fused_jobs(blocks, (scales,), "mxfp4", fused, chunkable=True)


def _fp8_scale(ckpt: Checkpoint, name: str) -> TensorRef | None:
    """The `_scale_inv` sibling of an FP8 weight, checked; None when the weight has none."""
    shard, entry = ckpt.tensors[name]
    sibling = name + SCALE_INV_SUFFIX
    if entry.dtype not in FP8_DTYPES or sibling not in ckpt.tensors or len(entry.shape) < 2:
        return None
    scale = _ref(ckpt, sibling)
    want = fp8_scale_shape(entry.shape)
    if scale.entry.dtype not in _SCALE_DTYPES or scale.entry.shape != want:
        raise _fail(name, entry.shape, f"FP8 block scales {sibling!r} must be a float tensor of "
                    f"shape {list(want)} (128x128 blocks), got {scale.entry.dtype} "
                    f"{list(scale.entry.shape)}")
    return scale


def tensor_jobs(ckpt: Checkpoint, name: str) -> list[TensorJob]:
    """The jobs that scan one tensor of the checkpoint (none for norms, biases, scales, integers)."""
    shard, entry = ckpt.tensors[name]
    shape = entry.shape
    if is_companion(name, ckpt.tensors) or _BIAS.search(name):
        return []
    if name.endswith(BLOCKS_SUFFIX) and entry.dtype == "U8" and len(shape) >= 3 \
            and shape[-1] == MXFP4_GROUP // 2:
        return _mxfp4_jobs(ckpt, name)
    if entry.dtype not in FLOAT_DTYPES or len(shape) < 2:
        return []
    main = TensorRef(name, shard, entry)
    scale = _fp8_scale(ckpt, name)
    decode, aux = ("fp8_block", (scale,)) if scale is not None else ("plain", ())

    if len(shape) == 2 and _DBRX_EXPERTS.search(name):
        fused = _fused_dbrx(name, shape, ckpt.config)
        # FP8 scales cover 128-row blocks: read expert by expert only when experts align with them
        aligned = scale is None or fused.rows % FP8_BLOCK == 0
        return _fused_jobs(main, aux, decode, fused, chunkable=aligned)
    if len(shape) == 3 and _EXPERTS_PART.search(name):
        return _fused_jobs(main, aux, decode, _fused_3d(name, name, shape, ckpt), True)

    job = plain_job(ckpt, name)
    return [replace(job, decode=decode, aux=aux)]


def plan(ckpt: Checkpoint, include: str | None = None, exclude: str | None = None) -> list[TensorJob]:
    """Every matrix to scan, in file order (shard, then offset) so reads stay sequential.

    `include`/`exclude` are regexes searched in each result's type or key. A tensor that breaks a
    layout rule raises SpectrumError, unless `exclude` matches its name.
    """
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None

    def wanted(spec: MatrixSpec) -> bool:
        hit = lambda rx: rx.search(spec.type) or rx.search(spec.key)  # noqa: E731
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
            kept = tuple(s for s in job.matrices if wanted(s))
            if kept:
                jobs.append(replace(job, matrices=kept))
    jobs.sort(key=lambda j: (j.main.shard, j.main.entry.start))
    return jobs
