"""One journal line per module: what it was, where it came from, and its numbers or why it failed.

The fields are listed in docs/spec.md ("The journal"); the results files are a view of them.
"""

from __future__ import annotations

import math

from ..kernel.snr import SpectrumStats
from ..layout.specs import MatrixSpec, TensorJob


def failure_of(stats: SpectrumStats | None) -> str | None:
    """Why statistics that were computed still cannot rank the module (None when they can)."""
    if stats is None:
        return None
    if stats.sigma_max == 0:
        return "all-zero matrix: its spectrum is empty"
    if not math.isfinite(stats.snr):
        return f"SNR is not finite ({stats.snr})"
    return None


def numerical_rank_of(rec: dict) -> tuple[int, int] | None:
    """(numerical rank, min(m, n)) of a journal record; None for records written before the rank
    was kept, or damaged ones (docs/spec.md, "The numerical floor")."""
    rank, shape = rec.get("numerical_rank"), rec.get("shape")
    if not isinstance(rank, int) or isinstance(rank, bool):
        return None
    if not (isinstance(shape, list) and len(shape) == 2):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        return None
    k = min(shape)
    return (rank, k) if 0 <= rank <= k else None


def below_full_rank(rec: dict) -> bool:
    """Whether a journal record's numerical rank is below min(m, n): its smallest singular values
    are rounding error and its SNR means nothing. Records without a known rank never are."""
    known = numerical_rank_of(rec)
    return known is not None and known[0] < known[1]


def module_record(
    spec: MatrixSpec,
    job: TensorJob,
    *,
    seconds: float,
    method: str,
    device: str,
    stats: SpectrumStats | None = None,
    failure: str | None = None,
    note: str | None = None,
    spectrum: list[str | int] | None = None,
) -> dict:
    """The journal line of one module: status ok with its statistics, or failed with the reason."""
    rec: dict[str, object] = {
        "key": spec.key,
        "trainer_key": spec.trainer_key or spec.key,
        "type": spec.type,
        "tensor": job.main.name,
        "shape": list(spec.shape),
        "dtype": job.main.entry.dtype,
        "shard": job.main.shard,
    }
    if failure is None:
        assert stats is not None, "a module without a failure has statistics"
        rec.update(
            status="ok",
            snr=stats.snr,
            sigma_max=stats.sigma_max,
            threshold=stats.threshold,
            n_signal=stats.n_signal,
        )
        if stats.numerical_rank is not None:
            rec["numerical_rank"] = stats.numerical_rank  # docs/spec.md, "The numerical floor"
    else:
        rec.update(status="failed", reason=failure)
    rec.update(seconds=round(seconds, 6), method=method, device=device)
    if note:
        rec["fallback"] = note
    if spectrum is not None:
        rec["spectrum"] = spectrum  # [log file, offset, count, crc32] (spectra_log.py)
    return rec
