"""spectrum-stream: Spectrum SNR scans of huge checkpoints, one tensor at a time.

The pipeline, one sub-package per stage (docs/architecture.md): source -> layout -> read -> kernel ->
journal -> results, with loop.py the loop that drives them, driver.py around it, and cli/ on top. The library logs
through `logging` (logger `spectrum_stream`) and installs no handler of its own.
"""

import logging

from .driver import scan
from .errors import CheckpointError, ResumeError, SpectrumError
from .hub_scan import scan_hub
from .options import ScanInterrupted, ScanOptions, ScanReport
from .results.select import select, to_yaml, unfrozen_parameters
from .trainers.freeze import FreezeSummary, freeze

logging.getLogger(__name__).addHandler(logging.NullHandler())

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
