"""Text from files, made safe to print: names from a stranger's checkpoint or results file.

A tensor name or results key may hold ANSI escape sequences (which recolour, move the cursor or
retitle the terminal), carriage returns that overwrite the line, or bidi overrides that reorder
what is shown. Every line the tool prints goes through `printable`, which writes such characters
as escapes (`\\x1b`, `\\r`, `\\u202e`) and leaves everything else as it is.
"""

from __future__ import annotations

import unicodedata


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control and format characters (Unicode Cc, Cf, and line/paragraph separators)
    escaped; cut to `limit` characters with `...` when given."""
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    if text.isprintable():
        return text
    return "".join(
        _escape(c)
        if not c.isprintable() and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn")
        else c
        for c in text
    )


def printable_lines(text: str) -> str:
    """`printable` for text made of lines: each line made safe, the line breaks kept."""
    return "\n".join(printable(line) for line in text.split("\n"))
