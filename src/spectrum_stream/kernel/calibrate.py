"""How fast this device decomposes: measured once, for time estimates in plans."""

from __future__ import annotations

import math
import time

import torch

from .route import decompose


def svd_rate(device: torch.device, size: int = 1024, method: str = "exact") -> float:
    """m*n*k per second of `method`'s decomposition on `device`, measured on one size x size
    matrix (one at a time: --workers may do better on CPU)."""
    a = torch.randn(size, size, device=device)
    decompose([a[: size // 4, : size // 4]], method)  # warm up the libraries
    best = math.inf
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        decompose([a], method)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return size**3 / max(best, 1e-6)
