"""Sizes and durations as people write and read them (`40GB`, `1.2 TB`, `3 h 5 min`)."""

from __future__ import annotations

import re

from .errors import SpectrumError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str, flag: str = "--max-disk") -> int:
    """`40GB`, `1.5TB`, `500MiB` or a plain byte count -> bytes (K/M/G/T are powers of 1000)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or not unit or int(float(m.group(1)) * unit) <= 0:
        raise SpectrumError(f"{flag} {text!r}: expected a size such as 40GB, 500MiB or 2000000000")
    return int(float(m.group(1)) * unit)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # unreachable


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{max(s, 1):.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
