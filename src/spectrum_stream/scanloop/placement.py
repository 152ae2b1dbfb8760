"""DevicePolicy: the one owner of the device budget and of where each job's matrices go.

On a CPU the gram route reads a plain matrix in float64 blocks straight from the file (no float32
copy to make: faster and smaller). On a GPU the device memory decides (kernel/memory.py): whole
if the route fits the cap beside a prefetched tensor, else streamed (gram, a plain matrix), else
the CPU. Out of device memory anyway, work goes to the CPU by kernel/route.or_on_cpu.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import ModuleFailed
from ..kernel import host_memory, memory
from ..kernel.calibrate import float64_ratio, float64_warning
from ..kernel.route import CPU, or_on_cpu
from ..layout.specs import TensorJob
from ..options import ScanOptions
from ..read.device import is_cuda
from ..units import human_bytes
from .batch import Batch
from .steps import Steps

log = logging.getLogger(__name__)
STREAM = object()  # load() result for a matrix the gram route reads in blocks itself


class DevicePolicy:
    """Where each job goes and what a batch may hold, on the scan's device."""

    def __init__(self, device: torch.device, opts: ScanOptions):
        self.device, self.method, self.driver = device, opts.method, opts.svd_driver
        self.cuda = is_cuda(device)
        self.host_budget = opts.batch_bytes  # host memory for a batch on the CPU
        self.gpu_budget, self.reserve = 0, 0  # device cap; room kept for a prefetched tensor
        self.prefetch = opts.prefetch if opts.prefetch is not None else self.cuda
        if self.cuda:
            self.gpu_budget = memory.device_budget(
                opts.max_gpu_mem, torch.cuda.mem_get_info(device)[0]
            )
            if opts.method == "gram":
                warning = float64_warning(float64_ratio(device), torch.cuda.get_device_name(device))
                if warning:
                    log.warning(warning)

    def keep_room_for_prefetch(self, jobs: list[TensorJob]) -> None:
        """Set aside device memory for the tensor read ahead (on a GPU, with prefetch)."""
        if not (self.prefetch and self.cuda):
            return
        self.reserve = memory.prefetch_reserve(
            [
                (
                    memory.whole_bytes(
                        j.matrices[0].shape, self.method, len(j.matrices), self.driver
                    ),
                    memory.load_bytes(j.matrices[0].shape, len(j.matrices), j.decode),
                )
                for j in jobs
            ],
            self.gpu_budget,
        )

    def place(self, job: TensorJob) -> memory.Placement:
        """Whole, streamed in blocks, or on the CPU (the module docstring says how)."""
        spec = job.matrices[0]
        numel = math.prod(spec.shape)
        single = job.decode == "plain" and len(job.matrices) == 1 and not spec.index and numel > 0
        if not self.cuda:
            stream = self.method == "gram" and single
            return memory.Placement("stream" if stream else "whole", 0)
        entry = job.main.entry
        itemsize = max(1, entry.nbytes // max(1, math.prod(entry.shape)))
        return memory.place(
            spec.shape,
            self.method,
            self.gpu_budget,
            batch=len(job.matrices),
            driver=self.driver,
            reserve=self.reserve,
            can_stream=single,
            raw_itemsize=itemsize,
        )

    def exact_fits(self, shape: tuple[int, int]) -> bool:
        """Whether the exact route fits whole on the device (the streamed gram's fallback)."""
        if not self.cuda:
            return True
        placed = memory.place(
            shape, "exact", self.gpu_budget, driver=self.driver, reserve=self.reserve
        )
        return placed.where == "whole"

    def has_room(self, batch: Batch, shape: tuple[int, ...], nbytes: int, count: int = 1) -> bool:
        """Whether `count` matrices of this shape and host size can join the pending batch (on
        the GPU: within the device cap, counted by kernel/memory.py)."""
        if not batch:
            return True
        if batch.shape != shape:
            return False
        if is_cuda(batch.device):
            m, n = shape  # batches hold matrices
            need = memory.whole_bytes((m, n), self.method, len(batch) + count, self.driver)
            return need + self.reserve <= self.gpu_budget
        return batch.nbytes + nbytes <= self.host_budget

    def past_cap(self, batch_device: torch.device) -> bool:
        """A batch on the CPU of a GPU scan: placed there for the device cap."""
        return self.cuda and not is_cuda(batch_device)

    def load(self, job: TensorJob, steps: Steps, path_of: Callable[[str], Path]) -> object:
        """The job's float32 tensor where it is placed, or STREAM for the streamed gram route."""
        where = self.place(job).where
        if where == "cpu" or not self.cuda:
            self.check_memory(job, where == "stream")
        if where == "stream":
            return STREAM
        if where == "cpu":
            return steps.decode(job, path_of, CPU)
        loaded, _ = or_on_cpu(
            lambda: steps.decode(job, path_of, self.device), lambda: steps.decode(job, path_of, CPU)
        )
        return loaded

    def check_memory(self, job: TensorJob, streamed: bool) -> None:
        """Fail this job's modules, with the reason, when their decomposition on the CPU cannot
        fit in the RAM the machine has left (instead of the OOM killer ending the whole scan)."""
        copies = 0 if streamed else sum(4 * math.prod(s.shape) for s in job.matrices)
        work = max(
            host_memory.decomposition_bytes(s.shape, self.method, streamed)
            - (0 if streamed else 4 * math.prod(s.shape))
            for s in job.matrices
        )
        need, have = copies + work, host_memory.available_bytes()
        if have is not None and need > have:
            what = (
                "float32 copies + LAPACK workspace"
                if self.method == "exact"
                else "float64 Gram matrix + blocks"
            )
            raise ModuleFailed(
                f"needs about {human_bytes(need)} of memory to decompose (--method {self.method}: "
                f"{what}), only {human_bytes(have)} available in RAM"
            )
