"""The scan's progress bar: its total and ETA follow the estimated work (layout/cost.job_cost,
m*n*k flops a matrix, as the torchrun split counts it), with bytes and modules shown beside."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from ..layout.cost import job_cost
from ..layout.specs import TensorJob
from ..options import ScanReport
from ..units import human_bytes


class Progress:
    """A tqdm bar over flops; `done(job)` after each job, whatever became of its modules."""

    def __init__(
        self, jobs: list[TensorJob], finished: set[str], report: ScanReport, desc: str, show: bool
    ):
        self.finished, self.report = finished, report
        total = sum(job_cost(j) for j in jobs)
        self.total_bytes = sum(j.nbytes for j in jobs)
        self.bytes = sum(j.nbytes for j in jobs if all(s.key in finished for s in j.matrices))
        self.bar = tqdm(
            total=total,
            initial=total - sum(job_cost(j, finished) for j in jobs),
            unit="flop",
            unit_scale=True,
            desc=desc,
            file=sys.stderr,
            disable=not show,
            dynamic_ncols=True,
        )

    def done(self, job: TensorJob) -> None:
        self.bar.update(job_cost(job, self.finished))
        if not all(s.key in self.finished for s in job.matrices):
            self.bytes += job.nbytes
        self._postfix(refresh=False)

    def _postfix(self, refresh: bool) -> None:
        r = self.report
        self.bar.set_postfix_str(
            f"{human_bytes(self.bytes)}/{human_bytes(self.total_bytes)}, "
            f"{r.skipped + r.scanned + len(r.failed)}/{r.planned} modules",
            refresh=refresh,
        )

    def close(self) -> None:
        """The last line counts every module journaled (the last batch lands after its read)."""
        if not self.bar.disable:
            self._postfix(refresh=True)
        self.bar.close()
