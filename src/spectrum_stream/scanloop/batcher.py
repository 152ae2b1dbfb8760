"""Batcher: gathers same-shape matrices into a Batch and hands each full batch to the pool."""

from __future__ import annotations

import math

import torch

from ..errors import ModuleFailed
from ..kernel.workers import OrderedPool
from ..layout.specs import MatrixSpec, TensorJob
from .batch import Batch, Pending, batch_bytes
from .placement import DevicePolicy
from .recorder import Recorder
from .steps import Steps
from .work import Outcome, decompose_batch


class Batcher:
    """The pending batch: flushed when a matrix of another shape or device comes, or when the
    next would pass the budget (DevicePolicy.has_room)."""

    def __init__(self, policy: DevicePolicy, steps: Steps, pool: OrderedPool, recorder: Recorder):
        self.policy, self.steps, self.pool, self.recorder = policy, steps, pool, recorder
        self.batch = Batch()

    def add(self, spec: MatrixSpec, mat: torch.Tensor, job: TensorJob, read_s: float) -> None:
        if mat.numel() == 0:
            failed = ModuleFailed(f"empty tensor (shape {list(mat.shape)})")
            self.recorder.record(Outcome(spec, job, read_s, failure=failed))
            return
        # a sum is cheap and non-finite whenever a value is; only then look element by element
        if not math.isfinite(float(mat.sum())) and not bool(torch.isfinite(mat).all()):
            failed = ModuleFailed("holds NaN or Inf values")
            self.recorder.record(Outcome(spec, job, read_s, failure=failed))
            return
        if self.batch and self.batch.device != mat.device:
            self.flush()
        self.make_room(tuple(mat.shape), batch_bytes(mat.shape))
        self.batch.add(Pending(spec, mat, job, read_s))

    def make_room(self, shape: tuple[int, ...], nbytes: int, count: int = 1) -> None:
        """Flush the pending batch unless `count` matrices of this shape and size can join it."""
        if not self.policy.has_room(self.batch, shape, nbytes, count):
            self.flush()

    def flush(self) -> None:
        """Hand the pending same-shape batch to the pool (decomposed now, or by a worker)."""
        if not self.batch:
            return
        items = self.batch.take()
        self.pool.wait_below(self.pool.workers)  # batches in memory: the running ones and this one
        self.pool.submit(
            lambda: decompose_batch(items, self.policy, self.steps), self.recorder.record_all
        )

    def settle(self) -> None:
        """Decompose and journal everything handed out so far."""
        self.flush()
        self.pool.drain()
