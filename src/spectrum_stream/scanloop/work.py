"""A unit of work and what it returns: a batch, or one streamed matrix, decomposed into Outcomes.

Runs on a worker thread (kernel/workers.OrderedPool); the Outcomes are journaled later, in order.
A module that cannot be scanned comes back as an Outcome holding a ModuleFailed: a value, never
an exception that stops the scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModuleFailed
from ..kernel import memory
from ..kernel.route import CPU, ON_CPU_NOTE, Decomposed, or_on_cpu, with_note
from ..layout.specs import MatrixSpec, TensorJob
from .batch import Pending
from .placement import DevicePolicy
from .steps import Steps

PAST_CAP_NOTE = "past the GPU memory cap: decomposed on the CPU"


@dataclass
class Outcome:
    """One matrix's result, or why it failed, with the seconds it took."""

    spec: MatrixSpec
    job: TensorJob
    seconds: float
    result: Decomposed | None = None
    failure: ModuleFailed | None = None


def decompose_batch(items: list[Pending], policy: DevicePolicy, steps: Steps) -> list[Outcome]:
    """Same-shape matrices through one call; each one's share of the time is added to its read."""
    t0 = time.perf_counter()
    mats = [p.mat for p in items]
    results = steps.decompose_each(mats, policy.method, policy.driver)
    if policy.past_cap(mats[0].device):
        results = [
            r
            if isinstance(r, ModuleFailed) or r.note == ON_CPU_NOTE
            else with_note(r, PAST_CAP_NOTE)
            for r in results
        ]
    share = (time.perf_counter() - t0) / len(items)
    return [
        Outcome(p.spec, p.job, p.read_s + share, failure=r)
        if isinstance(r, ModuleFailed)
        else Outcome(p.spec, p.job, p.read_s + share, r)
        for p, r in zip(items, results)
    ]


def decompose_streamed(
    job: TensorJob, spec: MatrixSpec, paths: dict[str, Path], policy: DevicePolicy, steps: Steps
) -> Outcome:
    """The gram route over blocks read straight from the file; the exact fallback reads the
    matrix whole, on the device only where it fits there."""
    t0 = time.perf_counter()
    whole_on = policy.device if policy.exact_fits(spec.shape) else CPU

    def run(device, block_bytes: int) -> Decomposed:
        return steps.streamed_gram(
            paths[job.main.shard],
            job.main.entry,
            spec.shape,
            device,
            block_bytes,
            lambda: steps.decode(job, paths.__getitem__, whole_on),
            policy.driver,
        )

    try:
        result, on_cpu = or_on_cpu(
            lambda: run(policy.device, policy.place(job).block_bytes),
            lambda: run(CPU, memory.GRAM_BLOCK_BYTES),
        )
    except ModuleFailed as failed:
        return Outcome(spec, job, time.perf_counter() - t0, failure=failed)
    except RuntimeError as exc:
        reason = ModuleFailed(f"decomposition failed ({exc})")
        return Outcome(spec, job, time.perf_counter() - t0, failure=reason)
    return Outcome(
        spec, job, time.perf_counter() - t0, with_note(result, ON_CPU_NOTE) if on_cpu else result
    )
