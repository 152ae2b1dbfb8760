"""Choosing the modules to train from a results file, and writing axolotl's `unfrozen_parameters`.

Within each type, modules are sorted by SNR (highest first) and the first floor(count * P / 100)
are kept, computed exactly (no float rounding at the boundary).
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

from .errors import SpectrumError

GROUPINGS = ("per-expert", "pooled")
_EXPERT_INDEX = re.compile(r"(^|\.)experts\.\d+\.")
_ROW_RANGE = re.compile(r"\$\[[0-9]*(:[0-9]*)?\]$")


def load_results(path: str | Path) -> dict[str, dict]:
    """Read a flat results file ({key: {"snr", "type"}}) and check its shape."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpectrumError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:
        raise SpectrumError(f"{path}: not JSON") from None
    if not isinstance(doc, dict):
        raise SpectrumError(f"{path}: expected an object of module -> {{snr, type}}")
    for key, info in doc.items():
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("type"), str)
            and isinstance(info.get("snr"), int | float)
            and not isinstance(info.get("snr"), bool)
            and math.isfinite(info["snr"])
        )
        if not ok:
            raise SpectrumError(f"{path}: entry {key!r} needs a finite number 'snr' and a string 'type'")
    return doc


def pooled_type(type_: str) -> str:
    """The type with the expert index taken out, so all experts of a projection rank together."""
    return _ROW_RANGE.sub("", _EXPERT_INDEX.sub(r"\1experts.*.", type_))


def group(results: dict[str, dict], grouping: str = "per-expert") -> dict[str, list[tuple[str, float]]]:
    """{type: [(key, snr), ...]} sorted by SNR descending (ties keep file order)."""
    if grouping not in GROUPINGS:
        raise SpectrumError(f"grouping {grouping!r}: expected one of {', '.join(GROUPINGS)}")
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, info in results.items():
        t = info["type"] if grouping == "per-expert" else pooled_type(info["type"])
        groups.setdefault(t, []).append((key, float(info["snr"])))
    return {t: sorted(items, key=lambda kv: -kv[1]) for t, items in groups.items()}


def top_count(count: int, top_percent: float) -> int:
    """floor(count * P / 100), exactly."""
    return math.floor(count * Fraction(str(top_percent)) / 100)


def select(results: dict[str, dict], top_percent: float,
           grouping: str = "per-expert") -> dict[str, list[str]]:
    """{type: [selected keys]}: the top P percent of each type by SNR."""
    if not 0 <= top_percent <= 100:
        raise SpectrumError(f"--top-percent {top_percent}: expected a number from 0 to 100")
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


def _chosen_outside_head(results: dict[str, dict], top_percent: float,
                         grouping: str) -> tuple[list[str], dict[str, list[str]]]:
    """(embedding/head patterns, {type: selected keys not already among them})."""
    head = always_unfrozen(results)
    chosen = select(results, top_percent, grouping)
    return head, {t: [k for k in keys if f"^{k}.weight$" not in head] for t, keys in chosen.items()}


def unfrozen_parameters(results: dict[str, dict], top_percent: float,
                        grouping: str = "per-expert") -> list[str]:
    """The pattern list for axolotl's `unfrozen_parameters`: embeddings and head, then the top P%."""
    head, chosen = _chosen_outside_head(results, top_percent, grouping)
    return head + [k for keys in chosen.values() for k in keys]


def to_yaml(results: dict[str, dict], top_percent: float, grouping: str = "per-expert") -> str:
    """axolotl YAML: `unfrozen_parameters:` then one quoted pattern per line, grouped by type."""
    head, chosen = _chosen_outside_head(results, top_percent, grouping)
    lines = [f"# spectrum-stream: top {top_percent}% by SNR within each type ({grouping})",
             "unfrozen_parameters:"]
    lines += [f"- {json.dumps(p)}" for p in head]
    for t, keys in chosen.items():
        if keys:
            lines.append(f"# {t}")
            lines += [f"- {json.dumps(k)}" for k in keys]
    return "\n".join(lines) + "\n"
