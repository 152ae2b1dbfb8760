"""`plan --fit`: the largest whole `--top-percent` whose Spectrum selection fits N GPUs of a size.

Why a search and not a formula: the selection is `select`'s (floor(count * P / 100) of each type,
highest SNR first) and its memory is the planner's own model, fused expert tensors and gathered
units included. Both grow with P: a type keeps a prefix of its sorted modules, and the prefix at
P is inside the prefix at P + 1, so the trained tensors, their gradients and optimizer state, and
the largest unit never shrink. That makes "fits at P" true up to some P and false after, and a
bisection over 1..100 finds the edge with about seven plans. The answer is then consistent by
construction: Spectrum-P is planned by the same function as every plan, and it fits while P + 1
does not. docs/planner.md, "The largest selection that fits".
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from .memory import Footprint, per_gpu, with_overhead

FIT_RANGE = (1, 100)  # whole percentages searched


@dataclass(frozen=True)
class SpectrumAt:
    """Spectrum-P on `gpus` GPUs: what it trains and what each GPU must have free."""

    top_percent: int
    trainable: int
    need: int  # bytes per GPU, overhead included (memory.with_overhead)
    gpu_mem: int

    @property
    def margin(self) -> int:
        """Bytes left on each GPU (negative: the shortfall)."""
        return self.gpu_mem - self.need

    @property
    def fits(self) -> bool:
        return self.need <= self.gpu_mem


def spectrum_at(fp: Footprint, top_percent: int, gpus: int, gpu_mem: int) -> SpectrumAt:
    """The Spectrum-P footprint `fp` on `gpus` GPUs of `gpu_mem` bytes, as `fits()` judges it."""
    need = with_overhead(per_gpu(fp, gpus)["total"])
    return SpectrumAt(top_percent, fp.trainable, need, gpu_mem)


def largest_fitting(
    plan_at: Callable[[int], SpectrumAt],
) -> tuple[SpectrumAt | None, SpectrumAt | None]:
    """(the largest whole P in 1..100 that fits, the plan at P + 1) by bisection over `plan_at`;
    (None, the plan at 1) when even 1% does not fit; (the plan at 100, None) when 100% fits."""
    low, high = FIT_RANGE
    first = plan_at(low)
    if not first.fits:
        return None, first
    last = plan_at(high)
    if last.fits:
        return last, None
    fitting, failing = first, last  # invariant: fitting fits, failing does not
    while failing.top_percent - fitting.top_percent > 1:
        mid = plan_at((fitting.top_percent + failing.top_percent) // 2)
        if mid.fits:
            fitting = mid
        else:
            failing = mid
    return fitting, failing


def select_command(results_path: str | None, top_percent: int, grouping: str | None) -> str:
    """The `select` command that writes the fitted selection (a placeholder path without one)."""
    target = shlex.quote(results_path) if results_path else "RESULTS.json"
    flag = f" --expert-grouping {grouping}" if grouping else ""
    return f"spectrum-stream select {target} --top-percent {top_percent}{flag}"


def fit_document(
    best: SpectrumAt | None,
    after: SpectrumAt | None,
    gpus: int,
    results_path: str | None,
    grouping: str | None,
) -> tuple[dict | None, dict | None]:
    """(the plan document's `fit`, its `fit_shortfall`): docs/planner.md, "The plan document"."""
    if best is None:
        assert after is not None
        return None, {
            "top_percent": after.top_percent,
            "gpus": gpus,
            "per_gpu_bytes": after.need,
            "shortfall_bytes": -after.margin,
        }
    return {
        "top_percent": best.top_percent,
        "gpus": gpus,
        "trainable_params": best.trainable,
        "per_gpu_bytes": best.need,
        "margin_bytes": best.margin,
        "next": None
        if after is None
        else {
            "top_percent": after.top_percent,
            "per_gpu_bytes": after.need,
            "margin_bytes": after.margin,
        },
        "select_command": select_command(results_path, best.top_percent, grouping),
    }, None
