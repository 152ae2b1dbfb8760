"""The SNR of one matrix from its singular values (docs/spec.md, "The SNR"), and the exact route
to those values: `torch.linalg.svdvals` in float32, the original tool's arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..modes import APPROXIMATE_DRIVERS  # noqa: F401  (re-exported: never journaled as exact)
from ..read.device import is_cuda

MP_IQR_TO_SIGMA = 1.349  # interquartile range of a unit normal


@dataclass(frozen=True)
class SpectrumStats:
    """What one matrix's spectrum says: the SNR and the numbers it came from."""

    snr: float
    sigma_max: float
    threshold: float
    n_signal: int


def singular_values(batch: torch.Tensor) -> torch.Tensor:
    """All singular values, descending, of each [m, n] matrix in a [B, m, n] float32 batch."""
    return torch.linalg.svdvals(batch)


def thresholds(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    k = s.shape[-1]
    q = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype, device=s.device), dim=-1)
    sigma = (q[1] - q[0]) / MP_IQR_TO_SIGMA
    return sigma * (1.0 + math.sqrt(k / max(m, n)))


def snr_from_singular_values(s: torch.Tensor, m: int, n: int) -> list[SpectrumStats]:
    """SNR for each row of `s` ([B, k], descending), per docs/spec.md, quirks included."""
    threshold = thresholds(s, m, n)
    above = s > threshold[:, None]
    signal = torch.where(above, s, 0.0).sum(-1)
    noise = torch.where(above, 0.0, s).sum(-1)
    n_noise = (~above).sum(-1)
    noise = torch.where(n_noise == 0, torch.ones_like(noise), noise)
    snr = signal / noise / s[:, 0]
    rows = zip(snr.tolist(), s[:, 0].tolist(), threshold.tolist(), above.sum(-1).tolist())
    return [SpectrumStats(*row) for row in rows]


def spectrum_stats(batch: torch.Tensor) -> list[SpectrumStats]:
    """Decompose a [B, m, n] batch exactly and return each matrix's SNR statistics."""
    _, m, n = batch.shape
    return snr_from_singular_values(singular_values(batch), m, n)


QR_MIN_RATIO = 2  # a matrix at least this tall is decomposed through its QR's R factor (on CUDA)
GESVD_MIN_K = 512  # CUDA: gesvd from this k up (gesvdj, torch's default, allocates U and is
# called possibly unstable for large matrices by torch's docs); bench/bench_kernels.py measures it


def default_driver(device_type: str, k: int) -> str | None:
    """The cuSOLVER driver for a k-column problem when --svd-driver is not given (None: torch's)."""
    return "gesvd" if device_type == "cuda" and k >= GESVD_MIN_K else None


def r_factor(batch: torch.Tensor) -> torch.Tensor:
    """[B, n, n] R of the QR of tall [B, m, n] matrices: the same singular values, and an SVD
    of k x k instead of m x k (the bidiagonalization is the costly part)."""
    return torch.linalg.qr(batch, mode="r")[1]


def exact_singular_values(
    batch: torch.Tensor, driver: str | None = None, qr: bool | None = None
) -> torch.Tensor:
    """svdvals of a [B, m, n] batch, on its tall orientation (same values; LAPACK is up to 3x
    faster there). A matrix at least QR_MIN_RATIO times taller than wide goes through its R
    factor when `qr` (default: on CUDA; CPU LAPACK does that itself). `driver` is cuSOLVER's,
    used on CUDA only (a CPU fallback ignores it; default: `default_driver`)."""
    if batch.shape[-2] < batch.shape[-1]:
        batch = batch.mT
    cuda = is_cuda(batch.device)
    if (cuda if qr is None else qr) and batch.shape[-2] >= QR_MIN_RATIO * batch.shape[-1]:
        batch = r_factor(batch)
    driver = (driver or default_driver("cuda", batch.shape[-1])) if cuda else None
    return torch.linalg.svdvals(batch, driver=driver) if driver else singular_values(batch)
