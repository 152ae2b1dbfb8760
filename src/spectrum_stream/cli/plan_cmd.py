"""`spectrum-stream plan`: how many GPUs each way of fine-tuning needs, and what the scan costs,
from the checkpoint's headers alone (local, or the Hub by range requests). docs/planner.md."""

from __future__ import annotations

import json

import click

from ..errors import SpectrumError
from ..modes import NAMES, OPTIMIZERS, TEXT_FORMATS, check_top_percent


def _open(path: str, revision: str | None, token: str | None):
    """The checkpoint's headers: a local path wins over a Hub repo id, as in `scan`."""
    from ..source.checkpoint import open_local
    from ..source.hub.repo import is_hub_id

    if is_hub_id(path):
        from ..source.hub.headers import open_hub

        return open_hub(path, revision, token)[0]
    hub_only = [flag for flag, value in (("--revision", revision), ("--token", token)) if value]
    if hub_only:
        raise SpectrumError(
            f"{path}: {', '.join(hub_only)} only apply to a Hub repo id "
            "(ORG/NAME that is not a local path)"
        )
    return open_local(path)[0]


def _measured_rates(ckpt, device: str, calibrate: bool | None) -> dict[str, float] | None:
    """{method: m*n*k per second} measured on `device`, as the Hub scan's estimate is. By default
    only on a GPU (a second or so, and the GPU figures in scan_cost.py are assumptions); on CPU
    with --calibrate (the CPU figures there are measured already)."""
    from ..kernel.calibrate import calibration_size, svd_rate
    from ..layout.jobs import plan_jobs
    from ..read.device import resolve_device

    dev = resolve_device(device)
    if calibrate is False or (calibrate is None and dev.type == "cpu"):
        return None
    size = calibration_size(plan_jobs(ckpt))
    return {method: svd_rate(dev, size, method) for method in ("exact", "gram")}


@click.command("plan")
@click.argument("path")
@click.option(
    "--results",
    "results_path",
    type=click.Path(dir_okay=False),
    help="A results file from `scan`: Spectrum's selection is exactly what `select` "
    "writes from it (default: a seeded stand-in with the same counts per type).",
)
@click.option(
    "--top-percent",
    type=float,
    default=25.0,
    show_default=True,
    help="Spectrum's share of each type.",
)
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    help="Plan for this many GPUs (default: the fewest of 1, 2, 4, 8 that fits).",
)
@click.option(
    "--gpu-mem",
    default="80GB",
    show_default=True,
    metavar="SIZE",
    help="Memory of one GPU, e.g. 80GB, 141GB, 24GiB.",
)
@click.option("--seq-len", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--micro-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", show_default=True)
@click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--names",
    type=click.Choice(NAMES),
    default="trainer",
    show_default=True,
    help="trainer = the model as transformers 5 loads it (fused "
    "experts); checkpoint = the tensors as stored (transformers 4). --results keys "
    "must be written with the same --names.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TEXT_FORMATS),
    default="text",
    show_default=True,
    help="json: the plan document of docs/planner.md.",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=None,
    help="Measure the SVD rate on --device for the scan time (default: on a GPU only).",
)
@click.option("--device", default="auto", show_default=True, help="For --calibrate.")
@click.option("--revision", help="Hub: branch, tag or commit (default: main).")
@click.option("--token", help="Hub: access token (default: HF_TOKEN or your saved login).")
def plan_command(
    path,
    results_path,
    top_percent,
    gpus,
    gpu_mem,
    seq_len,
    micro_batch,
    optimizer,
    lora_rank,
    names,
    fmt,
    calibrate,
    device,
    revision,
    token,
):
    """Plan fine-tuning the checkpoint at PATH or the Hub repo ORG/NAME: GPUs per method (full,
    Spectrum, LoRA, QLoRA), memory per GPU, and the scan's cost. Reads headers only."""
    from ..planner import build_plan, format_plan_text, stored_view, trainer_view
    from ..planner.results_check import check_results_names
    from ..results.select import load_results
    from ..units import parse_size

    mem = parse_size(gpu_mem, "--gpu-mem")
    check_top_percent(top_percent)
    results = load_results(results_path) if results_path else None
    ckpt = _open(path, revision, token)
    view, other = (trainer_view, stored_view) if names == "trainer" else (stored_view, trainer_view)
    if results is not None:
        check_results_names(ckpt, results, view, other, results_path)
    plan = build_plan(
        ckpt,
        results,
        top_percent,
        gpus,
        mem,
        seq_len,
        micro_batch,
        optimizer,
        lora_rank,
        view,
        rates=_measured_rates(ckpt, device, calibrate),
    )
    if fmt == "json":
        click.echo(json.dumps(plan, indent=2))
    else:
        click.echo(format_plan_text(plan), nl=False)
