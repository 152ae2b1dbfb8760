"""The scan loop: read each planned tensor, decompose its matrices, journal each module, and write
the results files from the journal at the end (docs/architecture.md walks through it).

`plan_scan` makes the plan once (jobs, result paths, the journal's finished modules); a Hub scan
makes it, looks at it, and hands it to `run_scan` like a local scan does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SpectrumError
from .journal.journal import Journal, finished_in
from .journal.lock import ScanLock
from .journal.records import failure_of, module_record
from .kernel.gram import GRAM_BLOCK_BYTES
from .kernel.route import Decomposed, decompose_each, streamed_gram
from .kernel.workers import OrderedPool, default_workers, threads_per_worker
from .options import ScanInterrupted, ScanOptions, ScanReport
from .plan.jobs import plan
from .plan.specs import MatrixSpec, TensorJob
from .read.decode import decode
from .read.device import resolve_device
from .read.prefetch import prefetched
from .results.files import write_results
from .results.paths import ResultPaths
from .source.checkpoint import Checkpoint, open_local
from .source.shards import LocalSource, ShardSource

log = logging.getLogger(__name__)
_STREAM = object()  # load() result for a matrix the gram route reads in blocks itself


@dataclass
class ScanPlan:
    """Everything decided before the first read: made once, by `plan_scan`."""

    ckpt: Checkpoint
    name: str
    jobs: list[TensorJob]
    paths: ResultPaths
    header: dict  # the journal header: what a resume must match
    finished: set[str]  # keys the journal already holds (empty with --fresh)

    @property
    def matrices(self) -> int:
        return sum(len(j.matrices) for j in self.jobs)


def plan_scan(ckpt: Checkpoint, opts: ScanOptions) -> ScanPlan:
    """The jobs, where results go, and what the journal already holds."""
    name = opts.name or ckpt.name
    jobs = plan(ckpt, opts.include, opts.exclude)
    if not jobs:
        raise SpectrumError(f"{name}: no weight matrices to scan (check --include/--exclude)")
    paths = ResultPaths.for_model(Path(opts.out_dir), name)
    header = {
        "checkpoint": ckpt.fingerprint(),
        "settings": {"method": opts.method, "include": opts.include, "exclude": opts.exclude},
    }
    finished = set() if opts.fresh else finished_in(paths.journal)
    return ScanPlan(ckpt, name, jobs, paths, header, finished)


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

    def __init__(self, journal: Journal, source: ShardSource, device: torch.device,
                 opts: ScanOptions, report: ScanReport):
        self.journal, self.source, self.device = journal, source, device
        self.opts, self.report = opts, report
        self.pending: list[tuple[MatrixSpec, torch.Tensor, TensorJob, float]] = []
        self.pending_bytes = 0
        self.budget = opts.batch_bytes
        self.block_bytes = GRAM_BLOCK_BYTES
        if device.type == "cuda" and opts.max_gpu_mem:
            self.budget = min(self.budget, opts.max_gpu_mem)
            self.block_bytes = min(self.block_bytes, opts.max_gpu_mem)
        self.pool = OrderedPool(opts.workers or default_workers(device, opts.method))

    # -- journaling ------------------------------------------------------------------------
    def record(self, o: _Outcome) -> None:
        stats = o.result.stats if o.result is not None else None
        failure = o.failure or failure_of(stats)
        rec = module_record(o.spec, o.job, seconds=o.seconds, device=str(self.device),
                            method=o.result.method if o.result else self.opts.method,
                            stats=stats, failure=failure, note=o.result and o.result.note)
        if failure is not None:
            log.warning("%s: %s: %s; left out of the results", o.job.main.shard, o.spec.key,
                        failure)
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
        results = decompose_each([m for _, m, _, _ in batch], self.opts.method,
                                 self.opts.svd_driver)
        share = (time.perf_counter() - t0) / len(batch)
        return [_Outcome(spec, job, read_s + share, failure=r) if isinstance(r, str)
                else _Outcome(spec, job, read_s + share, r)
                for (spec, _, job, read_s), r in zip(batch, results)]

    def add(self, spec: MatrixSpec, mat: torch.Tensor, job: TensorJob, read_s: float) -> None:
        if mat.numel() == 0:
            self.record(_Outcome(spec, job, read_s,
                                 failure=f"empty tensor (shape {list(mat.shape)})"))
            return
        # a sum is cheap and non-finite whenever a value is; only then look element by element
        if not math.isfinite(float(mat.sum())) and not bool(torch.isfinite(mat).all()):
            self.record(_Outcome(spec, job, read_s, failure="holds NaN or Inf values"))
            return
        self.make_room(tuple(mat.shape), _batch_bytes(mat.shape))
        self.pending.append((spec, mat, job, read_s))
        self.pending_bytes += _batch_bytes(mat.shape)

    def make_room(self, shape: tuple[int, ...], nbytes: int) -> None:
        """Flush the pending batch unless a matrix of this shape and size can join it."""
        if self.pending and (
            tuple(self.pending[0][1].shape) != shape
            or self.pending_bytes + nbytes > self.budget
        ):
            self.flush()

    # -- reading ---------------------------------------------------------------------------
    def streams(self, job: TensorJob) -> bool:
        """Gram route reading a plain matrix in float64 blocks straight from the file.

        Always on CPU (no float32 copy to make: faster and smaller); on a GPU only for a matrix
        past the budget, since there a whole prefetched tensor keeps the device busy.
        """
        spec = job.matrices[0]
        return (self.opts.method == "gram" and job.decode == "plain" and len(job.matrices) == 1
                and not spec.index and math.prod(spec.shape) > 0
                and (self.device.type == "cpu" or 4 * math.prod(spec.shape) > self.budget))

    def load(self, job: TensorJob):
        return _STREAM if self.streams(job) else decode(job, self.source.path, self.device)

    def stream_gram(self, job: TensorJob, spec: MatrixSpec, paths: dict[str, Path]) -> list[_Outcome]:
        t0 = time.perf_counter()
        try:
            result = streamed_gram(
                paths[job.main.shard], job.main.entry, spec.shape, self.device, self.block_bytes,
                lambda: decode(job, paths.__getitem__, self.device), self.opts.svd_driver)
        except (RuntimeError, SpectrumError) as exc:
            failure = str(exc) if isinstance(exc, SpectrumError) else f"decomposition failed ({exc})"
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
                    log.warning("stopping: first journaling what the %d decompositions in flight "
                                "finish", len(self.pool.inflight))
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
        loads = prefetched([job for job, todo in work if todo], self.load, ahead)
        for job, todo in work:
            if todo:
                # decide before using the next tensor, so a finished batch does not sit beside it
                # (with --prefetch one more tensor is always in flight, on top of the budget)
                self.make_room(todo[0].shape, sum(_batch_bytes(t.shape) for t in todo))
                _, loaded, error, read_s = next(loads)
                self.consume(job, todo, loaded, error, read_s)
                del loaded
                bar.update(job.nbytes)
                bar.set_postfix_str(
                    f"{self.report.skipped + self.report.scanned + len(self.report.failed)}"
                    f"/{self.report.planned} modules", refresh=False)
            for shard in job.shards:
                users[shard] -= 1
                if users[shard] == 0:
                    self.settle()
                    self.source.release(shard)
        self.settle()
        loads.close()


def run_scan(p: ScanPlan, source: ShardSource, opts: ScanOptions) -> ScanReport:
    """Carry out a plan with shards from `source`; resumes from the journal unless fresh."""
    device = resolve_device(opts.device)
    opts.check(device.type)
    report = ScanReport(p.name, p.paths, str(device))
    report.planned = p.matrices
    started = time.perf_counter()
    with ScanLock(p.paths.lock):
        journal = Journal.open(p.paths.journal, p.header, fresh=opts.fresh)
        finished = journal.finished()  # under the lock: what is on disk now
        report.skipped = sum(1 for j in p.jobs for s in j.matrices if s.key in finished)
        initial = sum(j.nbytes for j in p.jobs if all(s.key in finished for s in j.matrices))
        bar = tqdm(total=sum(j.nbytes for j in p.jobs), initial=initial, unit="B",
                   unit_scale=True, unit_divisor=1024, desc=f"scan {p.name}", file=sys.stderr,
                   disable=not opts.progress, dynamic_ncols=True)
        try:
            _Runner(journal, source, device, opts, report).run(p.jobs, finished, bar)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            bar.close()
            journal.close()
            report.seconds = time.perf_counter() - started
            pending = sys.exc_info()[1]  # e.g. a full disk: report that, not the results failing
            try:
                report.results = write_results(journal.records.values(), p.paths, opts.names,
                                               opts.grouping)
            except SpectrumError:
                if pending is None:
                    raise
    if report.interrupted:
        raise ScanInterrupted(report)
    return report


def scan_checkpoint(ckpt: Checkpoint, source: ShardSource, opts: ScanOptions) -> ScanReport:
    """Plan and scan a checkpoint whose shards `source` provides."""
    return run_scan(plan_scan(ckpt, opts), source, opts)


def scan(path: str | Path, opts: ScanOptions | None = None, **overrides) -> ScanReport:
    """Scan a local checkpoint folder or file.

    Keyword arguments override fields of `opts` (or of the defaults): `scan(p, opts, device="cpu")`.
    """
    opts = dataclasses.replace(opts or ScanOptions(), **overrides)
    ckpt, folder = open_local(path)
    return scan_checkpoint(ckpt, LocalSource(folder), opts)
