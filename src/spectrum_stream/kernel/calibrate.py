"""How fast this device decomposes: measured once, for time estimates in plans."""

from __future__ import annotations

import math
import time

import torch

from ..read.device import is_cuda, on_device
from .route import decompose

WEAK_FLOAT64 = 8  # float64 this many times slower than float32: gram is likely slower than exact
_FLOAT64_RATIOS: dict = {}


def calibration_size(jobs) -> int:
    """The matrix side to measure on: the checkpoint's largest smaller side, within 64..1024
    (big enough to be representative, small enough to take about a second)."""
    k = max((min(s.shape) for j in jobs for s in j.matrices), default=64)
    return int(min(1024, max(64, k)))


def svd_rate(device: torch.device, size: int = 1024, method: str = "exact") -> float:
    """m*n*k per second of `method`'s decomposition on `device`, measured on one size x size
    matrix (one at a time: --workers may do better on CPU)."""
    with on_device(device):
        a = torch.randn(size, size, device=device)
        decompose([a[: size // 4, : size // 4]], method)  # warm up the libraries
        best = _best_of(2, lambda: decompose([a], method), device)
    return size**3 / max(best, 1e-6)


def _best_of(times: int, fn, device: torch.device) -> float:
    best = math.inf
    for _ in range(times):
        if is_cuda(device):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if is_cuda(device):
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def float64_ratio(device: torch.device, size: int = 2048) -> float:
    """How many times slower a float64 matrix product runs than a float32 one on `device`
    (about 1-2 on data-centre GPUs and CPUs, 32-64 on GeForce cards); measured once per device."""
    if device not in _FLOAT64_RATIOS:
        with on_device(device):
            a = torch.randn(size, size, device=device)
            b = a.double()
            a @ a, b @ b  # warm up
            f32 = _best_of(2, lambda: a @ a, device)
            f64 = _best_of(2, lambda: b @ b, device)
        _FLOAT64_RATIOS[device] = f64 / max(f32, 1e-9)
    return _FLOAT64_RATIOS[device]


def float64_warning(ratio: float, device_name: str) -> str | None:
    """The warning a gram scan gives where float64 is weak (None where it is not)."""
    if ratio < WEAK_FLOAT64:
        return None
    return (
        f"float64 runs {ratio:.0f}x slower than float32 on {device_name}: --method gram "
        "builds float64 Gram matrices, so --method exact is likely faster on this GPU"
    )
