"""How much memory one matrix's decomposition needs, and how much the machine has.

A matrix too big for the machine should fail as that module, with the reason, before its bytes
are read; not take the whole process down through the OOM killer an hour into a scan. The
estimate is deliberately simple (docs/robustness.md, "Memory"):

- exact (torch.linalg.svdvals, LAPACK gesdd without vectors): our float32 copy of the matrix,
  LAPACK's own float32 copy (it overwrites its input), and gesdd's workspace for singular values
  only: 3k + max(l, 7k) floats plus a blocked reduction's nb * (m + n) (nb = 64), with k = min(m, n),
  l = max(m, n); 8k int32s of integer workspace; the k values.
- gram: the float32 copy (none when streamed from the file), one float64 block of at most
  `block_bytes`, the float64 k x k Gram matrix twice (it is stacked, and the eigensolver works on
  a copy), the eigensolver's 2k + 1 doubles and the k values. A gram answer that is redone exactly
  (rare) needs the exact figure on top; that is not counted.

On a GPU, kernel/memory.py counts each route's device allocations instead.
"""

from __future__ import annotations

import os

from .gram import GRAM_BLOCK_BYTES

LAPACK_NB = 64  # block size of LAPACK's blocked bidiagonal reduction (workspace nb * (m + n))


def decomposition_bytes(
    shape: tuple[int, int], method: str, streamed: bool = False, block_bytes: int = GRAM_BLOCK_BYTES
) -> int:
    """Peak bytes to get the singular values of one [m, n] matrix by `method` (exact | gram)."""
    m, n = shape
    k, big = min(m, n), max(m, n)
    copy32 = 4 * m * n
    if method == "exact":
        workspace = 4 * (3 * k + max(big, 7 * k) + LAPACK_NB * (m + n))
        return 2 * copy32 + workspace + 4 * 8 * k + 4 * k
    if method == "gram":
        block = min(8 * m * n, block_bytes)
        return (0 if streamed else copy32) + block + 2 * 8 * k * k + 8 * (2 * k + 1) + 8 * k
    raise ValueError(f"method {method!r}: expected exact or gram")


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux: free memory plus what the kernel can reclaim)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int | None:
    """RAM a decomposition on the CPU may still use; None when the system does not say. (On a
    GPU, kernel/memory.py's accounting against the device's free memory decides instead.)"""
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
