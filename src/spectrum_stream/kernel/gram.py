"""The gram route: the eigenvalues of the k x k Gram matrix (W Wᵀ or WᵀW, built in float64) are
the squared singular values. One matrix product plus a symmetric eigensolver: faster than svdvals
(bench/RESULTS.md), and `gram_error_bound` says, per matrix, how far its SNR can be from exact;
route.py decides, with one policy, when that is too far and the matrix is redone exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from .snr import MP_IQR_TO_SIGMA, SpectrumStats, rank_floor, snr_from_singular_values, thresholds

GRAM_BLOCK_BYTES = 128 * 1024**2  # float64 bytes of one block a Gram matrix is summed from
_F64_EPS = torch.finfo(torch.float64).eps
NUMPY_MIN_K = 512  # below this torch's own Gram route was faster on CPU (bench/bench_kernels.py)


def gram_matrix(w: torch.Tensor, block_bytes: int = GRAM_BLOCK_BYTES) -> torch.Tensor:
    """[k, k] float64 Gram matrix of the smaller side of one [m, n] matrix.

    Built from float64 blocks of `block_bytes`, so no float64 copy of the whole matrix exists.
    """
    m, n = w.shape
    if m >= n:
        step = max(1, block_bytes // (8 * n))
        return accumulate_gram((w[i : i + step] for i in range(0, m, step)), n, True, w.device)
    step = max(1, block_bytes // (8 * m))
    return accumulate_gram((w[:, j : j + step] for j in range(0, n, step)), m, False, w.device)


def accumulate_gram(
    chunks: Iterable[torch.Tensor], k: int, rows: bool, device: torch.device
) -> torch.Tensor:
    """A [k, k] float64 Gram matrix summed over pieces of one matrix, never holding it whole.

    rows=True: pieces are row blocks [r, k] of a tall matrix, G = Σ Pᵀ P (= WᵀW);
    rows=False: pieces are column blocks [k, c] of a wide matrix, G = Σ P Pᵀ (= W Wᵀ).
    On CPU (k >= NUMPY_MIN_K) the products go through numpy, whose BLAS call for P·Pᵀ is a
    symmetric rank-k update (half the flops of torch's general product; bench/RESULTS.md).
    """
    if device.type == "cpu" and k >= NUMPY_MIN_K:
        acc = np.zeros((k, k), dtype=np.float64)
        for piece in chunks:
            a = piece.to(torch.float64).numpy()
            acc += np.dot(a.T, a) if rows else np.dot(a, a.T)
        return torch.from_numpy(acc)
    g = torch.zeros(k, k, dtype=torch.float64, device=device)
    for piece in chunks:
        p = piece.to(device).to(torch.float64)  # convert on the device: 1/4 of the bytes to copy
        g.addmm_(p.mT, p) if rows else g.addmm_(p, p.mT)
    return g


def singular_values_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, from [B, k, k] Gram matrices (float64).

    On CPU numpy's eigvalsh (OpenBLAS LAPACK) measured twice as fast as torch's for k >= 512.
    """
    if g.device.type == "cpu" and g.shape[-1] >= NUMPY_MIN_K:
        try:
            eig = torch.from_numpy(np.linalg.eigvalsh(g.numpy()))
        except np.linalg.LinAlgError as exc:  # torch raises RuntimeError subclasses; so do we
            raise RuntimeError(f"eigvalsh: {exc}") from None
    else:
        eig = torch.linalg.eigvalsh(g)
    return eig.clamp_min(0).sqrt().flip(-1)


def eigenvalue_error(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """[B, 1] the absolute error the Gram matrix and its eigenvalues carry, per row of `s`
    ([B, k] float64, descending): about eps * (sqrt(max(m, n)) * ||W||_F² + 10 k s0²)."""
    k = s.shape[-1]
    s0 = s[:, :1]
    frob2 = (s * s).sum(-1, keepdim=True)
    return _F64_EPS * (math.sqrt(max(m, n)) * frob2 + 10 * k * s0 * s0)


def gram_numerical_ranks(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """[B] numerical ranks from the gram route (docs/spec.md, "The numerical floor"): a value
    counts only when its eigenvalue is above the squared floor by more than the eigenvalue error,
    i.e. when it is above the floor whatever that error did (a value within the error of zero
    never counts)."""
    floor = rank_floor(s, m, n)[:, None]
    return (s * s - eigenvalue_error(s, m, n) > floor * floor).sum(-1)


def gram_error_bound(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Per row of `s` ([B, k] float64, from the gram route): a bound on the relative SNR error.

    The Gram matrix and its eigenvalues carry an absolute error dλ (eigenvalue_error); a singular
    value s then moves by at most min(dλ / s, sqrt(dλ)). The bound adds up what that can do to
    the signal and noise sums, to the largest value, and to every value close enough to the
    threshold to change sides.
    """
    k = s.shape[-1]
    s0 = s[:, :1]
    dlam = eigenvalue_error(s, m, n)
    ds = torch.minimum(dlam / s.clamp_min(torch.finfo(s.dtype).tiny), dlam.sqrt())
    threshold = thresholds(s, m, n)[:, None]
    # each quantile moves by at most the larger move of the two values it interpolates, i.e. the
    # move of the smaller one (ds shrinks as s grows); so the threshold moves by at most:
    lower = [k - 1 - math.floor(q * (k - 1)) for q in (0.25, 0.75)]  # index in descending order
    dquant = ds[:, lower[0]] + ds[:, lower[1]]
    dthr = (dquant / MP_IQR_TO_SIGMA * (1 + math.sqrt(k / max(m, n))))[:, None]
    above = s > threshold
    unsure = (s - threshold).abs() <= ds + dthr
    tiny = torch.finfo(s.dtype).tiny
    signal = torch.where(above, s, 0.0).sum(-1).clamp_min(tiny)
    noise_count = (~above).sum(-1)
    noise = torch.where(
        noise_count == 0,
        torch.ones_like(signal),
        torch.where(above, 0.0, s).sum(-1).clamp_min(tiny),
    )
    d_signal = torch.where(above, ds, 0.0).sum(-1) + torch.where(unsure, s, 0.0).sum(-1)
    d_noise = torch.where(above, 0.0, ds).sum(-1) + torch.where(unsure, s, 0.0).sum(-1)
    return d_signal / signal + d_noise / noise + ds[:, 0] / s0[:, 0]


def gram_spectrum(s64: torch.Tensor, m: int, n: int) -> tuple[list[SpectrumStats], list[float]]:
    """(stats, error bounds) for singular values that came from the gram route."""
    stats = snr_from_singular_values(s64, m, n, gram_numerical_ranks(s64, m, n))
    return stats, gram_error_bound(s64, m, n).tolist()


def gram_stats(mats) -> tuple[list[SpectrumStats], list[float]]:
    """(stats, error bounds) of same-shape [m, n] matrices (a list or a [B, m, n] batch)
    through their Gram matrices."""
    m, n = mats[0].shape
    grams = torch.stack([gram_matrix(w) for w in mats])
    return gram_spectrum(singular_values_from_gram(grams), m, n)
