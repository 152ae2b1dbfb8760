"""Which files a command may replace: only what the user named as an output, and only with --force.

The convention of cp -n / curl --no-clobber / `git branch` without -f: an output that exists is
refused in one line ("exists; pass --force to replace it"), and a command never writes onto its
own input, --force or not (`metrics R.json -o R.json` would replace the results with the table).
With --force an output is replaced atomically; a symlink there is replaced by a file, the file it
pointed to is left alone (docs/robustness.md, "Overwrites").
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import WouldOverwrite
from ..journal.ranks import rank_journals
from ..printable import printable
from ..source.safe_files import check_name, exists
from .paths import RESULTS_PREFIX, ResultPaths

REPORT_MARK = ".spectrum-stream-report"  # left in a report folder: a later report may replace it


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def results_inputs(results: Path) -> list[Path]:
    """What a command reading a results file reads: the file, and the spectra file a scan keeps
    beside it (only a scan's `snr_results_<model>.json` has one). An output may be neither."""
    inputs = [results]
    if results.name.startswith(RESULTS_PREFIX) and results.suffix == ".json":
        inputs.append(ResultPaths.for_results(results).spectra)
    return inputs


def claim_output(output: Path, inputs: list[Path], force: bool, flag: str = "--force") -> Path:
    """`output`, refused (WouldOverwrite) when it is one of `inputs`, or exists without `force`."""
    output = check_name(output)
    for source in inputs:
        if exists(source) and exists(output) and _same(output, source):
            raise WouldOverwrite(
                f"{printable(str(output))}: is this command's input {printable(str(source))}; "
                "write the output elsewhere"
            )
    if exists(output) and not force:
        raise WouldOverwrite(
            f"{printable(str(output))}: exists; pass {flag} to replace it, or choose another -o"
        )
    return output


def refuse_foreign_results(paths: ResultPaths) -> None:
    """A scan replaces results files only when a journal of ours is beside them: a results file
    with none was written by someone else (the original tool after hours on a GPU node, a
    colleague) and is refused, never replaced."""
    if exists(paths.journal) or rank_journals(paths.journal):
        return
    for path in (paths.results, paths.sorted, paths.spectra):
        if exists(path):
            raise WouldOverwrite(
                f"{printable(str(path))}: exists with no scan journal beside it (written by "
                "another tool or run?); refusing to replace it: scan with --out-dir DIR or "
                "--name NAME, or move the file away"
            )


def claim_report_folder(out_dir: Path, force: bool) -> Path:
    """`out_dir` for a report: missing, empty or holding an earlier report (its mark), else
    refused without `force` (its index.html and pictures would be replaced)."""
    out_dir = check_name(out_dir)
    if not exists(out_dir):
        return out_dir
    if not out_dir.is_dir():
        raise WouldOverwrite(f"{printable(str(out_dir))}: exists and is not a folder")
    if force or (out_dir / REPORT_MARK).is_file() or not any(out_dir.iterdir()):
        return out_dir
    raise WouldOverwrite(
        f"{printable(str(out_dir))}: a folder that holds files but no earlier report; its "
        "index.html and selection.yaml would be replaced: pass --force, or choose an empty folder"
    )


def mark_report_folder(out_dir: Path) -> None:
    """Leave the mark that says this folder holds a report (a later report may replace it)."""
    mark = Path(out_dir) / REPORT_MARK
    if not exists(mark):
        mark.write_text("written by spectrum-stream report\n", encoding="utf-8")
