"""Options several commands share, defined once (their choices come from modes.py)."""

from __future__ import annotations

from pathlib import Path

import click

from ..modes import GROUPINGS, NAMES

device = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (the GPU when there is one), cpu, cuda or cuda:N.",
)
out_dir = click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=Path("model_snr_results"),
    show_default=True,
    help="Where results, journal and lock go (axolotl looks in ./model_snr_results).",
)
quiet = click.option("--quiet", is_flag=True, help="No progress bar.")
names = click.option(
    "--names",
    type=click.Choice(NAMES),
    default="trainer",
    show_default=True,
    help="Results keys: trainer = the parameters of the model as transformers 5 "
    "loads it (fused experts as rows, experts.gate_up_proj$[N]); checkpoint = "
    "the checkpoint's module names (transformers 4, other trainers).",
)
grouping = click.option(
    "--expert-grouping",
    type=click.Choice(GROUPINGS),
    default="pooled",
    show_default=True,
    help="Results types: pooled = all experts of a projection rank together; "
    "per-expert = one type per expert index (the original tool).",
)
