"""Recorder: each module's singular values, then its journal line, then the report's count."""

from __future__ import annotations

import logging

import torch

from ..errors import ModuleFailed
from ..journal.journal import Journal
from ..journal.records import failure_of, module_record
from ..journal.spectra_log import SpectraLog
from ..layout.specs import MatrixSpec, TensorJob
from ..options import ScanReport
from .work import Outcome

log = logging.getLogger(__name__)


class Recorder:
    """Journals outcomes in the order they are handed in (values first, each fsync'd)."""

    def __init__(
        self,
        journal: Journal,
        spectra: SpectraLog,
        device: torch.device,
        method: str,
        report: ScanReport,
    ):
        self.journal, self.spectra, self.device = journal, spectra, device
        self.method, self.report = method, report

    def record(self, o: Outcome) -> None:
        stats = o.result.stats if o.result is not None else None
        failure = o.failure.reason if o.failure is not None else failure_of(stats)
        spectrum = None
        if failure is None and o.result is not None and o.result.values is not None:
            spectrum = self.spectra.append(o.result.values.numpy())
        rec = module_record(
            o.spec,
            o.job,
            seconds=o.seconds,
            device=str(self.device),
            method=o.result.method if o.result else self.method,
            stats=stats,
            failure=failure,
            note=o.result.note if o.result else None,
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

    def record_all(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.record(o)

    def fail(
        self, specs: list[MatrixSpec], job: TensorJob, read_s: float, failure: ModuleFailed
    ) -> None:
        """Journal every module of `specs` as failed for one reason (e.g. its tensor's read)."""
        for spec in specs:
            self.record(Outcome(spec, job, read_s, failure=failure))
