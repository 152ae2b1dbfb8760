"""Which parameter elements receive gradients, for axolotl `unfrozen_parameters` patterns and LoRA.

axolotl's rules (its `freeze_layers_except`): a pattern may end with a row range `[start:end]`,
`[start:]`, `[:end]` or `[i]` on the parameter's first dimension; the rest is a regex whose dots
are literal (a `.` not followed by `+`), applied with `re.match` (anchored at the start only). A
parameter that any pattern matches gets `requires_grad`; when at least one matching pattern has a
range, only the union of the ranges keeps its gradient (a hook zeroes the other rows), even if an
unranged pattern matches it too. The optimizer still sees the whole tensor. docs/planner.md,
"Trainable elements".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpectrumError
from ..results.patterns import Pattern, parse_pattern
from .params import Param

_ROUTER = re.compile(r"(^|\.)(\w*gate|router(\.layer)?)(\.weight)?$")
_IN_LAYER = re.compile(r"\.\d+\.")


@dataclass(frozen=True)
class Trained:
    """A parameter that receives a gradient, and how many rows of its dim 0 keep it."""

    param: Param
    rows: int

    @property
    def trainable(self) -> int:
        """Elements in trained rows: what the optimizer actually changes."""
        if self.param.rows == 0:  # an empty parameter: nothing to change
            return 0
        return self.param.numel * self.rows // self.param.rows

    @property
    def grad(self) -> int:
        """Elements of the whole tensor: its gradient and optimizer state are allocated in full."""
        return self.param.numel


def _rows_kept(ranges: list[tuple[int, int | None]], rows: int, name: str) -> int:
    spans = sorted((s, rows if e is None else e) for s, e in ranges)
    for s, e in spans:
        if s < 0 or e > rows > 0 or s >= e:
            raise SpectrumError(f"row range {s}:{e} is outside parameter {name!r} ({rows} rows)")
    kept, reach = 0, 0
    for s, e in spans:
        if e > reach:
            kept += e - max(s, reach)
            reach = e
    return kept


class PatternSet:
    """Patterns indexed so that each parameter name is checked by lookup (every pattern is a
    plain name, results/key_grammar.py)."""

    def __init__(self, patterns: list[str]):
        self.patterns = [parse_pattern(p) for p in patterns]
        self.exact: dict[str, list[Pattern]] = {}
        self.prefix: dict[str, list[Pattern]] = {}
        for p in self.patterns:
            (self.exact if p.exact else self.prefix).setdefault(p.literal, []).append(p)

    def matching(self, name: str) -> list[Pattern]:
        hits = list(self.exact.get(name, ()))
        if self.prefix:
            for i in range(1, len(name) + 1):
                hits.extend(self.prefix.get(name[:i], ()))
        return hits


def trained(params: list[Param], patterns: list[str]) -> tuple[list[Trained], list[str]]:
    """The parameters the patterns unfreeze, and the patterns that matched no parameter."""
    ps = PatternSet(patterns)
    used: set[str] = set()
    out = []
    for param in params:
        hits = ps.matching(param.name)
        if not hits:
            continue
        used.update(p.raw for p in hits)
        ranges = [p.range for p in hits if p.range is not None]
        rows = _rows_kept(ranges, param.rows, param.name) if ranges else param.rows
        out.append(Trained(param, rows))
    return out, [p.raw for p in ps.patterns if p.raw not in used]


def everything(params: list[Param]) -> list[Trained]:
    """Full fine-tuning: every floating-point parameter, all rows."""
    return [Trained(p, p.rows) for p in params if p.is_float]


def totals(items: list[Trained]) -> tuple[int, int]:
    """(trainable_params, grad_params)."""
    return sum(t.trainable for t in items), sum(t.grad for t in items)


# --- LoRA ----------------------------------------------------------------------------------------


def lora_targets(params: list[Param]) -> list[Param]:
    """The matrices LoRA adapts: every floating-point weight of two or more dimensions inside the
    layers (a name with a `.N.` layer index): attention and MLP projections, shared and routed
    experts. Routers (`gate`, `*_gate`, `router`), embeddings and the output head are left out."""
    return [
        p
        for p in params
        if p.is_float
        and len(p.shape) >= 2
        and _IN_LAYER.search(p.name)
        and not _ROUTER.search(p.name)
    ]


def lora_params(param: Param, rank: int) -> int:
    """r * (in + out) per expert: A is [r, in], B is [out, r]. A 3-D fused expert [E, out, in]
    and a DBRX-style [E * out, in] tensor hold `experts` matrices."""
    e = param.experts
    if param.numel == 0:  # an empty matrix (a 0 in its shape): nothing to adapt
        return 0
    out_dim = param.shape[-2] if len(param.shape) == 3 else param.shape[0] // e
    in_dim = param.shape[-1] if len(param.shape) == 3 else param.numel // param.shape[0]
    return e * rank * (in_dim + out_dim)
