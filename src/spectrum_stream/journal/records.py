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
    spectrum: list[int] | None = None,
) -> dict:
    """The journal line of one module: status ok with its statistics, or failed with the reason."""
    rec = {
        "key": spec.key,
        "trainer_key": spec.trainer_key or spec.key,
        "type": spec.type,
        "tensor": job.main.name,
        "shape": list(spec.shape),
        "dtype": job.main.entry.dtype,
        "shard": job.main.shard,
    }
    if failure is None:
        rec.update(
            status="ok",
            snr=stats.snr,
            sigma_max=stats.sigma_max,
            threshold=stats.threshold,
            n_signal=stats.n_signal,
        )
    else:
        rec.update(status="failed", reason=failure)
    rec.update(seconds=round(seconds, 6), method=method, device=device)
    if note:
        rec["fallback"] = note
    if spectrum is not None:
        rec["spectrum"] = spectrum  # [log file, offset, count, crc32] (spectra_log.py)
    return rec
