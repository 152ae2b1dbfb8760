"""Layout rules: which tensors are weight matrices, what each result is called, how to cut it out.

The plan is a list of TensorJobs, one per tensor read from disk; each yields one or more matrices
(a plain weight gives one; a fused expert tensor gives one per expert and projection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .checkpoint import Checkpoint
from .dtypes import FLOAT_DTYPES
from .header import TensorEntry
from .naming import module_name, module_type


@dataclass(frozen=True)
class MatrixSpec:
    """One result: its key (module name or axolotl pattern), type, and where it sits in the tensor."""

    key: str
    type: str
    shape: tuple[int, int]
    index: tuple = ()  # applied to the decoded tensor: `decoded[index]` is this [m, n] matrix


@dataclass(frozen=True)
class TensorRef:
    """A tensor on disk: its name, the shard file holding it, and its byte range."""

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


def plain_job(ckpt: Checkpoint, name: str) -> TensorJob | None:
    """A 2-D (or higher, flattened to [out, rest]) floating tensor scanned as one matrix."""
    shard, entry = ckpt.tensors[name]
    if entry.dtype not in FLOAT_DTYPES or len(entry.shape) < 2:
        return None
    rows = entry.shape[0]
    cols = 1
    for d in entry.shape[1:]:
        cols *= d
    key = module_name(name)
    return TensorJob(TensorRef(name, shard, entry), (MatrixSpec(key, module_type(key), (rows, cols)),))


def plan(ckpt: Checkpoint, include: str | None = None, exclude: str | None = None) -> list[TensorJob]:
    """Every matrix to scan, in file order (shard, then offset) so reads stay sequential.

    `include`/`exclude` are regexes searched in each result's type or key.
    """
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None

    def wanted(spec: MatrixSpec) -> bool:
        hit = lambda rx: rx.search(spec.type) or rx.search(spec.key)  # noqa: E731
        return (inc is None or hit(inc)) and (exc is None or not hit(exc))

    jobs = []
    for name in ckpt.tensors:
        job = plain_job(ckpt, name)
        if job is None:
            continue
        kept = tuple(s for s in job.matrices if wanted(s))
        if kept:
            jobs.append(TensorJob(job.main, kept, job.decode, job.aux))
    jobs.sort(key=lambda j: (j.main.shard, j.main.entry.start))
    return jobs
