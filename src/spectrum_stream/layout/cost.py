"""The estimated cost of a job: what the torchrun split balances and the progress bar counts.

A matrix's decomposition takes about m*n*k flops (k = min(m, n)) for `svdvals` and for the Gram
route alike; reading is cheap beside it, so bytes are a poor measure of the work left (on a model
mixing k, e.g. MoE experts at k=2048 beside attention at k=7168, several times off).
"""

from __future__ import annotations

from .specs import TensorJob


def job_cost(job: TensorJob, finished: set[str] | frozenset[str] = frozenset()) -> float:
    """Flops of the matrices of `job` still to do (m*n*k each)."""
    return float(
        sum(
            m * n * min(m, n)
            for spec in job.matrices
            if spec.key not in finished
            for m, n in [spec.shape]
        )
    )
