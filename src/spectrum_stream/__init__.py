"""spectrum-stream: Spectrum SNR scans of huge checkpoints, one tensor at a time.

The pipeline, one sub-package per stage (docs/architecture.md): source -> layout -> read -> kernel ->
journal -> results, with scanloop/ the loop that drives them, driver.py around it, and cli/ on top.
The library logs through `logging` (logger `spectrum_stream`) and installs no handler of its own.

The public names are imported on first use (PEP 562), so that `import spectrum_stream` and the
CLI's `--help` do not pay for torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import scan
    from .errors import CheckpointError, ResumeError, ScanInterrupted, SpectrumError
    from .hub_scan import scan_hub
    from .options import ScanOptions, ScanReport
    from .results.select import select, to_yaml, unfrozen_parameters
    from .trainers.freeze import FreezeSummary, freeze

logging.getLogger(__name__).addHandler(logging.NullHandler())

_WHERE: dict[str, str] = {
    "CheckpointError": ".errors",
    "FreezeSummary": ".trainers.freeze",
    "ResumeError": ".errors",
    "ScanInterrupted": ".errors",
    "ScanOptions": ".options",
    "ScanReport": ".options",
    "SpectrumError": ".errors",
    "freeze": ".trainers.freeze",
    "scan": ".driver",
    "scan_hub": ".hub_scan",
    "select": ".results.select",
    "to_yaml": ".results.select",
    "unfrozen_parameters": ".results.select",
}

__all__ = [
    "CheckpointError",
    "FreezeSummary",
    "ResumeError",
    "ScanInterrupted",
    "ScanOptions",
    "ScanReport",
    "SpectrumError",
    "freeze",
    "scan",
    "scan_hub",
    "select",
    "to_yaml",
    "unfrozen_parameters",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
