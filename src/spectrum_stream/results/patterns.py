"""axolotl's `unfrozen_parameters` patterns, read the way axolotl reads them.

A pattern may end with a row range `[start:end]`, `[start:]`, `[:end]` or `[i]` on the parameter's
first dimension; the rest is, for axolotl, a regex whose dots are literal, applied with `re.match`
(anchored at the start only). The patterns this tool reads and writes are results keys, which the
key grammar (results/key_grammar.py) allows only as plain names with `(?#...)` markers and anchors,
so the same reading is a prefix (or, with a trailing `$`, an exact) comparison: linear in the name,
whatever a results file says. One reading for everything that applies a selection: `freeze()`
(trainers/freeze.py) and the planner's count of trainable elements (planner/trainable.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .key_grammar import matches, parse_key


@dataclass(frozen=True)
class Pattern:
    """One parsed pattern: the plain name prefix it stands for (`literal`), whether that must be
    the whole name (`exact`), and its optional row range (end None = to the end)."""

    raw: str
    range: tuple[int, int | None] | None
    literal: str
    exact: bool

    def match(self, name: str) -> bool:
        """Whether axolotl's `re.match` of this pattern accepts parameter `name`."""
        return name == self.literal if self.exact else name.startswith(self.literal)


def parse_pattern(raw: str, where: str = "pattern") -> Pattern:
    """A pattern checked against the key grammar (KeyGrammarError naming it otherwise)."""
    parts = parse_key(raw, where)
    return Pattern(raw, parts.rows, parts.name, parts.exact)


__all__ = ["Pattern", "matches", "parse_pattern"]
