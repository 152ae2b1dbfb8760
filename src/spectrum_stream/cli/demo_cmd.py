"""`spectrum-stream demo`: the built-in example, scanned and reported, with no network."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import logs, options


@click.command()
@options.device
@options.out_dir
@click.option("--keep", type=click.Path(path_type=Path), help="Keep the demo checkpoint here.")
@options.quiet
def demo(device, out_dir, keep, quiet):
    """Scan a small built-in Llama checkpoint with planted signal, and write its HTML report to
    OUT_DIR/report; no network needed."""
    from ..examples.demo import run_demo
    from .summary import format_summary

    logs.install(quiet)
    click.echo(
        "Writing a 4-layer Llama-layout checkpoint with planted signal, then scanning it.", err=True
    )
    report, verdicts = run_demo(out_dir, device=device, progress=not quiet, keep=keep)
    click.echo(format_summary(report))
    hits = sum(v.lstrip().startswith("ok") for v in verdicts)
    click.echo(
        f"Planted-signal check: {hits} of {len(verdicts)} types rank the planted module first"
    )
    click.echo("\n".join(verdicts))
    from ..report.from_results import report_from_results
    from ..results.outputs import mark_report_folder

    (out_dir / "report").mkdir(parents=True, exist_ok=True)
    mark_report_folder(out_dir / "report")
    page = report_from_results(report.paths.results, out_dir / "report", progress=False)
    click.echo(f"Report: {page}  (open {page.resolve().as_uri()})")
    if hits != len(verdicts):
        sys.exit(1)
