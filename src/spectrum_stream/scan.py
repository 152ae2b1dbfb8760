"""The scan: plan the matrices, read one tensor at a time, decompose, journal, write results.

`scan()` is the Python API the CLI wraps. A source hands out local shard paths (`path`) and is told
when a shard is no longer needed (`release`), so the same loop serves local folders and the Hub.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, open_local
from .decode import decode
from .device import resolve_device
from .errors import SpectrumError
from .journal import Journal, ScanLock
from .layout import MatrixSpec, TensorJob, plan
from .results import results_paths, write_results
from .loader import block_len, iter_col_blocks, iter_row_blocks
from .prefetch import prefetched
from .workers import OrderedPool, default_workers, threads_per_worker
from .spectrum import (METHODS, SpectrumStats, accumulate_gram, decompose,
                       gram_spectrum, singular_values_from_gram, GRAM_TOLERANCE)

DEFAULT_BATCH_BYTES = 256 * 1024**2
_STREAM = object()  # load() result for a matrix the gram route reads in blocks itself


class ShardSource(Protocol):
    """Where shard files come from: a local folder, or the Hub one download at a time."""

    def prepare(self, shards: list[str]) -> None: ...  # shards the scan will ask for, in order
    def path(self, shard: str) -> Path: ...  # blocks until the shard is on local disk
    def release(self, shard: str) -> None: ...  # every tensor of this shard is journaled


class LocalSource:
    """Shards that are already in a local folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def prepare(self, shards: list[str]) -> None:
        pass

    def path(self, shard: str) -> Path:
        return self.folder / shard

    def release(self, shard: str) -> None:
        pass


@dataclass
class ScanOptions:
    """Settings of one scan; `method`, `include` and `exclude` are part of the resume fingerprint."""

    out_dir: Path = Path("model_snr_results")
    name: str | None = None
    device: str = "auto"
    include: str | None = None
    exclude: str | None = None
    method: str = "exact"
    fresh: bool = False
    batch_bytes: int = DEFAULT_BATCH_BYTES
    progress: bool = True
    prefetch: bool | None = None  # read the next tensor during the current SVD; None: on for CUDA
    svd_driver: str | None = None  # CUDA only: gesvd | gesvdj | gesvda (None: torch's default)
    max_gpu_mem: int | None = None  # CUDA only: bytes a batch, or a gram block, may take
    workers: int | None = None  # CPU only: matrices decomposed at once (None: 2 for gram, else 1)


@dataclass
class ScanReport:
    """What a scan did, for the summary and for callers of the API."""

    model_name: str
    paths: dict[str, Path]
    device: str
    planned: int = 0
    skipped: int = 0
    scanned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    results: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False


class ScanInterrupted(SpectrumError):
    """Ctrl-C or SIGTERM: finished modules are kept; the report says how far it got."""

    def __init__(self, report: ScanReport):
        super().__init__("scan interrupted")
        self.report = report


def _batch_bytes(shape) -> int:
    """Memory a matrix takes in a batch: its float32 copy and its slot in the stacked batch."""
    return math.prod(shape) * 4 * 2


@dataclass
class _Outcome:
    """One matrix's result (or failure) as a unit of work returns it, journaled in order later."""

    spec: MatrixSpec
    job: TensorJob
    seconds: float
    stats: SpectrumStats | None = None
    failure: str | None = None
    method: str | None = None
    note: str | None = None


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


class _Runner:
    """The loop over jobs, with same-shape batching and per-shard release."""

    def __init__(self, journal: Journal, source: ShardSource, device: torch.device,
                 opts: ScanOptions, report: ScanReport, warn: Callable[[str], None]):
        self.journal, self.source, self.device = journal, source, device
        self.opts, self.report, self.warn = opts, report, warn
        self.pending: list[tuple[MatrixSpec, torch.Tensor, TensorJob, float]] = []
        self.pending_bytes = 0
        self.budget = opts.batch_bytes
        self.block_bytes = 128 * 1024**2  # float64 blocks of the gram route read from the file
        if device.type == "cuda" and opts.max_gpu_mem:
            self.budget = min(self.budget, opts.max_gpu_mem)
            self.block_bytes = min(self.block_bytes, opts.max_gpu_mem)
        self.pool = OrderedPool(opts.workers or default_workers(device, opts.method))

    def record(self, spec: MatrixSpec, job: TensorJob, seconds: float,
               stats: SpectrumStats | None = None, failure: str | None = None,
               method: str | None = None, note: str | None = None) -> None:
        rec = {
            "key": spec.key, "type": spec.type, "tensor": job.main.name,
            "shape": list(spec.shape), "dtype": job.main.entry.dtype, "shard": job.main.shard,
        }
        if failure is None and stats is not None:
            if stats.sigma_max == 0:
                failure = "all-zero matrix: its spectrum is empty"
            elif not math.isfinite(stats.snr):
                failure = f"SNR is not finite ({stats.snr})"
        if failure is None:
            rec.update(status="ok", snr=stats.snr, sigma_max=stats.sigma_max,
                       threshold=stats.threshold, n_signal=stats.n_signal)
        else:
            rec.update(status="failed", reason=failure)
            self.warn(f"{job.main.shard}: {spec.key}: {failure}; left out of the results")
        rec.update(seconds=round(seconds, 6), method=method or self.opts.method,
                   device=str(self.device))
        if note:
            rec["fallback"] = note
        self.journal.append(rec)  # count only what is on disk (Ctrl-C may land mid-append)
        if failure is None:
            self.report.scanned += 1
        else:
            self.report.failed.append((spec.key, failure))

    def record_all(self, outcomes: list[_Outcome]) -> None:
        for o in outcomes:
            self.record(o.spec, o.job, o.seconds, o.stats, o.failure, o.method, o.note)

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
        try:
            results = decompose([m for _, m, _, _ in batch], self.opts.method, self.opts.svd_driver)
        except RuntimeError:
            results = None  # one bad matrix spoils a batch: redo them one by one
        if results is not None:
            share = (time.perf_counter() - t0) / len(batch)
            return [_Outcome(spec, job, read_s + share, r.stats, method=r.method, note=r.note)
                    for (spec, _, job, read_s), r in zip(batch, results)]
        out = []
        for spec, mat, job, read_s in batch:
            t1 = time.perf_counter()
            try:
                (r,) = decompose([mat], self.opts.method, self.opts.svd_driver)
                out.append(_Outcome(spec, job, read_s + time.perf_counter() - t1, r.stats,
                                    method=r.method, note=r.note))
            except RuntimeError as exc:
                out.append(_Outcome(spec, job, read_s, failure=f"SVD failed ({exc})"))
        return out

    def add(self, spec: MatrixSpec, mat: torch.Tensor, job: TensorJob, read_s: float) -> None:
        if mat.numel() == 0:
            self.record(spec, job, read_s, failure=f"empty tensor (shape {list(mat.shape)})")
            return
        # a sum is cheap and non-finite whenever a value is; only then look element by element
        if not math.isfinite(float(mat.sum())) and not bool(torch.isfinite(mat).all()):
            self.record(spec, job, read_s, failure="holds NaN or Inf values")
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

    def stream_gram(self, job: TensorJob, spec: MatrixSpec,
                    paths: dict[str, Path]) -> list[_Outcome]:
        """Gram matrix summed over blocks read straight from the file, then its eigenvalues."""
        t0 = time.perf_counter()
        try:
            return [self._stream_gram(job, spec, paths, t0)]
        except (RuntimeError, SpectrumError) as exc:
            return [_Outcome(spec, job, time.perf_counter() - t0,
                             failure=f"decomposition failed ({exc})")]

    def _stream_gram(self, job: TensorJob, spec: MatrixSpec, paths: dict[str, Path],
                     t0: float) -> _Outcome:
        m, n = spec.shape
        path, entry = paths[job.main.shard], job.main.entry
        if m >= n:
            blocks = iter_row_blocks(path, entry, block_len(n, self.block_bytes))
            g = accumulate_gram(blocks, n, True, self.device)
        else:
            blocks = iter_col_blocks(path, entry, block_len(m, self.block_bytes))
            g = accumulate_gram(blocks, m, False, self.device)
        # a NaN or Inf anywhere in W makes its row's or column's squares, a diagonal entry, non-finite
        if not bool(torch.isfinite(g.diagonal()).all()):
            return _Outcome(spec, job, time.perf_counter() - t0, failure="holds NaN or Inf values")
        (stats,), (bound,) = gram_spectrum(singular_values_from_gram(g[None]), m, n)
        if bound <= GRAM_TOLERANCE:
            return _Outcome(spec, job, time.perf_counter() - t0, stats, method="gram")
        del g
        full = decode(job, paths.__getitem__, self.device).reshape(spec.shape)
        (r,) = decompose([full], "exact", self.opts.svd_driver)
        return _Outcome(spec, job, time.perf_counter() - t0, r.stats, method="exact",
                        note=f"gram error bound {bound:.1e} > {GRAM_TOLERANCE:.0e}")

    def consume(self, job: TensorJob, todo: list[MatrixSpec], loaded, error, read_s: float) -> None:
        if error is not None:
            for spec in todo:
                self.record(spec, job, read_s, failure=str(error))
        elif loaded is _STREAM:
            self.flush()
            # shard paths are resolved here: a Hub source is asked from this thread only
            paths = {shard: self.source.path(shard) for shard in job.shards}
            self.pool.submit(lambda: self.stream_gram(job, todo[0], paths), self.record_all)
        else:
            for spec in todo:
                mat = loaded[spec.index] if spec.index else loaded
                self.add(spec, mat.reshape(spec.shape), job, read_s / len(todo))

    def run(self, jobs: list[TensorJob], bar) -> None:
        with threads_per_worker(self.pool.workers):
            try:
                self._run(jobs, bar)
            except KeyboardInterrupt:
                with contextlib.suppress(Exception):  # Ctrl-C is what to report
                    self.pool.deliver_finished()  # computed is computed: journal it first
                raise
            except BaseException:
                if self.pool.inflight:
                    self.warn(f"stopping: first journaling what the {len(self.pool.inflight)} "
                              "decompositions in flight finish")
                with contextlib.suppress(Exception):  # the first error is the one to report
                    self.pool.drain()  # e.g. a failed download must not cost the workers' results
                raise
            finally:
                self.pool.close()

    def _run(self, jobs: list[TensorJob], bar) -> None:
        done = self.journal.finished()  # failed modules are tried again
        users: dict[str, int] = {}
        for job in jobs:
            for shard in job.shards:
                users[shard] = users.get(shard, 0) + 1
        self.source.prepare(list(dict.fromkeys(s for job in jobs for s in job.shards)))
        work = [(job, [s for s in job.matrices if s.key not in done]) for job in jobs]
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


def scan_checkpoint(ckpt: Checkpoint, source: ShardSource, opts: ScanOptions,
                    warn: Callable[[str], None] = _warn) -> ScanReport:
    """Scan a checkpoint whose shards `source` provides; resumes from the journal unless fresh."""
    device = resolve_device(opts.device)
    if opts.method not in METHODS:
        raise SpectrumError(f"--method {opts.method!r}: expected one of {', '.join(METHODS)}")
    if opts.svd_driver and device.type != "cuda":
        raise SpectrumError(f"--svd-driver {opts.svd_driver}: only for CUDA devices, not {device}")
    if opts.workers is not None and (opts.workers < 1 or (opts.workers > 1 and device.type != "cpu")):
        raise SpectrumError(f"--workers {opts.workers}: a count of 1 or more, above 1 only on CPU "
                            f"(device {device})")
    name = opts.name or ckpt.name
    paths = results_paths(Path(opts.out_dir), name)
    jobs = plan(ckpt, opts.include, opts.exclude)
    if not jobs:
        raise SpectrumError(f"{name}: no weight matrices to scan (check --include/--exclude)")
    header = {
        "checkpoint": ckpt.fingerprint(),
        "settings": {"method": opts.method, "include": opts.include, "exclude": opts.exclude},
    }
    report = ScanReport(name, paths, str(device))
    report.planned = sum(len(j.matrices) for j in jobs)
    started = time.perf_counter()
    with ScanLock(paths["lock"]):
        journal = Journal.open(paths["journal"], header, fresh=opts.fresh)
        done = journal.finished()
        report.skipped = sum(1 for j in jobs for s in j.matrices if s.key in done)
        initial = sum(j.nbytes for j in jobs if all(s.key in done for s in j.matrices))
        bar = tqdm(total=sum(j.nbytes for j in jobs), initial=initial, unit="B", unit_scale=True,
                   unit_divisor=1024, desc=f"scan {name}", file=sys.stderr,
                   disable=not opts.progress, dynamic_ncols=True)
        try:
            _Runner(journal, source, device, opts, report, warn).run(jobs, bar)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            bar.close()
            journal.close()
            report.seconds = time.perf_counter() - started
            pending = sys.exc_info()[1]  # e.g. a full disk: report that, not the results failing
            try:
                report.results = write_results(journal.records.values(), paths)
            except SpectrumError:
                if pending is None:
                    raise
    if report.interrupted:
        raise ScanInterrupted(report)
    return report


def scan(path: str | Path, opts: ScanOptions | None = None, **kwargs) -> ScanReport:
    """Scan a local checkpoint folder or file. Keyword arguments override ScanOptions fields."""
    opts = opts or ScanOptions(**kwargs)
    ckpt, folder = open_local(path)
    return scan_checkpoint(ckpt, LocalSource(folder), opts)
