"""Modules whose SNR means nothing: numerically rank deficient (docs/spec.md, "The numerical floor").

The scan journals each module's `numerical_rank`; the results files keep axolotl's format, so the
ranks travel beside them, in the spectra file's metadata ({key: [rank, min(m, n)]}). This module
reads them back from the header alone (no singular value is loaded), so that `select`, `freeze()`,
the scan summary and the report can say which modules they are, and `select
--drop-rank-deficient` can leave them out of the ranking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import SpectrumError
from ..source.header import MAX_HEADER_BYTES
from ..source.safe_files import open_regular
from .paths import ResultPaths
from .spectra import FORMAT, RANKS_METADATA

log = logging.getLogger(__name__)

Ranks = dict[str, tuple[int, int]]  # key: (numerical rank, min(m, n))
SHOWN = 5  # keys named in one warning line


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file, read without its data; SpectrumError if it is bad."""
    bad = SpectrumError(f"{path}: not a spectrum-stream spectra file (no safetensors header)")
    try:
        with open_regular(path, path.parent, "a spectra file") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > MAX_HEADER_BYTES or size > path.stat().st_size - 8:
                raise bad
            raw = f.read(size)
    except OSError as exc:
        raise SpectrumError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    return header


def read_numerical_ranks(spectra_file: str | Path) -> Ranks:
    """{key: (numerical rank, min(m, n))} a spectra file holds ({} from scans that kept none)."""
    path = Path(spectra_file)
    meta = _header(path).get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SpectrumError(f"{path}: not a spectrum-stream spectra file")
    text = meta.get(RANKS_METADATA)
    if text is None:
        return {}
    bad = SpectrumError(f"{path}: {RANKS_METADATA} is not {{key: [rank, min(m, n)]}}")
    try:
        raw = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(raw, dict):
        raise bad
    out: Ranks = {}
    for key, pair in raw.items():
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        if not ok or not 0 <= pair[0] <= pair[1]:
            raise bad
        out[key] = (pair[0], pair[1])
    return out


def rank_deficient(
    results_path: str | Path, keys, warn: Callable[[str], None] | None = None
) -> Ranks:
    """The modules among `keys` whose numerical rank is below min(m, n), from the spectra file
    beside the results file. Without that file (a results file from another tool, or an older
    scan) nothing is known and nothing is flagged; a damaged one is a warning, handed to `warn`
    (default: this module's logger), never a failure of the command that asked."""
    try:
        spectra = ResultPaths.for_results(Path(results_path)).spectra
        if not spectra.is_file():
            return {}
        ranks = read_numerical_ranks(spectra)
    except SpectrumError as exc:
        (warn or log.warning)(f"numerical ranks unknown: {exc}")
        return {}
    wanted = set(keys)
    return {key: rk for key, rk in ranks.items() if key in wanted and rk[0] < rk[1]}


def without(results: dict[str, dict], deficient: Ranks) -> dict[str, dict]:
    """`results` with the rank-deficient modules left out of the ranking (--drop-rank-deficient).

    The embeddings and output head (a type that is its whole key) are ranked against nothing and
    trained by every selection (results/select.py, `always_unfrozen`): they stay."""
    return {
        key: info
        for key, info in results.items()
        if key not in deficient or info.get("type") == key
    }


def deficient_line(what: str, keys, deficient: Ranks) -> str | None:
    """One warning line naming the rank-deficient modules among `keys` (None when there are none):
    `what` says where they are, e.g. "selected" or "scanned"."""
    hits = [key for key in keys if key in deficient]
    if not hits:
        return None
    shown = ", ".join(f"{k} (rank {deficient[k][0]} of {deficient[k][1]})" for k in hits[:SHOWN])
    more = f" and {len(hits) - SHOWN} more" if len(hits) > SHOWN else ""
    return (
        f"{len(hits)} {what} module(s) are numerically rank deficient (singular values at or "
        "below the float32 floor: part of the noise their SNR divides by is rounding error; "
        f"docs/spec.md, 'The numerical floor'): {shown}{more}"
    )
