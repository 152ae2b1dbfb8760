"""Choosing the route to a matrix's spectrum, and the one fallback policy.

exact: one batched svdvals call. gram: one float64 Gram matrix per matrix (from the whole matrix,
or summed over blocks read straight from the file), one eigensolver call; a matrix whose error
bound exceeds GRAM_TOLERANCE, or whose SNR is not finite, is redone exactly and says why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import ModuleFailed
from ..read.loader import block_len, iter_col_blocks, iter_row_blocks, staged_blocks
from ..source.header import TensorEntry
from .gram import accumulate_gram, gram_matrix, gram_spectrum, singular_values_from_gram
from .snr import SpectrumStats, exact_singular_values, snr_from_singular_values

GRAM_TOLERANCE = 1e-5  # worst-case relative SNR error allowed on the gram route (contract: 1e-4)


@dataclass(frozen=True)
class Decomposed:
    """One matrix's statistics, its singular values, and how they were obtained (for the journal)."""

    stats: SpectrumStats
    method: str  # the route that produced `stats`: exact | gram
    note: str | None = None  # why gram fell back to exact, when it did
    values: torch.Tensor | None = None  # singular values, float32 on the CPU, descending


def _values(s: torch.Tensor) -> torch.Tensor:
    return s.detach().to(device="cpu", dtype=torch.float32)


def exact(mats: list[torch.Tensor], driver: str | None = None) -> list[Decomposed]:
    """Same-shape [m, n] float32 matrices through one batched svdvals call."""
    batch = torch.stack(mats) if len(mats) > 1 else mats[0][None]
    _, m, n = batch.shape
    s = exact_singular_values(batch, driver)
    return [
        Decomposed(st, "exact", values=row)  # one copy to the CPU for the whole batch
        for st, row in zip(snr_from_singular_values(s, m, n), _values(s))
    ]


def _gram_accepted(stats: SpectrumStats, bound: float) -> bool:
    """The fallback policy: gram's answer stands only within the tolerance, and finite."""
    return bound <= GRAM_TOLERANCE and math.isfinite(stats.snr)


def _redo_exact(whole: Callable[[], torch.Tensor], bound: float, driver: str | None) -> Decomposed:
    (done,) = exact([whole()], driver)
    return Decomposed(
        done.stats, "exact", f"gram error bound {bound:.1e} > {GRAM_TOLERANCE:.0e}", done.values
    )


def _from_grams(
    grams: torch.Tensor,
    m: int,
    n: int,
    wholes: list[Callable[[], torch.Tensor]],
    driver: str | None,
) -> list[Decomposed]:
    s = singular_values_from_gram(grams)
    stats, bounds = gram_spectrum(s, m, n)
    return [
        Decomposed(st, "gram", values=row)
        if _gram_accepted(st, bound)
        else _redo_exact(whole, bound, driver)
        for st, bound, row, whole in zip(stats, bounds, _values(s), wholes)
    ]


def decompose(
    mats: list[torch.Tensor], method: str = "exact", driver: str | None = None
) -> list[Decomposed]:
    """Statistics of same-shape [m, n] float32 matrices held whole, by `method`."""
    if method == "exact":
        return exact(mats, driver)
    m, n = mats[0].shape
    grams = torch.stack([gram_matrix(w) for w in mats])
    return _from_grams(grams, m, n, [_held(w) for w in mats], driver)


def _held(w: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The exact fallback's reader for a matrix already in memory."""
    return lambda: w


ON_CPU_NOTE = "out of GPU memory: decomposed on the CPU"
CPU = torch.device("cpu")
T = TypeVar("T")


def with_note(d: Decomposed, note: str) -> Decomposed:
    return dataclasses.replace(d, note=f"{d.note}; {note}" if d.note else note)


def or_on_cpu(on_device: Callable[[], T], on_cpu: Callable[[], T]) -> tuple[T, bool]:
    """The one out-of-memory policy: `on_device()`; out of device memory, the cache is freed and
    the same work is done once by `on_cpu()`, never retried at the same size on the device.
    Returns the answer and whether it came from the CPU."""
    try:
        return on_device(), False
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return on_cpu(), True


def _alone(
    mat: torch.Tensor, method: str, driver: str | None, error: RuntimeError | None = None
) -> Decomposed | ModuleFailed:
    """One matrix (`error`: what its batch-of-one call already raised); out of memory on the
    device, it is decomposed on the CPU (or_on_cpu)."""

    def on_device() -> Decomposed:
        if error is not None:
            raise error
        return decompose([mat], method, driver)[0]

    try:
        done, on_cpu = or_on_cpu(on_device, lambda: decompose([mat.to(CPU)], method)[0])
    except RuntimeError as exc:
        return ModuleFailed(f"SVD failed ({exc})")
    return with_note(done, ON_CPU_NOTE) if on_cpu else done


def decompose_each(
    mats: list[torch.Tensor], method: str, driver: str | None = None
) -> list[Decomposed | ModuleFailed]:
    """decompose() of a batch; if the batch fails, each matrix alone, so that one bad matrix fails
    only itself (its entry is then a ModuleFailed with the reason). A matrix out of GPU memory on
    its own goes to the CPU (the same route there)."""
    try:
        return list(decompose(mats, method, driver))
    except RuntimeError as exc:
        if len(mats) == 1:
            return [_alone(mats[0], method, driver, exc)]
    return [_alone(mat, method, driver) for mat in mats]


def streamed_gram(
    path: Path,
    entry: TensorEntry,
    shape: tuple[int, int],
    device: torch.device,
    block_bytes: int,
    whole: Callable[[], torch.Tensor],
    driver: str | None = None,
) -> Decomposed:
    """The gram route for a matrix never held whole: its Gram matrix summed over float64 blocks
    read straight from the file (`whole` reads it all, only for the exact fallback)."""
    m, n = shape
    if m >= n:
        blocks, k = iter_row_blocks(path, entry, block_len(n, block_bytes)), n
    else:
        blocks, k = iter_col_blocks(path, entry, block_len(m, block_bytes)), m
    staged = iter(staged_blocks(blocks, device))
    try:
        g = accumulate_gram(staged, k, m >= n, device)
    finally:
        close = getattr(staged, "close", None)  # a read-ahead thread's generator
        if close is not None:
            close()
    # a NaN or Inf anywhere in W makes its row's or column's squares, a diagonal entry, non-finite
    if not bool(torch.isfinite(g.diagonal()).all()):
        raise ModuleFailed("holds NaN or Inf values")
    return _from_grams(g[None], m, n, [lambda: whole().reshape(shape)], driver)[0]
