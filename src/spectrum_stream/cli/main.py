"""The `spectrum-stream` command line: a thin layer over scan(), select() and the demo."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click

from ..errors import AlreadyReported, ScanInterrupted, SpectrumError
from ..modes import GROUPINGS, METHODS, NAMES, SELECT_FORMATS, SVD_DRIVERS
from ..printable import printable
from . import logs
from .lazy import LazyGroup


def _error(message: object) -> None:
    """The one error line: control characters escaped, on one line (docs/robustness.md)."""
    click.echo(f"error: {printable(' '.join(str(message).splitlines()))}", err=True)


def _on_sigterm(signum, frame):
    """SIGTERM is Ctrl-C: the scan loop turns either into ScanInterrupted (errors.py)."""
    raise KeyboardInterrupt


def _lingering() -> bool:
    """Under torchrun, is anything of torch's (or any thread) still alive after the group's
    teardown? Then interpreter shutdown could abort in C++ (exit 134): leave by os._exit."""
    group = sys.modules.get("spectrum_stream.distributed.group")
    return bool(group is not None and group.lingering())


def _leave(code: int) -> NoReturn:
    """Every exit of the CLI with `code`: at once (output flushed) if a worker thread is still
    inside a decomposition nobody will journal (the interpreter would wait for it, minutes on a
    big matrix), or if torch is still alive under torchrun; else the normal way."""
    workers = sys.modules.get("spectrum_stream.kernel.workers")  # never imported just for this
    if (workers is not None and workers.workers_busy()) or _lingering():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


class _Cli(LazyGroup):
    """Turns expected failures into one line on stderr instead of a traceback."""

    def invoke(self, ctx):
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            done = super().invoke(ctx)
        except AlreadyReported as quiet:  # another rank printed the line
            _leave(quiet.code)
        except ScanInterrupted as stop:
            if getattr(stop, "line", None):  # every rank's journal, under torchrun
                click.echo(stop.line, err=True)
                _leave(130)
            r = stop.report
            kept = r.skipped + r.scanned
            click.echo(
                f"interrupted: {kept} of {r.planned} modules are kept in "
                f"{os.path.relpath(r.paths.journal)}; run the same command again to resume",
                err=True,
            )
            _leave(130)
        except SpectrumError as exc:
            _error(exc)
            _leave(1)
        except KeyboardInterrupt:  # outside a scan's loop (e.g. while reading headers)
            click.echo("error: interrupted", err=True)
            _leave(130)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _error(f"{where}{exc.strerror or exc}")
            _leave(1)
        if _lingering():  # a finished torchrun rank
            _leave(0)
        return done


@click.group(
    cls=_Cli,
    lazy={  # commands in their own modules, imported when named (or listed by --help)
        "metrics": ".analysis:metrics",
        "report": ".analysis:report",
        "compare": ".analysis:compare",
        "plan": ".plan_cmd:plan_command",
    },
)
@click.version_option(package_name="spectrum-stream")
def main():
    """Scan LLM checkpoints for Spectrum fine-tuning, one tensor at a time."""


_device = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (the GPU when there is one), cpu, cuda or cuda:N.",
)
_out_dir = click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=Path("model_snr_results"),
    show_default=True,
    help="Where results, journal and lock go (axolotl looks in ./model_snr_results).",
)
_quiet = click.option("--quiet", is_flag=True, help="No progress bar.")
_names = click.option(
    "--names",
    type=click.Choice(NAMES),
    default="trainer",
    show_default=True,
    help="Results keys: trainer = the parameters of the model as transformers 5 "
    "loads it (fused experts as rows, experts.gate_up_proj$[N]); checkpoint = "
    "the checkpoint's module names (transformers 4, other trainers).",
)
_grouping = click.option(
    "--expert-grouping",
    type=click.Choice(GROUPINGS),
    default="pooled",
    show_default=True,
    help="Results types: pooled = all experts of a projection rank together; "
    "per-expert = one type per expert index (the original tool).",
)


@main.command()
@click.argument("path")
@_device
@_out_dir
@click.option(
    "--name",
    help="Model name for the results file name (default: config.json's "
    "_name_or_path, else the folder name).",
)
@click.option("--include", metavar="REGEX", help="Scan only modules whose type or name matches.")
@click.option("--exclude", metavar="REGEX", help="Skip modules whose type or name matches.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="exact",
    show_default=True,
    help="exact: torch.linalg.svdvals in float32 (the original tool). gram: eigenvalues "
    "of the float64 Gram matrix, 1.8-2x faster on CPU (bench/RESULTS.md); any matrix whose error bound "
    "passes 1e-5 is redone exactly (noted in the journal).",
)
@click.option(
    "--batch-mem",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    metavar="MIB",
    help="Memory budget for batching same-shape matrices; with --method "
    "gram, bigger matrices are read in blocks and never held whole in float32.",
)
@click.option(
    "--prefetch/--no-prefetch",
    default=None,
    help="Read the next tensor while the current one is decomposed (default: on for "
    "CUDA, off for CPU, where it measured no gain).",
)
@click.option(
    "--svd-driver",
    type=click.Choice(SVD_DRIVERS),
    help="CUDA only: cuSOLVER driver for --method exact (default: gesvd for matrices of "
    "512+ columns, torch's choice below). gesvda is approximate and refused.",
)
@click.option(
    "--max-gpu-mem",
    type=click.IntRange(min=1),
    metavar="MIB",
    help="CUDA only: cap on GPU memory (default: 90% of what is free). A matrix whose route "
    "needs more is read in blocks (--method gram) or decomposed on the CPU (exact).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="CPU only: matrices decomposed at once, the cores shared between them "
    "(default: 2 with --method gram, where it measured faster; else 1). Each holds its "
    "own batch or Gram matrix, so memory grows with N.",
)
@click.option("--fresh", is_flag=True, help="Ignore the journal and start over.")
@click.option("--revision", help="Hub: branch, tag or commit to scan (default: main).")
@click.option(
    "--token",
    help="Hub: access token for gated or private repos (default: HF_TOKEN or your saved login).",
)
@click.option(
    "--delete-shards",
    is_flag=True,
    help="Hub: delete each shard from the Hugging Face cache once all its modules are journaled.",
)
@click.option(
    "--max-disk",
    metavar="SIZE",
    help="Hub: most bytes of shards on disk at once, e.g. "
    "40GB or 500MiB (implies --delete-shards).",
)
@click.option(
    "--peer-timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="Under torchrun: how long a rank waits for a silent peer, "
    "and for each exchange between ranks, before it stops the run.",
)
@_names
@_grouping
@_quiet
def scan(
    path,
    device,
    out_dir,
    name,
    include,
    exclude,
    method,
    batch_mem,
    prefetch,
    svd_driver,
    max_gpu_mem,
    workers,
    fresh,
    revision,
    token,
    delete_shards,
    max_disk,
    peer_timeout,
    names,
    expert_grouping,
    quiet,
):
    """Scan the checkpoint at PATH (a folder, an index or a .safetensors file) or the Hub model
    repo ORG/NAME, shard by shard. An existing local path wins over a repo id.

    Under torchrun (`torchrun --nproc-per-node N -m spectrum_stream scan ...`) the ranks split the
    work by cost; `--device cuda` is then each rank's cuda:LOCAL_RANK, `--max-disk` is per node."""
    import contextlib
    import re

    from .. import driver
    from ..distributed.env import from_env
    from ..options import ScanOptions
    from .summary import format_summary

    ranks = from_env()
    life: contextlib.AbstractContextManager = contextlib.nullcontext()
    if ranks is not None:  # one rank of a torchrun job: only rank 0 shows a bar and the summary
        import torch

        from ..distributed.env import rank_device
        from ..distributed.group import joined

        device = rank_device(device, ranks, torch.cuda.is_available())
        quiet = quiet or ranks.rank != 0
        life = joined(ranks, device, peer_timeout)
    with life as group:  # under torchrun the group's whole life: built, used, torn down
        logs.install(quiet, rank=f"[rank {ranks.rank}/{ranks.world}] " if ranks else "")
        from ..hub_scan import scan_hub_group
        from ..source.hub.repo import is_hub_id
        from ..units import parse_size

        def check() -> bool:
            for flag, rx in (("--include", include), ("--exclude", exclude)):
                if rx:
                    try:
                        re.compile(rx)
                    except re.error as exc:
                        raise SpectrumError(f"{flag} {rx!r}: not a valid regex ({exc})") from None
            hub = is_hub_id(path)
            hub_only = [
                flag
                for flag, value in (
                    ("--revision", revision),
                    ("--token", token),
                    ("--delete-shards", delete_shards),
                    ("--max-disk", max_disk),
                )
                if value
            ]
            if hub_only and not hub:
                raise SpectrumError(
                    f"{path}: {', '.join(hub_only)} only apply to a Hub repo id "
                    "(ORG/NAME that is not a local path)"
                )
            if max_disk is not None:
                parse_size(max_disk)
            return hub

        hub = group.agree(check) if group else check()
        opts = ScanOptions(
            out_dir=out_dir,
            name=name,
            device=device,
            include=include,
            exclude=exclude,
            method=method,
            fresh=fresh,
            batch_bytes=batch_mem * 1024**2,
            progress=not quiet,
            prefetch=prefetch,
            svd_driver=svd_driver,
            max_gpu_mem=max_gpu_mem * 1024**2 if max_gpu_mem else None,
            workers=workers,
            names=names,
            grouping=expert_grouping,
        )
        if hub:
            report = scan_hub_group(
                path,
                opts,
                group,
                revision=revision,
                token=token,
                delete_shards=delete_shards,
                max_disk=parse_size(max_disk) if max_disk is not None else None,
            )
        elif group is not None:
            from ..distributed.ranked import scan_local_ranked

            report = scan_local_ranked(path, opts, group)
        else:
            report = driver.scan(path, opts)
        if group is None or group.rank == 0:
            click.echo(format_summary(report))


@main.command()
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


@main.command()
@click.argument("journal", type=click.Path(path_type=Path))
@_names
@_grouping
def rebuild(journal, names, expert_grouping):
    """Write the results files again from a scan's JOURNAL (*.journal.jsonl), e.g. mid-scan, or
    under other --names / --expert-grouping (no rescan)."""
    from ..results.files import rebuild_results

    paths, results, failed = rebuild_results(journal, names, expert_grouping)
    click.echo(
        f"wrote {os.path.relpath(paths.results)}, {os.path.relpath(paths.sorted)} and "
        f"{os.path.relpath(paths.spectra)}: {len(results)} modules, {len(failed)} failed"
    )


@main.command()
@_device
@_out_dir
@click.option("--keep", type=click.Path(path_type=Path), help="Keep the demo checkpoint here.")
@_quiet
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
