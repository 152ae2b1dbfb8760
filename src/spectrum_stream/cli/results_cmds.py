"""`select` and `rebuild`: commands that read a scan's results file or journal, never a checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..modes import GROUPINGS, SELECT_FORMATS
from . import logs, options


@click.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option(
    "--top-percent",
    type=float,
    default=25.0,
    show_default=True,
    help="Share of each type to unfreeze, highest SNR first.",
)
@click.option(
    "--expert-grouping",
    type=click.Choice(GROUPINGS),
    help="Regroup before ranking: per-expert = one type per expert index; pooled = all "
    "experts of a projection together (default: the file's types, which `scan "
    "--expert-grouping` wrote and axolotl's Spectrum plugin ranks within).",
)
@click.option(
    "--fused-experts",
    is_flag=True,
    help="For results written with --names checkpoint: name per-expert modules "
    "(experts.N.w1 ...) as the fused parameters of transformers >= 5.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(SELECT_FORMATS),
    default="yaml",
    show_default=True,
    help="yaml: axolotl's unfrozen_parameters; json: a plain list.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write here, not stdout.")
@click.option(
    "--drop-rank-deficient",
    is_flag=True,
    help="Leave numerically rank-deficient modules (SNR from rounding error; docs/spec.md) "
    "out of the ranking. Off by default: the selection then equals the original tool's.",
)
@click.option("--force", is_flag=True, help="Replace the --output file if it exists.")
def select(
    results, top_percent, expert_grouping, fused_experts, fmt, output, drop_rank_deficient, force
):
    """Choose the modules to train from a RESULTS file written by `scan`."""
    from ..results.atomic import atomic_write
    from ..results.outputs import claim_output, results_inputs
    from ..results.rank_floor import deficient_line, rank_deficient, without
    from ..results.select import LISTED_IN_YAML, read_results, to_yaml, unfrozen_parameters
    from ..results.select import select as chosen_by_type

    if output:  # never onto the results file, nor the spectra file read beside it
        claim_output(output, results_inputs(results), force)
    logs.install(True)  # the reader's warning about skipped modules
    read = read_results(results, LISTED_IN_YAML)
    data = read.results
    deficient = rank_deficient(results, data, lambda line: click.echo(f"warning: {line}", err=True))
    if drop_rank_deficient:
        data = without(data, deficient)
        if deficient:
            click.echo(
                f"left {len(deficient)} rank-deficient module(s) out of the ranking", err=True
            )
    else:
        by_type = chosen_by_type(data, top_percent, expert_grouping)
        chosen = [k for keys in by_type.values() for k in keys]
        warning = deficient_line("selected", chosen, deficient)
        if warning:
            click.echo(f"warning: {warning}; --drop-rank-deficient leaves them out", err=True)
    if fmt == "yaml":
        text = to_yaml(data, top_percent, expert_grouping, fused_experts, read.skipped)
    else:
        patterns = unfrozen_parameters(data, top_percent, expert_grouping, fused_experts)
        text = json.dumps(patterns, indent=2) + "\n"
    if output:
        atomic_write(output, text.encode())
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.argument("journal", type=click.Path(path_type=Path))
@options.names
@options.grouping
def rebuild(journal, names, expert_grouping):
    """Write the results files again from a scan's JOURNAL (*.journal.jsonl), e.g. mid-scan, or
    under other --names / --expert-grouping (no rescan)."""
    from ..results.files import rebuild_results

    paths, results, failed = rebuild_results(journal, names, expert_grouping)
    click.echo(
        f"wrote {os.path.relpath(paths.results)}, {os.path.relpath(paths.sorted)} and "
        f"{os.path.relpath(paths.spectra)}: {len(results)} modules, {len(failed)} failed"
    )
