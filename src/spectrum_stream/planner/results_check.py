"""Refusing a results file that cannot describe this model's parameters, before planning with it.

A results file names parameters either as transformers 5 loads the model (`--names trainer`) or
as the checkpoint stores them (`--names checkpoint`); planned against the other view, its fused
expert keys would match nothing and Spectrum's memory would come out silently too small.
"""

from __future__ import annotations

from ..errors import SpectrumError
from ..results.select import unfrozen_parameters
from ..source.checkpoint import Checkpoint
from .params import VIEW_NAMES, View
from .trainable import trained


def check_results_names(
    ckpt: Checkpoint, results: dict[str, dict], view: View, other: View, where: str
) -> None:
    """Raise unless every key of `results` names a parameter of `view` (a scan of this model
    under the view's --names always does): saying so when the keys name `other`'s parameters
    (written with the other --names), else that they are another model's."""
    patterns = unfrozen_parameters(results, 100)  # every key, as the pattern select would write
    if not patterns:
        raise SpectrumError(f"{where}: holds no results")
    try:
        here = trained(view(ckpt), patterns)[1]
    except SpectrumError as exc:  # a key that is no pattern at all
        raise SpectrumError(f"{where}: {exc}") from None
    if not here:
        return
    if not trained(other(ckpt), patterns)[1]:
        raise SpectrumError(
            f"{where}: written with --names {VIEW_NAMES[other]} ({len(here)} of {len(patterns)} "
            f"keys name no parameter under --names {VIEW_NAMES[view]}); plan with --names "
            f"{VIEW_NAMES[other]}, or rewrite the results with `spectrum-stream rebuild JOURNAL "
            f"--names {VIEW_NAMES[view]}`"
        )
    raise SpectrumError(
        f"{where}: {len(here)} of its {len(patterns)} keys name no parameter of "
        f"{ckpt.name} (e.g. {here[0]!r}); results of another model?"
    )
