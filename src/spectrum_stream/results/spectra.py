"""The spectra file: every scanned matrix's singular values, kept next to the results.

Why keep them: the SNR throws the spectrum away, and a scan is the expensive part; with the
singular values on disk any spectral metric (docs/metrics.md) can be computed later in seconds.
Format: safetensors, one 1-D float32 tensor per module (descending), and `__metadata__` with
format, version and the matrix shapes as JSON text {key: [m, n]}, and, from scans that recorded
them, `numerical_ranks` as JSON text {key: [numerical rank, min(m, n)]} (results/rank_floor.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import orjson
from safetensors import SafetensorError
from safetensors.numpy import load, save

from ..errors import SpectrumError
from ..journal.spectra_log import matrix_k
from ..printable import printable
from ..source.safe_files import read_regular
from .atomic import atomic_write
from .paths import RESULTS_PREFIX, ResultPaths

FORMAT = "spectrum-stream/spectra"
VERSION = "1"
# Singular values per module: past any real matrix's min(m, n) (the widest hidden sizes are ~16k),
# and a cap on the power-law fit's cost (docs/robustness.md).
MAX_SPECTRUM = 65_536
RANKS_METADATA = "numerical_ranks"  # optional: older files lack it, readers of version 1 ignore it
log = logging.getLogger(__name__)


def spectra_path(results_json_path) -> Path:
    """`snr_results_<slug>.json` -> `snr_results_<slug>_spectra.safetensors` in the same folder."""
    path = Path(results_json_path)
    if not (path.name.startswith(RESULTS_PREFIX) and path.suffix == ".json"):
        raise SpectrumError(f"{path}: expected a results file named snr_results_<model>.json")
    return ResultPaths.for_results(path).spectra


def write_spectra(
    path,
    spectra: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, int]],
    numerical_ranks: dict[str, tuple[int, int]] | None = None,
) -> None:
    """Write the singular values of each module (stored float32, descending) and its matrix shape,
    and {key: (numerical rank, min(m, n))} of every results key that has one."""
    atomic_write(Path(path), spectra_bytes(spectra, shapes, numerical_ranks))


def spectra_bytes(
    spectra: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, int]],
    numerical_ranks: dict[str, tuple[int, int]] | None = None,
) -> bytes:
    """The spectra file's bytes (write_spectra), for writing it together with other files."""
    missing = sorted(set(spectra) - set(shapes))
    if missing:
        raise ValueError(
            f"no shape given for {missing[0]!r} ({len(missing)} module(s) without one)"
        )
    tensors = {
        key: np.ascontiguousarray(np.sort(np.asarray(s, dtype=np.float32).ravel())[::-1])
        for key, s in spectra.items()
    }
    meta_shapes = {key: [int(shapes[key][0]), int(shapes[key][1])] for key in spectra}
    metadata = {"format": FORMAT, "version": VERSION, "shapes": json.dumps(meta_shapes)}
    if numerical_ranks:
        ranks = {key: [int(r), int(k)] for key, (r, k) in numerical_ranks.items()}
        metadata[RANKS_METADATA] = json.dumps(ranks)
    return save(tensors, metadata=metadata)


def read_spectra(path) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """({key: singular values}, {key: (m, n)}); SpectrumError naming the file if it is not ours."""
    path = Path(path)
    data = read_regular(path, path.parent, "a spectra file")  # beside its results file
    metadata = _metadata(path, data)
    if metadata.get("format") != FORMAT:
        raise SpectrumError(f"{path}: not a spectrum-stream spectra file")
    if metadata.get("version") != VERSION:
        raise SpectrumError(
            f"{path}: spectra file version {metadata.get('version')!r}, "
            f"this spectrum-stream reads version {VERSION}"
        )
    try:
        spectra = load(data)
    except (SafetensorError, ValueError) as exc:
        raise SpectrumError(f"{path}: damaged spectra file ({exc})") from None
    shapes = _shapes(path, metadata.get("shapes"), spectra)
    return _finite_only(path, spectra), shapes


def _finite_only(path: Path, spectra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The spectra without NaN or infinite values: such a module has no metrics (one warning for
    all of them), and the command goes on with the others."""
    bad = [key for key, s in spectra.items() if not np.isfinite(s).all()]
    if bad:
        log.warning(
            "%s: %d module(s) hold NaN or infinite singular values and get no metrics (e.g. %s)",
            printable(str(path)),
            len(bad),
            printable(bad[0], limit=120),
        )
    return {key: s for key, s in spectra.items() if key not in set(bad)}


def _metadata(path: Path, data: bytes) -> dict:
    """The `__metadata__` of a safetensors byte string, read from its JSON header."""
    bad = SpectrumError(f"{path}: not a spectrum-stream spectra file (no safetensors header)")
    if len(data) < 8:
        raise bad
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise bad
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError):
        raise bad from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _shapes(path: Path, text, spectra: dict) -> dict[str, tuple[int, int]]:
    """The shapes from the metadata, checked: one [m, n] per tensor, k = min(m, n) values."""
    try:
        raw = orjson.loads(text)
        shapes = {key: (raw[key][0], raw[key][1]) for key in spectra}
    except (TypeError, ValueError, KeyError, IndexError, orjson.JSONDecodeError):
        raise SpectrumError(
            f"{path}: spectra file without a valid shape for every module"
        ) from None
    for key, s in spectra.items():
        if matrix_k(list(shapes[key])) is None or len(raw[key]) != 2:
            raise SpectrumError(
                f"{path}: spectra file without a valid shape for every module ("
                f"{printable(key, limit=120)!r}: {printable(str(raw[key]), limit=80)}, expected "
                "[m, n] of integers from 1 to 2**40)"
            )
        if s.size > MAX_SPECTRUM:
            raise SpectrumError(
                f"{path}: {printable(key, limit=120)!r} holds {s.size} singular values, more than "
                f"any real matrix has ({MAX_SPECTRUM}); the spectra file is not a scan's"
            )
        if s.ndim != 1 or s.size != min(shapes[key]):
            raise SpectrumError(
                f"{path}: {key!r} holds {s.size} singular values for a "
                f"{shapes[key][0]}x{shapes[key][1]} matrix"
            )
    return shapes
