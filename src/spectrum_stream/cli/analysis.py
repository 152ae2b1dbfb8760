"""`metrics`, `report` and `compare`: looking at a finished scan, without touching the checkpoint.

Each reads files a scan wrote (the results JSON and the spectra beside it) and is registered on
the main group at the end of cli/main.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from ..errors import SpectrumError
from ..modes import GROUPINGS, TEXT_FORMATS, check_top_percent
from . import options

_workers = click.option(
    "--workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="Processes that fit the spectra (default: the CPU cores; small "
    "scans stay in one process).",
)
_top = click.option(
    "--top-percent",
    type=float,
    default=25.0,
    show_default=True,
    help="Share of each type selected, highest SNR first.",
)


@click.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="The table to write: .csv or .json (chosen by the suffix).",
)
@click.option("--force", is_flag=True, help="Replace the --output file if it exists.")
@_workers
@options.quiet
def metrics(results, output, force, workers, quiet):
    """Write WeightWatcher's per-module metrics (alpha, stable rank, entropy, ...) next to each
    module's SNR, from the spectra the scan kept beside RESULTS."""
    from ..metrics.compute import compute_rows
    from ..metrics.spectral import write_table
    from ..results.kept_spectra import load_kept_spectra
    from ..results.outputs import claim_output, results_inputs
    from ..results.select import load_results
    from . import logs

    logs.install(quiet)  # the reader's warning about skipped modules
    if output.suffix.lower() not in (".csv", ".json"):
        raise SpectrumError(f"{output}: the metrics table must end in .csv or .json")
    claim_output(output, results_inputs(results), force)
    data = load_results(results)
    spectra, shapes, _ = load_kept_spectra(results, data)
    rows = compute_rows(data, spectra, shapes, progress=not quiet, workers=workers)
    write_table(rows, output)
    with_metrics = sum(row["key"] in spectra for row in rows)
    click.echo(f"wrote {output}: {len(rows)} rows, {with_metrics} with metrics")


@click.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for index.html and its pictures (created if needed).",
)
@_top
@click.option(
    "--expert-grouping",
    type=click.Choice(GROUPINGS),
    help="Rank experts together (pooled) or per expert index, as `select` does "
    "(default: the file's own types).",
)
@click.option(
    "--metrics",
    "metrics_file",
    type=click.Path(path_type=Path),
    help="A table written by `spectrum-stream metrics` (.csv or .json) for the alpha "
    "heatmap (default: computed from the kept spectra).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into an --output folder that holds other files (same-named ones are replaced).",
)
@_workers
@options.quiet
def report(results, out_dir, top_percent, expert_grouping, metrics_file, force, workers, quiet):
    """Write an offline HTML report of a scan: SNR heatmaps, expert grids, spectra, alpha and the
    modules chosen for training."""
    from ..report.from_results import report_from_results
    from ..results.outputs import claim_report_folder, mark_report_folder
    from . import logs

    claim_report_folder(out_dir, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_report_folder(out_dir)

    logs.install(quiet)  # the reader's warning about skipped modules
    page = report_from_results(
        results,
        out_dir,
        top_percent=top_percent,
        grouping=expert_grouping,
        metrics_file=metrics_file,
        progress=not quiet,
        workers=workers,
        results_arg=str(results),
    )
    click.echo(f"wrote {page} and {page.parent / 'selection.yaml'}")
    click.echo(f"open {page.resolve().as_uri()}")


@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@_top
@click.option(
    "--expert-grouping",
    type=click.Choice(GROUPINGS),
    help="Regroup experts before ranking, in both files (default: each file's own types, "
    "as `select` and `report` rank).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TEXT_FORMATS),
    default="text",
    show_default=True,
    help="text: a readable summary; json: every number (NaN as null).",
)
def compare(a, b, top_percent, expert_grouping, fmt):
    """How far two results files (e.g. ours and one the original Spectrum tool published) agree:
    rank correlation of SNRs and overlap of the top-P selections, per type."""
    from ..metrics.compare import compare_results, format_compare_text
    from ..results.select import read_results
    from . import logs

    logs.install(True)  # the reader's warning about skipped modules
    check_top_percent(top_percent)
    where = "in the compare output (skipped_a / skipped_b)"
    read_a, read_b = read_results(a, where), read_results(b, where)
    found = compare_results(
        read_a.results,
        read_b.results,
        top_percent,
        expert_grouping,
        (read_a.skipped, read_b.skipped),
    )
    if fmt == "json":
        click.echo(json.dumps(_json_safe(found), indent=2, allow_nan=False))
    else:
        click.echo(f"A = {a}\nB = {b}\n")
        click.echo(format_compare_text(found), nl=False)


def _json_safe(value):
    """NaN and infinities as null, everywhere in the report (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
