"""The scan: plan the matrices, read one tensor at a time, decompose, journal, write results.

`scan()` is the Python API the CLI wraps. A source hands out local shard paths (`path`) and is told
when a shard is no longer needed (`release`), so the same loop serves local folders and the Hub.
"""

from __future__ import annotations

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
from .spectrum import SpectrumStats, spectrum_stats

DEFAULT_BATCH_BYTES = 256 * 1024**2


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

    def record(self, spec: MatrixSpec, job: TensorJob, seconds: float,
               stats: SpectrumStats | None = None, failure: str | None = None) -> None:
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
        rec.update(seconds=round(seconds, 6), method=self.opts.method, device=str(self.device))
        self.journal.append(rec)  # count only what is on disk (Ctrl-C may land mid-append)
        if failure is None:
            self.report.scanned += 1
        else:
            self.report.failed.append((spec.key, failure))

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        t0 = time.perf_counter()
        mats = [m for _, m, _, _ in batch]
        try:
            stats = spectrum_stats(torch.stack(mats) if len(mats) > 1 else mats[0][None])
        except RuntimeError:
            stats = None  # one bad matrix spoils a batch: redo them one by one
        if stats is None:
            for spec, mat, job, read_s in batch:
                t1 = time.perf_counter()
                try:
                    (st,) = spectrum_stats(mat[None])
                    self.record(spec, job, read_s + time.perf_counter() - t1, st)
                except RuntimeError as exc:
                    self.record(spec, job, read_s, failure=f"SVD failed ({exc})")
            return
        share = (time.perf_counter() - t0) / len(batch)
        for (spec, _, job, read_s), st in zip(batch, stats):
            self.record(spec, job, read_s + share, st)

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
            or self.pending_bytes + nbytes > self.opts.batch_bytes
        ):
            self.flush()

    def run(self, jobs: list[TensorJob], bar) -> None:
        done = self.journal.finished()  # failed modules are tried again
        users: dict[str, int] = {}
        for job in jobs:
            for shard in job.shards:
                users[shard] = users.get(shard, 0) + 1
        order = list(dict.fromkeys(s for job in jobs for s in job.shards))
        self.source.prepare(order)
        for job in jobs:
            todo = [s for s in job.matrices if s.key not in done]
            if todo:
                # decide before reading, so a finished batch never sits beside the next tensor
                self.make_room(todo[0].shape, sum(_batch_bytes(t.shape) for t in todo))
                t0 = time.perf_counter()
                try:
                    decoded = decode(job, self.source.path, self.device)
                except SpectrumError as exc:
                    decoded = None
                    for spec in todo:
                        self.record(spec, job, 0.0, failure=str(exc))
                if decoded is not None:
                    read_s = (time.perf_counter() - t0) / len(todo)
                    for spec in todo:
                        mat = decoded[spec.index] if spec.index else decoded
                        self.add(spec, mat.reshape(spec.shape), job, read_s)
                    del decoded
                bar.update(job.nbytes)
                bar.set_postfix_str(
                    f"{self.report.skipped + self.report.scanned + len(self.report.failed)}"
                    f"/{self.report.planned} modules", refresh=False)
            for shard in job.shards:
                users[shard] -= 1
                if users[shard] == 0:
                    self.flush()
                    self.source.release(shard)
        self.flush()


def scan_checkpoint(ckpt: Checkpoint, source: ShardSource, opts: ScanOptions,
                    warn: Callable[[str], None] = _warn) -> ScanReport:
    """Scan a checkpoint whose shards `source` provides; resumes from the journal unless fresh."""
    device = resolve_device(opts.device)
    if opts.method != "exact":
        raise SpectrumError(f"--method {opts.method!r}: expected exact")
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
