"""The scan loop: read each job (the next one ahead), decompose its matrices in same-shape batches
(on worker threads on a CPU), journal each module with its singular values, and release each shard
once all its modules are journaled. driver.py sets it up and calls it; so does each torchrun rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SpectrumError
from .journal.journal import Journal
from .journal.records import failure_of, module_record
from .journal.spectra_log import SpectraLog, spectra_log_path
from .kernel import host_memory, memory
from .kernel.calibrate import float64_ratio, float64_warning
from .kernel.route import ON_CPU_NOTE, Decomposed, decompose_each, streamed_gram, with_note
from .kernel.workers import OrderedPool, default_workers, threads_per_worker
from .layout.specs import MatrixSpec, TensorJob
from .options import ScanOptions, ScanReport
from .read.decode import decode
from .read.device import bind_thread, on_device
from .read.prefetch import prefetched
from .source.shards import ShardSource
from .units import human_bytes

log = logging.getLogger(__name__)
_STREAM = object()  # load() result for a matrix the gram route reads in blocks itself
CPU = torch.device("cpu")
PAST_CAP_NOTE = "past the GPU memory cap: decomposed on the CPU"


def _batch_bytes(shape) -> int:
    """Memory a matrix takes in a batch: its float32 copy and its slot in the stacked batch."""
    return math.prod(shape) * 4 * 2


@dataclass
class _Outcome:
    """One matrix's result (or failure) as a unit of work returns it, journaled in order later."""

    spec: MatrixSpec
    job: TensorJob
    seconds: float
    result: Decomposed | None = None
    failure: str | None = None


class _Runner:
    """The loop over jobs, with same-shape batching and per-shard release."""

    def __init__(
        self,
        journal: Journal,
        spectra: SpectraLog,
        source: ShardSource,
        device: torch.device,
        opts: ScanOptions,
        report: ScanReport,
    ):
        self.journal, self.spectra, self.source, self.device = journal, spectra, source, device
        self.opts, self.report = opts, report
        self.pending: list[tuple[MatrixSpec, torch.Tensor, TensorJob, float]] = []
        self.pending_bytes = 0
        self.budget = opts.batch_bytes  # host memory for a batch on the CPU
        self.gpu_budget, self.reserve = 0, 0  # device cap; room kept for a prefetched tensor
        if device.type == "cuda":
            self.gpu_budget = memory.device_budget(
                opts.max_gpu_mem, torch.cuda.mem_get_info(device)[0]
            )
            if opts.method == "gram":
                warning = float64_warning(float64_ratio(device), torch.cuda.get_device_name(device))
                if warning:
                    log.warning(warning)
        self.pool = OrderedPool(opts.workers or default_workers(device, opts.method))

    # -- journaling ------------------------------------------------------------------------
    def record(self, o: _Outcome) -> None:
        stats = o.result.stats if o.result is not None else None
        failure = o.failure or failure_of(stats)
        spectrum = None
        if failure is None and o.result.values is not None:  # values first, then the line
            spectrum = self.spectra.append(o.result.values.numpy())
        rec = module_record(
            o.spec,
            o.job,
            seconds=o.seconds,
            device=str(self.device),
            method=o.result.method if o.result else self.opts.method,
            stats=stats,
            failure=failure,
            note=o.result and o.result.note,
            spectrum=spectrum,
        )
        if failure is not None:
            log.warning(
                "%s: %s: %s; left out of the results", o.job.main.shard, o.spec.key, failure
            )
        self.journal.append(rec)  # count only what is on disk (Ctrl-C may land mid-append)
        if failure is None:
            self.report.scanned += 1
        else:
            self.report.failed.append((o.spec.key, failure))

    def record_all(self, outcomes: list[_Outcome]) -> None:
        for o in outcomes:
            self.record(o)

    # -- batching --------------------------------------------------------------------------
    def flush(self) -> None:
        """Hand the pending same-shape batch to the pool (decomposed now, or by a worker)."""
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        self.pool.wait_below(self.pool.workers)  # batches in memory: the running ones and this one
        self.pool.submit(lambda: self.decompose_batch(batch), self.record_all)

    def settle(self) -> None:
        """Decompose and journal everything handed out so far."""
        self.flush()
        self.pool.drain()

    def decompose_batch(self, batch) -> list[_Outcome]:
        t0 = time.perf_counter()
        mats = [m for _, m, _, _ in batch]
        results = decompose_each(mats, self.opts.method, self.opts.svd_driver)
        if self.device.type == "cuda" and mats[0].device.type == "cpu":
            results = [
                r if isinstance(r, str) or r.note == ON_CPU_NOTE else with_note(r, PAST_CAP_NOTE)
                for r in results
            ]
        share = (time.perf_counter() - t0) / len(batch)
        return [
            _Outcome(spec, job, read_s + share, failure=r)
            if isinstance(r, str)
            else _Outcome(spec, job, read_s + share, r)
            for (spec, _, job, read_s), r in zip(batch, results)
        ]

    def add(self, spec: MatrixSpec, mat: torch.Tensor, job: TensorJob, read_s: float) -> None:
        if mat.numel() == 0:
            self.record(
                _Outcome(spec, job, read_s, failure=f"empty tensor (shape {list(mat.shape)})")
            )
            return
        # a sum is cheap and non-finite whenever a value is; only then look element by element
        if not math.isfinite(float(mat.sum())) and not bool(torch.isfinite(mat).all()):
            self.record(_Outcome(spec, job, read_s, failure="holds NaN or Inf values"))
            return
        if self.pending and self.pending[0][1].device != mat.device:
            self.flush()
        self.make_room(tuple(mat.shape), _batch_bytes(mat.shape))
        self.pending.append((spec, mat, job, read_s))
        self.pending_bytes += _batch_bytes(mat.shape)

    def make_room(self, shape: tuple[int, ...], nbytes: int, count: int = 1) -> None:
        """Flush the pending batch unless `count` matrices of this shape and size can join it
        (on the GPU: within the device cap, counted by kernel/memory.py)."""
        if not self.pending:
            return
        if tuple(self.pending[0][1].shape) != shape:
            self.flush()
        elif self.pending[0][1].device.type == "cuda":
            need = memory.whole_bytes(
                shape, self.opts.method, len(self.pending) + count, self.opts.svd_driver
            )
            if need + self.reserve > self.gpu_budget:
                self.flush()
        elif self.pending_bytes + nbytes > self.budget:
            self.flush()

    # -- reading ---------------------------------------------------------------------------
    def placement(self, job: TensorJob) -> memory.Placement:
        """Whole, streamed in blocks, or on the CPU.

        On CPU the gram route always reads a plain matrix in float64 blocks straight from the
        file (no float32 copy to make: faster and smaller). On a GPU the device memory decides
        (kernel/memory.py): whole if the route fits the cap beside a prefetched tensor, else
        streamed (gram, a plain matrix), else the CPU.
        """
        spec = job.matrices[0]
        numel = math.prod(spec.shape)
        single = job.decode == "plain" and len(job.matrices) == 1 and not spec.index and numel > 0
        if self.device.type != "cuda":
            stream = self.opts.method == "gram" and single
            return memory.Placement("stream" if stream else "whole", 0)
        entry = job.main.entry
        itemsize = max(1, entry.nbytes // max(1, math.prod(entry.shape)))
        return memory.place(
            spec.shape,
            self.opts.method,
            self.gpu_budget,
            batch=len(job.matrices),
            driver=self.opts.svd_driver,
            reserve=self.reserve,
            can_stream=single,
            raw_itemsize=itemsize,
        )

    def load(self, job: TensorJob):
        where = self.placement(job).where
        if where == "cpu" or self.device.type != "cuda":
            self.check_memory(job, where == "stream")
        if where == "stream":
            return _STREAM
        if where == "cpu":
            return decode(job, self.source.path, CPU)
        try:
            return decode(job, self.source.path, self.device)
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            return decode(job, self.source.path, CPU)

    def check_memory(self, job: TensorJob, streamed: bool) -> None:
        """Fail this job's modules, with the reason, when their decomposition on the CPU cannot
        fit in the RAM the machine has left (instead of the OOM killer ending the whole scan);
        on a GPU, kernel/memory.py's accounting decides instead."""
        method = self.opts.method
        copies = 0 if streamed else sum(4 * math.prod(s.shape) for s in job.matrices)
        work = max(
            host_memory.decomposition_bytes(s.shape, method, streamed)
            - (0 if streamed else 4 * math.prod(s.shape))
            for s in job.matrices
        )
        need = copies + work
        have = host_memory.available_bytes()
        if have is not None and need > have:
            what = (
                "float32 copies + LAPACK workspace"
                if method == "exact"
                else "float64 Gram matrix + blocks"
            )
            raise SpectrumError(
                f"needs about {human_bytes(need)} of memory to decompose (--method {method}: "
                f"{what}), only {human_bytes(have)} available in RAM"
            )

    def stream_gram(
        self, job: TensorJob, spec: MatrixSpec, paths: dict[str, Path]
    ) -> list[_Outcome]:
        t0 = time.perf_counter()
        exact_fits = (
            self.device.type != "cuda"
            or memory.place(
                spec.shape,
                "exact",
                self.gpu_budget,
                driver=self.opts.svd_driver,
                reserve=self.reserve,
            ).where
            == "whole"
        )

        def run(device: torch.device, block_bytes: int) -> Decomposed:
            whole_on = device if exact_fits else CPU  # the exact fallback, only where it fits
            return streamed_gram(
                paths[job.main.shard],
                job.main.entry,
                spec.shape,
                device,
                block_bytes,
                lambda: decode(job, paths.__getitem__, whole_on),
                self.opts.svd_driver,
            )

        try:
            try:
                result = run(self.device, self.placement(job).block_bytes)
            except torch.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                result = with_note(run(CPU, memory.GRAM_BLOCK_BYTES), ON_CPU_NOTE)
        except (RuntimeError, SpectrumError) as exc:
            failure = (
                str(exc) if isinstance(exc, SpectrumError) else f"decomposition failed ({exc})"
            )
            return [_Outcome(spec, job, time.perf_counter() - t0, failure=failure)]
        return [_Outcome(spec, job, time.perf_counter() - t0, result)]

    def consume(self, job: TensorJob, todo: list[MatrixSpec], loaded, error, read_s: float) -> None:
        if error is not None:
            for spec in todo:
                self.record(_Outcome(spec, job, read_s, failure=str(error)))
        elif loaded is _STREAM:
            self.flush()
            # shard paths are resolved here: a Hub source is asked from this thread only
            paths = {shard: self.source.path(shard) for shard in job.shards}
            self.pool.submit(lambda: self.stream_gram(job, todo[0], paths), self.record_all)
        else:
            for spec in todo:
                mat = loaded[spec.index] if spec.index else loaded
                self.add(spec, mat.reshape(spec.shape), job, read_s / len(todo))

    # -- the loop --------------------------------------------------------------------------
    def run(self, jobs: list[TensorJob], finished: set[str], bar) -> None:
        with threads_per_worker(self.pool.workers):
            try:
                self._run(jobs, finished, bar)
            except KeyboardInterrupt:
                with contextlib.suppress(Exception):  # Ctrl-C is what to report
                    self.pool.deliver_finished()  # computed is computed: journal it first
                raise
            except BaseException:
                if self.pool.inflight:
                    log.warning(
                        "stopping: first journaling what the %d decompositions in flight finish",
                        len(self.pool.inflight),
                    )
                with contextlib.suppress(Exception):  # the first error is the one to report
                    self.pool.drain()  # e.g. a failed download must not cost the workers' results
                raise
            finally:
                self.pool.close()

    def _run(self, jobs: list[TensorJob], finished: set[str], bar) -> None:
        users: dict[str, int] = {}
        for job in jobs:
            for shard in job.shards:
                users[shard] = users.get(shard, 0) + 1
        self.source.prepare(list(dict.fromkeys(s for job in jobs for s in job.shards)))
        work = [(job, [s for s in job.matrices if s.key not in finished]) for job in jobs]
        ahead = self.opts.prefetch if self.opts.prefetch is not None else self.device.type == "cuda"
        if ahead and self.device.type == "cuda":
            self.reserve = memory.prefetch_reserve(
                [
                    (
                        memory.whole_bytes(
                            j.matrices[0].shape,
                            self.opts.method,
                            len(j.matrices),
                            self.opts.svd_driver,
                        ),
                        memory.load_bytes(j.matrices[0].shape, len(j.matrices), j.decode),
                    )
                    for j, todo in work
                    if todo
                ],
                self.gpu_budget,
            )
        loads = prefetched(
            [job for job, todo in work if todo],
            self.load,
            ahead,
            init=lambda: bind_thread(self.device),
        )
        for job, todo in work:
            if todo:
                # decide before using the next tensor, so a finished batch does not sit beside it
                # (with --prefetch one more tensor is always in flight, on top of the budget)
                self.make_room(todo[0].shape, sum(_batch_bytes(t.shape) for t in todo), len(todo))
                _, loaded, error, read_s = next(loads)
                self.consume(job, todo, loaded, error, read_s)
                del loaded
                bar.update(job.nbytes)
                bar.set_postfix_str(
                    f"{self.report.skipped + self.report.scanned + len(self.report.failed)}"
                    f"/{self.report.planned} modules",
                    refresh=False,
                )
            for shard in job.shards:
                users[shard] -= 1
                if users[shard] == 0:
                    self.settle()
                    self.source.release(shard)
        self.settle()
        loads.close()


def run_jobs(
    name: str,
    jobs: list[TensorJob],
    journal: Journal,
    finished: set[str],
    source: ShardSource,
    device: torch.device,
    opts: ScanOptions,
    report: ScanReport,
    desc: str | None = None,
) -> None:
    """Scan `jobs` into `journal`, skipping `finished` keys; Ctrl-C sets report.interrupted."""
    report.skipped = sum(1 for j in jobs for s in j.matrices if s.key in finished)
    initial = sum(j.nbytes for j in jobs if all(s.key in finished for s in j.matrices))
    bar = tqdm(
        total=sum(j.nbytes for j in jobs),
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc or f"scan {name}",
        file=sys.stderr,
        disable=not opts.progress,
        dynamic_ncols=True,
    )
    spectra = SpectraLog(spectra_log_path(journal.path), fresh=opts.fresh)
    try:
        with on_device(device):  # this thread's current CUDA device; read threads bind theirs
            _Runner(journal, spectra, source, device, opts, report).run(jobs, finished, bar)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        spectra.close()
