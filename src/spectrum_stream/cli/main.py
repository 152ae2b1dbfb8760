"""The `spectrum-stream` command line: a thin layer over scan(), select() and the demo."""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

import click

from ..errors import AlreadyReported, ScanInterrupted, SpectrumError
from ..modes import METHODS, SVD_DRIVERS
from ..printable import printable
from . import logs, options
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
        "select": ".results_cmds:select",
        "rebuild": ".results_cmds:rebuild",
        "demo": ".demo_cmd:demo",
    },
)
@click.version_option(package_name="spectrum-stream")
def main():
    """Scan LLM checkpoints for Spectrum fine-tuning, one tensor at a time."""


@main.command()
@click.argument("path")
@options.device
@options.out_dir
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
@options.names
@options.grouping
@options.quiet
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
        from ..hub_scan import HubRequest, scan_hub_group
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
            size = parse_size(max_disk) if max_disk is not None else None
            request = HubRequest(path, revision, token, delete_shards, size)
            report = scan_hub_group(request, opts, group)
        elif group is not None:
            from ..distributed.ranked import scan_local_ranked

            report = scan_local_ranked(path, opts, group)
        else:
            report = driver.scan(path, opts)
        if group is None or group.rank == 0:
            click.echo(format_summary(report))
