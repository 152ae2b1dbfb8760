"""The scan loop's pieces on their own: the progress bar's measure, the failure types."""

from __future__ import annotations

import torch

from spectrum_stream.errors import ModuleFailed, SpectrumError
from spectrum_stream.kernel import route
from spectrum_stream.layout.cost import job_cost
from spectrum_stream.layout.jobs import plan_jobs
from spectrum_stream.options import ScanReport
from spectrum_stream.scanloop.progress import Progress
from spectrum_stream.source.checkpoint import open_local


def test_the_progress_bar_counts_flops_and_shows_bytes(mixtral_dir, capsys):
    """Total and position are m*n*k sums (what the torchrun split balances), not bytes: the
    finished modules count from the start, each job adds what it still had to do."""
    ckpt, _ = open_local(mixtral_dir)
    jobs = plan_jobs(ckpt, None, None)
    costs = [job_cost(j) for j in jobs]
    assert len(set(costs)) > 1  # shapes differ: a cost that were bytes would weigh them otherwise
    finished = {jobs[0].matrices[0].key}
    report = ScanReport("m", None, "cpu", planned=sum(len(j.matrices) for j in jobs))
    progress = Progress(jobs, finished, report, "scan m", show=True)
    m, n = jobs[0].matrices[0].shape
    assert progress.bar.total == sum(costs)
    assert progress.bar.n == m * n * min(m, n)
    for job in jobs:
        if any(s.key not in finished for s in job.matrices):
            progress.done(job)
    assert progress.bar.n == sum(costs)
    assert progress.bytes == sum(j.nbytes for j in jobs)
    postfix = progress.bar.postfix
    progress.close()
    assert "kB/" in postfix and f"/{report.planned} modules" in postfix
    assert "flop" in capsys.readouterr().err


def test_a_matrix_that_fails_is_a_value_not_a_stop(monkeypatch):
    """decompose_each returns a ModuleFailed for the matrix whose SVD fails (the batch goes on),
    and ModuleFailed is no SpectrumError: nothing that stops a run on bad input catches it."""
    real = route.decompose

    def fail_second(mats, method, driver=None):
        if len(mats) == 1 and mats[0][0, 0] == 2:
            raise RuntimeError("no convergence (simulated)")
        if len(mats) > 1:
            raise RuntimeError("batch failed (simulated)")
        return real(mats, method, driver)

    monkeypatch.setattr(route, "decompose", fail_second)
    g = torch.Generator().manual_seed(3)
    mats = [torch.randn(12, 8, generator=g) for _ in range(3)]
    mats[1][0, 0] = 2
    out = route.decompose_each(mats, "exact")
    assert isinstance(out[1], ModuleFailed) and "no convergence" in out[1].reason
    assert all(isinstance(d, route.Decomposed) for d in (out[0], out[2]))
    assert not issubclass(ModuleFailed, SpectrumError)


def test_every_exception_class_of_the_package_is_in_errors():
    import importlib
    import inspect
    import pkgutil

    import spectrum_stream

    homes = set()
    for info in pkgutil.walk_packages(spectrum_stream.__path__, "spectrum_stream."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("spectrum_stream"):
                homes.add(cls.__module__)
    assert homes == {"spectrum_stream.errors"}
