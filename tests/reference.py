"""A slow, obviously-correct float64 SNR, written straight from docs/spec.md, "The SNR".

Tests compare every fast path against this. It uses numpy's float64 SVD and plain Python loops.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def quantile_linear(sorted_values: list[float], q: float) -> float:
    """Quantile with linear interpolation between closest ranks (torch.quantile's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def reference_snr(matrix) -> float:
    """SNR of one matrix in float64."""
    w = np.asarray(matrix, dtype=np.float64)
    m, n = w.shape
    k = min(m, n)
    s = sorted(np.linalg.svd(w, compute_uv=False).tolist(), reverse=True)
    ascending = sorted(s)
    sigma = (quantile_linear(ascending, 0.75) - quantile_linear(ascending, 0.25)) / 1.349
    threshold = sigma * (1 + math.sqrt(k / max(m, n)))
    signal = 0.0
    noise = 0.0
    n_noise = 0
    for value in s:
        if value > threshold:
            signal += value
        else:
            noise += value
            n_noise += 1
    if n_noise == 0:
        noise = 1.0
    return signal / noise / s[0]


def all_matrices(folder: Path) -> dict:
    """Every tensor with 2+ dimensions as float32 torch tensors by module key, read with
    safetensors itself (independent of the package's reader)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as s:
            for name in s.keys():
                t = s.get_tensor(name)
                if t.dim() >= 2:
                    out[name.removesuffix(".weight")] = t.float()
    return out
