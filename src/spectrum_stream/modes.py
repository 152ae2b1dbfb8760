"""Every mode a scan or a command takes, as a `Literal` type and the tuple of its values.

Defined once here, with nothing heavy imported, so that options, the CLI's choices and type
checkers read the same values (the CLI builds its click.Choice lists from these tuples).
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["exact", "gram"]
METHODS: tuple[Method, ...] = get_args(Method)

Names = Literal["trainer", "checkpoint"]
NAMES: tuple[Names, ...] = get_args(Names)

Grouping = Literal["pooled", "per-expert"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)

SvdDriver = Literal["gesvd", "gesvdj", "gesvda"]
SVD_DRIVERS: tuple[SvdDriver, ...] = get_args(SvdDriver)
APPROXIMATE_DRIVERS: tuple[SvdDriver, ...] = ("gesvda",)  # no accuracy guarantee: never journaled

TextFormat = Literal["text", "json"]  # compare, plan
TEXT_FORMATS: tuple[TextFormat, ...] = get_args(TextFormat)

Optimizer = Literal["adamw", "adamw-8bit"]  # the planner's optimizer-state bytes per parameter
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)

SelectFormat = Literal["yaml", "json"]
SELECT_FORMATS: tuple[SelectFormat, ...] = get_args(SelectFormat)


def check_top_percent(top_percent: float) -> float:
    """The one check of a --top-percent value: a number from 0 to 100 (a SpectrumError if not)."""
    from .errors import SpectrumError

    if not 0 <= top_percent <= 100:  # NaN fails this too
        raise SpectrumError(f"--top-percent {top_percent}: expected a number from 0 to 100")
    return top_percent
