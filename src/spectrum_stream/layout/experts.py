"""Fused expert tensors: one tensor on disk, one matrix per expert (and per projection).

- DBRX `ffn.experts.mlp.{w1,v1,w2}` [E * ffn, d_model]: expert e is rows [e*ffn, (e+1)*ffn), with E and
  ffn from config.json; key `<tensor>$[start:end]`;
- 3-D tensors [E, ., .] (a name with an `experts` part): one matrix per expert along dim 0, key
  `<tensor>$[e]`; a `gate_up_proj` is split into its gate and up halves (or even/odd rows for
  gpt-oss), keys `<tensor>(?#gate)$[e]` and `<tensor>(?#up)$[e]`.

The keys are axolotl `unfrozen_parameters` patterns (docs/spec.md, "Names"). A fused tensor bigger
than EXPERT_CHUNK_BYTES (as float32) is read a few experts at a time: its job covers only those
experts' bytes (experts are the outermost dimension, so they are contiguous).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..source.checkpoint import Checkpoint
from .config import config_int, model_types
from .naming import module_type
from .specs import MatrixSpec, TensorJob, TensorRef, layout_error

EXPERT_CHUNK_BYTES = 256 * 1024**2  # decoded float32 bytes one fused-expert job holds (>= 1 expert)

_GATE_UP = re.compile(r"gate_up_proj(\.weight)?$")


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
    hidden = config_int(ckpt.config, "hidden_size") or config_int(ckpt.config, "d_model")
    if mxfp4:
        dim = 1
    elif len(down_shape) == 3 and (b == down_shape[1]) != (a == down_shape[2]):
        dim = 1 if b == down_shape[1] else 2
    elif hidden is not None and (a == hidden) != (b == hidden):
        dim = 2 if a == hidden else 1
    else:
        dim = 2 if model_types(ckpt.config) & {"llama4", "llama4_text", "gpt_oss"} else 1
    if shape[dim] % 2:
        raise layout_error(
            name, shape, f"gate_up_proj needs an even size on dim {dim} to split gate and up"
        )
    return dim


def fused_3d(
    name: str, param: str, shape: tuple[int, ...], ckpt: Checkpoint, mxfp4: bool = False
) -> _Fused:
    """[E, A, B] -> one [A, B] matrix per expert (gate and up apart for a gate_up_proj)."""
    experts, a, b = shape
    if not _GATE_UP.search(param):

        def whole(e: int, local: int) -> list[MatrixSpec]:
            return [_spec(f"{param}$[{e}]", (a, b), (local,))]

        return _Fused(experts, 1, a * b * 4, whole)

    dim = _gate_up_split(name, shape, ckpt, mxfp4)
    half = shape[dim] // 2
    if mxfp4 or "gpt_oss" in model_types(ckpt.config):  # gpt-oss interleaves gate (even), up (odd)
        parts = {"gate": slice(0, None, 2), "up": slice(1, None, 2)}
    else:  # gate is the first half, up the second
        parts = {"gate": slice(0, half), "up": slice(half, 2 * half)}
    mat_shape = (half, b) if dim == 1 else (a, half)

    def gate_up(e: int, local: int) -> list[MatrixSpec]:
        return [
            _spec(
                f"{param}(?#{part})$[{e}]",
                mat_shape,
                (local, cut) if dim == 1 else (local, slice(None), cut),
            )
            for part, cut in parts.items()
        ]

    return _Fused(experts, 1, a * b * 4, gate_up)


def fused_dbrx(name: str, shape: tuple[int, ...], config: dict) -> _Fused:
    """DBRX [E * ffn, d_model] -> one [ffn, d_model] matrix per expert, rows [e*ffn, (e+1)*ffn)."""
    rows, cols = shape
    experts = config_int(config, "ffn_config", "moe_num_experts")
    ffn = config_int(config, "ffn_config", "ffn_hidden_size")
    if experts is None and ffn is None:
        raise layout_error(
            name,
            shape,
            "a DBRX fused expert tensor; config.json must give "
            "ffn_config.moe_num_experts and ffn_config.ffn_hidden_size to split it",
        )
    if experts is None:
        assert ffn is not None  # one of the two is given (checked above)
        experts = rows // ffn
    if ffn is None:
        ffn = rows // experts
    if experts * ffn != rows:
        raise layout_error(
            name,
            shape,
            f"config.json says {experts} experts of {ffn} rows "
            f"(= {experts * ffn} rows) for this DBRX fused expert tensor",
        )

    def expert(e: int, local: int) -> list[MatrixSpec]:
        return [
            _spec(
                f"{name}$[{e * ffn}:{(e + 1) * ffn}]",
                (ffn, cols),
                (slice(local * ffn, (local + 1) * ffn),),
            )
        ]

    return _Fused(experts, ffn, ffn * cols * 4, expert)


def _slice_ref(ref: TensorRef, parts: int, first: int, stop: int) -> TensorRef:
    """The bytes of parts [first, stop) of a tensor cut into `parts` equal slices along dim 0."""
    e = ref.entry
    if first == 0 and stop == parts:
        return ref
    step = e.nbytes // parts
    rows = e.shape[0] // parts
    sub = replace(
        e,
        shape=((stop - first) * rows, *e.shape[1:]),
        start=e.start + first * step,
        end=e.start + stop * step,
    )
    return TensorRef(ref.name, ref.shard, sub)


def fused_jobs(
    main: TensorRef, aux: tuple[TensorRef, ...], decode: str, fused: _Fused, chunkable: bool
) -> list[TensorJob]:
    """Jobs of at most EXPERT_CHUNK_BYTES decoded each (at least one expert), in expert order."""
    per_job = (
        max(1, EXPERT_CHUNK_BYTES // max(1, fused.expert_bytes)) if chunkable else fused.experts
    )
    jobs = []
    for first in range(0, fused.experts, per_job):
        stop = min(first + per_job, fused.experts)
        specs = tuple(s for e in range(first, stop) for s in fused.matrices(e, e - first))
        jobs.append(
            TensorJob(
                _slice_ref(main, fused.experts, first, stop),
                specs,
                decode,
                tuple(_slice_ref(a, fused.experts, first, stop) for a in aux),
            )
        )
    return jobs
