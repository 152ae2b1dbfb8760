"""A scan from start to end: set it up once, run the loop (scanloop/) under the results lock, and
write the results files from the journal at the end (docs/architecture.md walks through it).

`prepare_scan` makes the setup once (jobs, result paths, the journal's finished modules); a Hub
scan makes it, looks at it, and hands it to `run_setup` like a local scan does.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import SpectrumError
from .journal.journal import Journal
from .journal.lock import ScanLock
from .journal.ranks import finished_everywhere, fold_rank_journals
from .layout.jobs import plan_jobs
from .layout.specs import TensorJob
from .options import ScanOptions, ScanReport
from .read.device import resolve_device
from .results.files import write_results
from .results.paths import ResultPaths
from .scanloop import STEPS, Steps, run_jobs
from .source.checkpoint import Checkpoint, open_local
from .source.shards import LocalSource, ShardSource

log = logging.getLogger(__name__)


@dataclass
class ScanSetup:
    """Everything decided before the first read: made once, by `prepare_scan`."""

    ckpt: Checkpoint
    name: str
    jobs: list[TensorJob]
    paths: ResultPaths
    header: dict  # the journal header: what a resume must match
    finished: set[str]  # keys the journal already holds (empty with --fresh)

    @property
    def matrices(self) -> int:
        return sum(len(j.matrices) for j in self.jobs)


def prepare_scan(ckpt: Checkpoint, opts: ScanOptions) -> ScanSetup:
    """The jobs, where results go, and what the journal already holds."""
    name = opts.name or ckpt.name
    jobs = plan_jobs(ckpt, opts.include, opts.exclude)
    if not jobs:
        raise SpectrumError(f"{name}: no weight matrices to scan (check --include/--exclude)")
    paths = ResultPaths.for_model(Path(opts.out_dir), name)
    header = {
        "checkpoint": ckpt.fingerprint(),
        "settings": {"method": opts.method, "include": opts.include, "exclude": opts.exclude},
    }
    finished = set() if opts.fresh else finished_everywhere(paths.journal)
    return ScanSetup(ckpt, name, jobs, paths, header, finished)


def in_job_order(records: dict[str, dict], jobs: list[TensorJob]) -> list[dict]:
    """Journal records in plan order: results files look the same however the work was split or
    resumed. A key the plan lacks (a damaged line) is left out: it is not this checkpoint's."""
    order = {s.key: i for i, s in enumerate(s for j in jobs for s in j.matrices)}
    return sorted((r for r in records.values() if r["key"] in order), key=lambda r: order[r["key"]])


def run_setup(
    p: ScanSetup, source: ShardSource, opts: ScanOptions, steps: Steps = STEPS
) -> ScanReport:
    """Carry out a plan with shards from `source`; resumes from the journal unless fresh.
    Ctrl-C or SIGTERM: ScanInterrupted, once the results files hold what finished."""
    device = resolve_device(opts.device)
    opts.check(device.type)
    report = ScanReport(p.name, p.paths, str(device))
    report.planned = p.matrices
    started = time.perf_counter()
    with ScanLock(p.paths.lock):
        journal = Journal.open(p.paths.journal, p.header, fresh=opts.fresh)
        try:
            fold_rank_journals(journal, fresh=opts.fresh)  # a multi-rank scan's journals
        except BaseException:
            journal.close()
            raise
        finished = journal.finished()  # under the lock: what is on disk now
        try:
            run_jobs(p.name, p.jobs, journal, finished, source, device, opts, report, steps=steps)
        finally:
            journal.close()
            report.seconds = time.perf_counter() - started
            pending = sys.exc_info()[1]  # e.g. a full disk: report that, not the results failing
            try:
                report.results = write_results(
                    in_job_order(journal.records, p.jobs), p.paths, opts.names, opts.grouping
                )
            except SpectrumError:
                if pending is None:
                    raise
    return report


def scan_checkpoint(
    ckpt: Checkpoint, source: ShardSource, opts: ScanOptions, steps: Steps = STEPS
) -> ScanReport:
    """Plan and scan a checkpoint whose shards `source` provides (`steps`: scanloop/steps.py)."""
    return run_setup(prepare_scan(ckpt, opts), source, opts, steps)


def scan(path: str | Path, opts: ScanOptions | None = None, **overrides) -> ScanReport:
    """Scan a local checkpoint folder or file.

    Keyword arguments override fields of `opts` (or of the defaults): `scan(p, opts, device="cpu")`.
    """
    opts = dataclasses.replace(opts or ScanOptions(), **overrides)
    ckpt, folder = open_local(path)
    return scan_checkpoint(ckpt, LocalSource(folder), opts)
