"""What a results key may be: a module name, never a program.

A results key becomes an axolotl pattern (`select`), is matched against parameter names
(`freeze()`, the planner) and is split into layer and expert (`report`). Used as a regular
expression, a key from a stranger's file could hang any of them (`(a+)+$` backtracks for ever) or
name any parameter. So every reader checks each key against this grammar first, and matching a
key is then a string comparison, linear in the name (docs/robustness.md, "Results keys"):

    key     = ["^"] name [marker] [rows | "$"]
    name    = part *("." part)          part = [A-Za-z0-9_][A-Za-z0-9_-]*
    marker  = "(?#" [a-z][a-z0-9]* ")"  (which half of a fused gate_up row: gate, up, partN)
    rows    = "$[" i "]" | "$[" [a] ":" [b] "]"   (rows of the parameter's first dimension)

An all-digit part (a layer or expert index) has at most 9 digits, a row number at most 12, a key
at most 1,000 characters: more than any model has, and small enough that no number read from a
key is ever a huge integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import KeyGrammarError
from ..printable import printable

MAX_KEY_CHARS = 1000
MAX_INDEX_DIGITS = 9  # a layer or expert index
MAX_ROW_DIGITS = 12  # a row of a parameter's first dimension
_PART = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
# every piece is told apart by its first character, so this never backtracks
_KEY = re.compile(
    rf"(?P<start>\^)?(?P<name>{_PART}(?:\.{_PART})*)"
    r"(?:\(\?#(?P<marker>[a-z][a-z0-9]{0,15})\))?"
    r"(?:(?P<rows>\$\[(?P<a>[0-9]*)(?:(?P<colon>:)(?P<b>[0-9]*))?\])|(?P<end>\$))?"
)


@dataclass(frozen=True)
class KeyParts:
    """One key, taken apart: `name` is the plain parameter-name prefix it stands for."""

    name: str
    marker: str | None
    rows: tuple[int, int | None] | None  # [start, end) of dim 0; end None = to the last row
    exact: bool  # the name must be the whole parameter name (`$` or a row range)


def parse_key(key: object, where: str = "results") -> KeyParts:
    """Check `key` against the grammar; KeyGrammarError naming the key and the rule it breaks."""

    def refuse(why: str) -> KeyGrammarError:
        shown = printable(str(key) if isinstance(key, str) else repr(key), limit=80)
        return KeyGrammarError(f"{where}: key '{shown}' refused: {why}")

    if not isinstance(key, str):
        raise refuse("not a string")
    if len(key) > MAX_KEY_CHARS:
        raise refuse(f"{len(key)} characters, more than the {MAX_KEY_CHARS} a module name has")
    m = _KEY.fullmatch(key)
    if m is None:
        raise refuse(
            "not a module name (dotted parts of letters, digits, '_' and '-', optionally "
            "(?#gate)/(?#up) and a row range $[i] or $[a:b]); a results key is a name, "
            "never a regular expression"
        )
    for part in m["name"].split("."):
        if part.isdigit() and len(part) > MAX_INDEX_DIGITS:
            raise refuse(f"index {part[:12]}... has more than {MAX_INDEX_DIGITS} digits")
    rows: tuple[int, int | None] | None = None
    if m["rows"]:
        a, b = m["a"], m["b"] or ""
        if len(a) > MAX_ROW_DIGITS or len(b) > MAX_ROW_DIGITS:
            raise refuse(f"a row number with more than {MAX_ROW_DIGITS} digits")
        if m["colon"] is None:
            if not a:
                raise refuse("an empty row index $[]")
            rows = (int(a), int(a) + 1)
        else:
            start, end = int(a) if a else 0, int(b) if b else None
            rows = (start, end)
            if end is not None and start >= end:
                raise refuse(f"an empty row range [{a}:{b}]")
    exact = bool(m["rows"] or m["end"])
    return KeyParts(m["name"], m["marker"], rows, exact)


def is_key(key: object) -> bool:
    """Whether `key` fits the grammar."""
    try:
        parse_key(key)
    except KeyGrammarError:
        return False
    return True


def check_keys(keys, where: str) -> None:
    """Every key of `keys` fits the grammar (else one KeyGrammarError naming `where` and the key)."""
    for key in keys:
        parse_key(key, where)


def check_type(type_: object, key: str, where: str) -> None:
    """A results type is only grouped by and shown, never matched: any text of at most
    MAX_KEY_CHARS characters without control characters (which would split or rewrite a line)."""
    if not isinstance(type_, str) or len(type_) > MAX_KEY_CHARS or not type_.isprintable():
        shown = printable(str(type_), limit=80)
        raise KeyGrammarError(
            f"{where}: the type of key '{key}' ('{shown}') refused: not a line of printable text "
            f"of at most {MAX_KEY_CHARS} characters"
        )


def check_results(results: dict, where: str) -> None:
    """Every key of a results mapping {key: {"snr", "type"}} fits the grammar and every type is
    printable text (KeyGrammarError naming `where` and the first that does not)."""
    for key, info in results.items():
        parse_key(key, where)
        if isinstance(info, dict) and "type" in info:
            check_type(info["type"], key, where)


def matches(parts: KeyParts, parameter: str) -> bool:
    """Whether a key names `parameter` the way axolotl's `re.match` of it would: the name as a
    prefix of the parameter's name, or as its whole name when anchored at the end."""
    return parameter == parts.name if parts.exact else parameter.startswith(parts.name)
