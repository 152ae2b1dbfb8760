"""Runner: the loop over jobs. Reads each job (the next one ahead), hands its matrices to the
Batcher (or a streamed matrix straight to the pool), and releases each shard once all its
modules are journaled. `run_jobs` is the entry point driver.py and each torchrun rank call.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ..errors import ModuleFailed, ScanInterrupted
from ..journal.journal import Journal
from ..journal.spectra_log import SpectraLog, spectra_log_path
from ..kernel.workers import OrderedPool, default_workers, threads_per_worker
from ..layout.specs import MatrixSpec, TensorJob
from ..options import ScanOptions, ScanReport
from ..read.device import on_device
from ..read.prefetch import prefetched
from ..source.shards import ShardSource
from .batch import batch_bytes
from .batcher import Batcher
from .placement import STREAM, DevicePolicy
from .progress import Progress
from .recorder import Recorder
from .steps import STEPS, Steps
from .work import decompose_streamed

log = logging.getLogger(__name__)


class Runner:
    """One pass over the jobs; the pieces it drives are made by run_jobs."""

    def __init__(
        self,
        policy: DevicePolicy,
        steps: Steps,
        source: ShardSource,
        recorder: Recorder,
        workers: int,
    ):
        self.policy, self.steps, self.source, self.recorder = policy, steps, source, recorder
        self.pool = OrderedPool(workers)
        self.batcher = Batcher(policy, steps, self.pool, recorder)

    def consume(
        self,
        job: TensorJob,
        todo: list[MatrixSpec],
        loaded: object,
        error: ModuleFailed | None,
        read_s: float,
    ) -> None:
        if error is not None:
            self.recorder.fail(todo, job, read_s, error)
        elif loaded is STREAM:
            self.batcher.flush()
            # shard paths are resolved here: a Hub source is asked from this thread only
            paths = {shard: self.source.path(shard) for shard in job.shards}
            self.pool.submit(
                lambda: [decompose_streamed(job, todo[0], paths, self.policy, self.steps)],
                self.recorder.record_all,
            )
        else:
            assert isinstance(loaded, torch.Tensor)
            for spec in todo:
                mat = loaded[spec.index] if spec.index else loaded
                self.batcher.add(spec, mat.reshape(spec.shape), job, read_s / len(todo))

    def run(self, jobs: list[TensorJob], finished: set[str], progress: Progress) -> None:
        """The loop; on any stop, first journal what the workers have finished."""
        with threads_per_worker(self.pool.workers):
            try:
                self._run(jobs, finished, progress)
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

    def _run(self, jobs: list[TensorJob], finished: set[str], progress: Progress) -> None:
        users: dict[str, int] = {}
        for job in jobs:
            for shard in job.shards:
                users[shard] = users.get(shard, 0) + 1
        self.source.prepare(list(dict.fromkeys(s for job in jobs for s in job.shards)))
        work = [(job, [s for s in job.matrices if s.key not in finished]) for job in jobs]
        self.policy.keep_room_for_prefetch([job for job, todo in work if todo])
        device = self.policy.device
        loads = prefetched(
            [job for job, todo in work if todo],
            lambda job: self.policy.load(job, self.steps, self.source.path),
            self.policy.prefetch,
            init=lambda: self.steps.bind_thread(device),
        )
        for job, todo in work:
            if todo:
                # decide before using the next tensor, so a finished batch does not sit beside it
                # (with --prefetch one more tensor is always in flight, on top of the budget)
                nbytes = sum(batch_bytes(t.shape) for t in todo)
                self.batcher.make_room(tuple(todo[0].shape), nbytes, len(todo))
                _, loaded, error, read_s = next(loads)
                self.consume(job, todo, loaded, error, read_s)
                del loaded
                progress.done(job)
            for shard in job.shards:
                users[shard] -= 1
                if users[shard] == 0:
                    self.batcher.settle()
                    self.source.release(shard)
        self.batcher.settle()
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
    steps: Steps = STEPS,
) -> None:
    """Scan `jobs` into `journal`, skipping `finished` keys. Ctrl-C or SIGTERM (a
    KeyboardInterrupt) leaves as ScanInterrupted(report), the one interruption callers see."""
    report.skipped = sum(1 for j in jobs for s in j.matrices if s.key in finished)
    progress = Progress(jobs, finished, report, desc or f"scan {name}", opts.progress)
    spectra = SpectraLog(spectra_log_path(journal.path), fresh=opts.fresh)
    try:
        with on_device(device):  # this thread's current CUDA device; read threads bind theirs
            policy = DevicePolicy(device, opts)
            recorder = Recorder(journal, spectra, device, opts.method, report)
            workers = opts.workers or default_workers(device, opts.method)
            Runner(policy, steps, source, recorder, workers).run(jobs, finished, progress)
    except KeyboardInterrupt:
        report.interrupted = True
        raise ScanInterrupted(report) from None
    finally:
        progress.close()
        spectra.close()
