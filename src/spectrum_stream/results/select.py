"""Choosing the modules to train from a results file, and writing axolotl's `unfrozen_parameters`.

Within each type, modules are sorted by SNR (highest first) and the first floor(count * P / 100)
are kept, computed exactly (no float rounding at the boundary).
"""

from __future__ import annotations

import json
import logging
import math
from fractions import Fraction
from pathlib import Path

from ..layout.rename_rules import PER_EXPERT_LAYOUTS
from ..layout.trainer_names import TrainerNames
from ..modes import check_top_percent
from ..source.jsonfile import mapping, number, obj, string
from .key_grammar import check_results
from .names import GROUPINGS, pooled_type, result_type  # noqa: F401  (re-exported)
from .published import ReadResults, read_results_file, skipped_line

_FUSED = TrainerNames(PER_EXPERT_LAYOUTS, "select --fused-experts")

log = logging.getLogger(__name__)

RESULTS_SCHEMA = mapping(obj({"snr": number, "type": string}))
SORTED_SCHEMA = mapping(mapping(number))  # the per-type sorted file: {type: {key: snr}}


LISTED_IN_YAML = "as comments at the end of `spectrum-stream select`'s YAML"


def load_results(path: str | Path, listed: str = LISTED_IN_YAML) -> dict[str, dict]:
    """Read a results file ({key: {"snr", "type"}}), checked: size, depth, numbers.

    The reader for every command that takes a results file; a bad file is one SpectrumError line
    naming it and the key that is wrong. The original tool's files are read too (results/
    published.py): modules whose SNR is NaN, Infinity or null are skipped, with one warning that
    counts them and says where they are `listed` (read_results gives the keys themselves).
    """
    return read_results(path, listed).results


def read_results(path: str | Path, listed: str = LISTED_IN_YAML) -> ReadResults:
    """load_results with the skipped keys kept, for commands that list them."""
    read = read_results_file(path)
    if read.skipped:
        log.warning(skipped_line(path, read.skipped, listed))
    return read


def fused_param_pattern(key: str) -> str:
    """A per-expert checkpoint key as a pattern for the fused expert parameters of transformers >= 5.

    transformers 5 loads `experts.N.{gate,up,down}_proj` (Mixtral: `w1, w3, w2`) into one parameter
    per layer, `experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I], and renames
    Mixtral's `block_sparse_moe` to `mlp`. Expert N is row N of those: `...gate_up_proj(?#gate)$[N]`.
    Gate and up of one expert share that row, so either one unfreezes both. Other keys are returned
    unchanged (after the `block_sparse_moe` rename). The names come from the scan's own rules
    (layout/trainer_names.py, PER_EXPERT_LAYOUTS), so select and scan cannot disagree.
    """
    return _FUSED.key(key, key + ".weight")


def group(
    results: dict[str, dict], grouping: str | None = None
) -> dict[str, list[tuple[str, float]]]:
    """{type: [(key, snr), ...]} sorted by SNR descending (ties keep file order).

    `grouping` None ranks within the file's own types, as axolotl's Spectrum plugin does (a scan
    writes them for its `--expert-grouping`); `pooled` / `per-expert` regroup by the key.
    """
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, info in results.items():
        t = info["type"] if grouping is None else result_type(key, grouping)
        groups.setdefault(t, []).append((key, float(info["snr"])))
    return {t: sorted(items, key=lambda kv: -kv[1]) for t, items in groups.items()}


def top_count(count: int, top_percent: float) -> int:
    """floor(count * P / 100), exactly."""
    return math.floor(count * Fraction(str(top_percent)) / 100)


def select(
    results: dict[str, dict], top_percent: float, grouping: str | None = None
) -> dict[str, list[str]]:
    """{type: [selected keys]}: the top P percent of each type by SNR."""
    check_top_percent(top_percent)
    return {
        t: [key for key, _ in items[: top_count(len(items), top_percent)]]
        for t, items in group(results, grouping).items()
    }


def always_unfrozen(results: dict[str, dict]) -> list[str]:
    """Anchored patterns for the model's embeddings and output head: the matrices outside layers.

    Those are the modules whose type is their whole name (no layer index), e.g. `lm_head`,
    `model.embed_tokens`, `transformer.wte`; only the ones this model has are named.
    """
    return [f"^{key}.weight$" for key, info in results.items() if info["type"] == key]


def _chosen_outside_head(
    results: dict[str, dict], top_percent: float, grouping: str | None, fused_experts: bool = False
) -> tuple[list[str], dict[str, list[str]]]:
    """(embedding/head patterns, {type: selected patterns not already among them})."""
    check_results(results, "results")  # a dict handed in through the Python API too
    head = always_unfrozen(results)
    chosen = select(results, top_percent, grouping)
    seen = set(head)
    out: dict[str, list[str]] = {}
    for t, keys in chosen.items():
        out[t] = []
        for key in keys:
            pattern = fused_param_pattern(key) if fused_experts else key
            if f"^{pattern}.weight$" not in seen and pattern not in seen:
                seen.add(pattern)
                out[t].append(pattern)
    return head, out


def unfrozen_parameters(
    results: dict[str, dict],
    top_percent: float,
    grouping: str | None = None,
    fused_experts: bool = False,
) -> list[str]:
    """The pattern list for axolotl's `unfrozen_parameters`: embeddings and head, then the top P%.

    `fused_experts`: write per-expert keys as patterns for transformers >= 5's fused expert
    parameters (see fused_param_pattern).
    """
    head, chosen = _chosen_outside_head(results, top_percent, grouping, fused_experts)
    return head + [k for keys in chosen.values() for k in keys]


def to_yaml(
    results: dict[str, dict],
    top_percent: float,
    grouping: str | None = None,
    fused_experts: bool = False,
    skipped: list[str] | tuple[str, ...] = (),
) -> str:
    """axolotl YAML: `unfrozen_parameters:` then one quoted pattern per line, grouped by type;
    `skipped` (modules without a finite SNR, results/published.py) as comments at the end."""
    head, chosen = _chosen_outside_head(results, top_percent, grouping, fused_experts)
    names = ", names for fused experts" if fused_experts else ""
    how = grouping or "the file's types"
    lines = [
        f"# spectrum-stream: top {top_percent}% by SNR within each type ({how}{names})",
        "unfrozen_parameters:",
    ]
    lines += [f"- {json.dumps(p)}" for p in head]
    for t, keys in chosen.items():
        if keys:
            lines.append(f"# {t}")
            lines += [f"- {json.dumps(k)}" for k in keys]
    if skipped:
        lines.append(f"# skipped, SNR not a finite number (NaN, Infinity or null): {len(skipped)}")
        lines += [f"#   {json.dumps(k)}" for k in skipped]
    return "\n".join(lines) + "\n"
