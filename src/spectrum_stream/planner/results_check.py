"""Refusing a results file that cannot describe this model's parameters, before planning with it.

A results file names parameters either as transformers 5 loads the model (`--names trainer`) or
as the checkpoint stores them (`--names checkpoint`); planned against the other view, its fused
expert keys would match nothing and Spectrum's memory would come out silently too small.
"""

from __future__ import annotations

from ..errors import SpectrumError
from ..results.select import unfrozen_parameters
from ..source.checkpoint import Checkpoint
from .params import View
from .trainable import trained


def _unmatched(ckpt: Checkpoint, view: View, patterns: list[str]) -> int:
    return len(trained(view(ckpt), patterns)[1])


def check_results_names(ckpt: Checkpoint, results: dict[str, dict], view: View, other: View,
                        where: str) -> None:
    """Raise when some keys of `results` name no parameter of `view` but all name parameters of
    `other` (written with the other --names), or when no key names a parameter of either (results
    of another model). A few stray keys are left to the plan's notes."""
    patterns = unfrozen_parameters(results, 100)  # every key, as the pattern select would write
    if not patterns:
        raise SpectrumError(f"{where}: holds no results")
    here = _unmatched(ckpt, view, patterns)
    if here == 0:
        return
    there = _unmatched(ckpt, other, patterns)
    if there == 0:
        raise SpectrumError(
            f"{where}: its keys name the parameters under --names {other.names} ({here} of "
            f"{len(patterns)} match no parameter under --names {view.names}); the results were "
            f"written with --names {other.names}: plan with --names {other.names}, or rewrite "
            f"them with `spectrum-stream rebuild JOURNAL --names {view.names}`")
    if here == len(patterns) and there == len(patterns):
        raise SpectrumError(f"{where}: none of its {len(patterns)} keys names a parameter of "
                            f"{ckpt.name}; results of another model?")
