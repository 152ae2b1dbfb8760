"""Apply a Spectrum selection to a loaded torch model: the trainer-independent way to train it.

`freeze(model, results, top_percent=25)` picks the same patterns `select` writes for axolotl
(embeddings and head, then the top P% of each type) and applies them with the same reading of a
pattern (docs/moe.md, "Result keys are axolotl patterns"): dots are literal, `re.match` against
parameter names, and a trailing `[a:b]` or `[i]` keeps only those rows of the parameter's first
dimension. Matching parameters get `requires_grad=True`, all others False; a parameter trained
only in some rows (one expert of a fused tensor) gets a gradient hook zeroing the other rows.

What it cannot change, said in the summary it returns and logs: an optimizer keeps state for every
row of a partly trained tensor, and decoupled weight decay (AdamW) still shrinks the masked rows
unless that tensor's group has weight_decay=0 (`FreezeSummary.param_groups` builds such groups).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpectrumError
from ..results.patterns import parse_pattern
from ..results.rank_floor import deficient_line, rank_deficient, without
from ..results.select import load_results, select, unfrozen_parameters

log = logging.getLogger(__name__)


@dataclass
class FreezeSummary:
    """What `freeze` did: counts, the partly trained tensors, and keys that matched nothing."""

    total: int = 0  # elements of all parameters
    trainable: int = 0  # elements that get gradients (masked rows not counted)
    whole: list[str] = field(default_factory=list)  # parameters trained in full
    partial: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (rows trained, rows)
    unmatched: list[str] = field(default_factory=list)  # patterns naming no parameter
    handles: list = field(default_factory=list)  # gradient hooks, for remove()

    def lines(self) -> list[str]:
        share = 100 * self.trainable / self.total if self.total else 0.0
        out = [
            f"Spectrum freeze: {self.trainable:,} of {self.total:,} parameters trainable "
            f"({share:.2f}%), {len(self.whole)} tensors whole, {len(self.partial)} in part"
        ]
        if self.partial:
            shown = ", ".join(f"{n} ({r}/{t} rows)" for n, (r, t) in list(self.partial.items())[:8])
            more = f" and {len(self.partial) - 8} more" if len(self.partial) > 8 else ""
            out.append(
                f"Partly trained (other rows' gradients zeroed): {shown}{more}. An optimizer still "
                "keeps state for all rows of these tensors, and AdamW's weight decay still moves "
                "the masked rows unless their group has weight_decay=0 (see param_groups)"
            )
        if self.unmatched:
            out.append(self.unmatched_line())
        return out

    def unmatched_line(self) -> str:
        return (
            f"{len(self.unmatched)} keys match no parameter of this model (results written "
            f"for another naming? see --names): {', '.join(self.unmatched[:8])}"
        )

    def param_groups(self, model, weight_decay: float) -> list[dict]:
        """Optimizer groups of the trainable parameters: partly trained ones without weight
        decay, so that their frozen rows stay exactly as loaded."""
        params = dict(model.named_parameters())
        full = [params[n] for n in self.whole]
        part = [params[n] for n in self.partial]
        groups = [{"params": full, "weight_decay": weight_decay}]
        if part:
            groups.append({"params": part, "weight_decay": 0.0})
        return groups

    def remove(self) -> None:
        """Take the gradient hooks off again (requires_grad stays as set)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _merged(ranges: list[tuple[int, int | None]], rows: int, name: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted((s, rows if e is None else e) for s, e in ranges):
        if not 0 <= start < end <= rows:
            raise SpectrumError(f"rows [{start}:{end}] do not fit parameter {name} ({rows} rows)")
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _row_mask_hook(mask):
    def hook(grad):
        return grad * mask.to(device=grad.device, dtype=grad.dtype)

    return hook


def apply_patterns(model, patterns: list[str]) -> FreezeSummary:
    """Set requires_grad (and row masks) on `model` from `unfrozen_parameters` patterns."""
    import torch

    compiled = [parse_pattern(p) for p in patterns]
    used: set[str] = set()
    summary = FreezeSummary()
    for name, param in model.named_parameters():
        summary.total += param.numel()
        hits = [p for p in compiled if p.match(name)]
        used.update(p.raw for p in hits)
        param.requires_grad_(bool(hits))
        if not hits:
            continue
        ranges = [p.range for p in hits if p.range is not None]
        rows = param.shape[0] if param.dim() else 1
        if not ranges or any(p.range is None for p in hits):
            summary.whole.append(name)
            summary.trainable += param.numel()
            continue
        keep = _merged(ranges, rows, name)
        kept = sum(b - a for a, b in keep)
        if kept == rows:
            summary.whole.append(name)
            summary.trainable += param.numel()
            continue
        mask = torch.zeros((rows,) + (1,) * (param.dim() - 1), dtype=torch.bool)
        for a, b in keep:
            mask[a:b] = True
        summary.handles.append(param.register_hook(_row_mask_hook(mask)))
        summary.partial[name] = (kept, rows)
        summary.trainable += param.numel() // rows * kept
    summary.unmatched = [p.raw for p in compiled if p.raw not in used]
    return summary


def freeze(
    model,
    results: dict | str | Path,
    top_percent: float = 25.0,
    grouping: str | None = None,
    drop_rank_deficient: bool = False,
) -> FreezeSummary:
    """Train only the top `top_percent`% of each type of `results` (a results file or its dict)
    in `model`, plus its embeddings and head; returns (and logs) a FreezeSummary.

    `grouping` None ranks within the file's types (what the scan's --expert-grouping wrote);
    `pooled` / `per-expert` regroup. Keys must name this model's parameters: scan with the
    default `--names trainer` for a model loaded with transformers 5.
    Given a results file, the numerical ranks kept beside it (docs/spec.md, "The numerical
    floor") are read: selecting a rank-deficient module logs a warning, and
    `drop_rank_deficient` leaves such modules out of the ranking (as `select
    --drop-rank-deficient`). A dict carries no ranks: nothing is checked.
    """
    deficient: dict[str, tuple[int, int]] = {}
    if not isinstance(results, dict):
        path, results = results, load_results(results)
        deficient = rank_deficient(path, results)
    if drop_rank_deficient:
        results = without(results, deficient)
    else:
        chosen = [k for keys in select(results, top_percent, grouping).values() for k in keys]
        warning = deficient_line("selected", chosen, deficient)
        if warning:
            log.warning("%s; drop_rank_deficient=True leaves them out", warning)
    summary = apply_patterns(model, unfrozen_parameters(results, top_percent, grouping))
    for line in summary.lines():
        if summary.unmatched and line == summary.unmatched_line():
            log.warning(line)
        else:
            log.info(line)
    return summary
