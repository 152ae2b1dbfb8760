"""A scan's report from its files: results, the spectra beside them, metrics computed or read back.

Why apart from build_report: build_report draws what it is given; this decides what to give it
the way the CLI promises (the same selection as `select`, alpha from a metrics table or from the
kept spectra), so that `report` and `demo` make the same page.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics.compute import compute_rows
from ..metrics.table_file import read_metrics_table
from ..results.kept_spectra import load_kept_spectra
from ..results.paths import RESULTS_PREFIX
from ..results.select import load_results, select
from .build import build_report


def model_title(results_path: Path) -> str:
    """`snr_results_<slug>.json` -> `<slug>`: the model as the results file names it."""
    stem = Path(results_path).stem
    return stem.removeprefix(RESULTS_PREFIX)


def report_from_results(
    results_path,
    out_dir,
    *,
    top_percent: float = 25.0,
    grouping: str | None = None,
    metrics_file=None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write out_dir/index.html for the scan whose results file is `results_path`; return its path."""
    results_path = Path(results_path)
    results = load_results(results_path)
    chosen = select(results, top_percent, grouping)
    selected = {key for keys in chosen.values() for key in keys}
    spectra, shapes, reason = load_kept_spectra(results_path, results, required=False)
    notes = [] if reason is None else [f"No spectra or alpha: {reason.replace('`', '')}."]
    if metrics_file is not None:
        metrics = read_metrics_table(metrics_file)
    elif spectra:
        metrics = {
            row["key"]: row
            for row in compute_rows(results, spectra, shapes, progress=progress, workers=workers)
        }
    else:
        metrics = None
    how = grouping or "the file's types"
    flag = f" --expert-grouping {grouping}" if grouping else ""
    notes.append(
        f"Selection: top {top_percent:g}% by SNR within each type ({how}), the modules "
        f"spectrum-stream select {results_path.name} --top-percent {top_percent:g}{flag} "
        "chooses."
    )
    return build_report(
        results,
        out_dir,
        selected=selected,
        top_percent=top_percent,
        spectra=spectra,
        shapes=shapes,
        metrics=metrics,
        title=model_title(results_path),
        notes=notes,
    )
