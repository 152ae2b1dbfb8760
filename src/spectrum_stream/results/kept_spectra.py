"""The singular values a scan kept beside its results file, or why there are none.

Why one place: `metrics` needs them and stops without them; `report` draws without them and says
so. Both must say the same thing: scans before spectra were kept wrote none, only a rescan makes
them (`rebuild` rewrites the spectra file from the journal's spectra log, which such scans never
wrote).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpectrumError
from .spectra import read_spectra, spectra_path


def missing_reason(results_path, spectra_file: Path, empty: bool = False) -> str:
    """One line: which file is missing (or empty), why, and how to get it."""
    what = "holds no singular values for it" if empty else "is missing"
    return (
        f"{spectra_file}: the spectra file beside {results_path} {what}: the scan that wrote it "
        "kept no singular values (scans before spectra were kept did not; a results file "
        "from another tool has none); scan the checkpoint again to get them (`rebuild` cannot recreate "
        "values that were never kept)"
    )


def load_kept_spectra(results_path, results: dict, required: bool = True):
    """({key: values}, {key: (m, n)}, None) for the keys of `results`, or ({}, {}, reason) when the
    scan kept none and `required` is False; SpectrumError with that reason when it is True."""
    path = spectra_path(results_path)
    if not path.is_file():
        reason = missing_reason(results_path, path)
    else:
        spectra, shapes = read_spectra(path)
        spectra = {k: v for k, v in spectra.items() if k in results}
        if spectra:
            return spectra, {k: shapes[k] for k in spectra}, None
        reason = missing_reason(results_path, path, empty=True)
    if required:
        raise SpectrumError(reason)
    return {}, {}, reason
