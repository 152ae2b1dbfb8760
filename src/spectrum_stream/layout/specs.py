"""The values the plan hands to the rest of the pipeline: what to read, and which matrices it holds.

A TensorJob is one tensor to read from disk (plus any scale tensors it needs); each of its
MatrixSpecs is one result (a module, or one expert of a fused tensor), named by its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SpectrumError
from ..source.header import TensorEntry


@dataclass(frozen=True)
class MatrixSpec:
    """One result: its key (module name or axolotl pattern), type, and where it sits in the tensor.

    `key` names it in the checkpoint (the journal's identity for resumes); `trainer_key` names the
    parameter rows of the model as transformers 5 loads it (layout/trainer_names.py).
    """

    key: str
    type: str
    shape: tuple[int, int]
    index: tuple = ()  # applied to the decoded tensor: `decoded[index]` is this [m, n] matrix
    trainer_key: str = ""  # set by plan_jobs(); "" means the same as key


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


def layout_error(name: str, shape, what: str) -> SpectrumError:
    """A tensor that breaks a layout rule: one line naming it, and how to scan around it."""
    return SpectrumError(f"tensor {name!r} {list(shape)}: {what} (--exclude it to scan the rest)")
