"""Where a scan's files live: one value, built in one place, for every command that needs them.

`snr_results_<slug>.json` is the name axolotl's Spectrum plugin looks for (docs/spec.md, "Files");
the journal, the lock, the sorted view and the spectra sit beside it, named after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SpectrumError
from ..journal.journal import JOURNAL_SUFFIX
from ..journal.spectra_log import spectra_log_path
from ..layout.naming import slug

RESULTS_PREFIX = "snr_results_"  # + slug: the name axolotl's plugin looks for


@dataclass(frozen=True)
class ResultPaths:
    """The files of one scan."""

    results: Path  # {key: {"snr", "type"}}: what axolotl reads
    sorted: Path  # {type: {key: snr}}, highest first
    journal: Path  # one line per finished module
    lock: Path  # held while a scan writes here
    spectra: Path  # every module's singular values (safetensors), written with the results
    spectra_log: Path  # the same values as the scan appends them, beside the journal

    @classmethod
    def beside(cls, folder: Path, base: str) -> ResultPaths:
        folder = Path(folder)
        return cls(
            results=folder / f"{base}.json",
            sorted=folder / f"{base}_sorted.json",
            journal=folder / f"{base}{JOURNAL_SUFFIX}",
            lock=folder / f"{base}.lock",
            spectra=folder / f"{base}_spectra.safetensors",
            spectra_log=spectra_log_path(folder / f"{base}{JOURNAL_SUFFIX}"),
        )

    @classmethod
    def for_model(cls, out_dir: Path, model_name: str) -> ResultPaths:
        """Where a scan of `model_name` keeps its files."""
        return cls.beside(Path(out_dir), f"{RESULTS_PREFIX}{slug(model_name)}")

    @classmethod
    def for_journal(cls, journal: Path) -> ResultPaths:
        """The files that belong to a journal (beside it, named after it)."""
        journal = Path(journal)
        if not journal.name.endswith(JOURNAL_SUFFIX):
            raise SpectrumError(
                f"{journal}: not a journal file (expected a name ending in {JOURNAL_SUFFIX})"
            )
        return cls.beside(journal.parent, journal.name[: -len(JOURNAL_SUFFIX)])

    @classmethod
    def for_results(cls, results: Path) -> ResultPaths:
        """The files that belong to a results file `<base>.json`."""
        results = Path(results)
        if results.suffix != ".json":
            raise SpectrumError(f"{results}: not a results file (expected a .json name)")
        return cls.beside(results.parent, results.stem)
