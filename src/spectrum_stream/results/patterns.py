"""axolotl's `unfrozen_parameters` patterns, read the way axolotl reads them.

A pattern may end with a row range `[start:end]`, `[start:]`, `[:end]` or `[i]` on the parameter's
first dimension; the rest is a regex whose dots are literal (a `.` not followed by `+`), applied
with `re.match` (anchored at the start only). One reading for everything that applies a selection:
`freeze()` (trainers/freeze.py) and the planner's count of trainable elements (planner/trainable.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpectrumError

_RANGE = re.compile(r"^(?P<body>.+)\[(?P<start>[0-9]*)(?::(?P<end>[0-9]*))?\]$")
_COMMENT = re.compile(r"\(\?#[^)]*\)")
_META = re.compile(r"[*+?{}\[\]\\|()^$]")


@dataclass(frozen=True)
class Pattern:
    """One parsed pattern: its compiled name regex and optional row range (end None = to the end).

    `literal` is the plain name prefix the regex stands for when it has no regex syntax left
    (after comments, `^` and a trailing `$`), so thousands of patterns can be matched by lookup;
    `exact` when that prefix must be the whole name.
    """

    raw: str
    regex: re.Pattern
    range: tuple[int, int | None] | None
    literal: str | None
    exact: bool


def parse_pattern(raw: str) -> Pattern:
    m = _RANGE.match(raw)
    body, rng = raw, None
    if m:
        body = m["body"]
        start, end = m["start"], m["end"]
        if end is None and start.isdecimal():
            rng = (int(start), int(start) + 1)
        else:
            rng = (int(start) if start else 0, int(end) if end else None)
            if rng[1] is not None and rng[0] >= rng[1]:
                raise SpectrumError(f"pattern {raw!r}: empty row range")
    try:
        regex = re.compile(re.sub(r"\.(?!\+)", r"\\.", body))
    except re.error as exc:
        raise SpectrumError(f"pattern {raw!r}: not a valid regex ({exc})") from None
    plain = _COMMENT.sub("", body)
    plain = plain.removeprefix("^")
    exact = plain.endswith("$")
    plain = plain[:-1] if exact else plain
    literal = None if _META.search(plain) or not plain else plain
    return Pattern(raw, regex, rng, literal, exact)
