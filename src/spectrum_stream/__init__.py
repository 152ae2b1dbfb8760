"""spectrum-stream: Spectrum SNR scans of huge checkpoints, one tensor at a time."""

from .errors import CheckpointError, ResumeError, SpectrumError
from .hub import scan_hub
from .scan import ScanOptions, ScanReport, scan
from .select import select, to_yaml, unfrozen_parameters

__all__ = [
    "CheckpointError", "ResumeError", "SpectrumError",
    "ScanOptions", "ScanReport", "scan", "scan_hub", "select", "to_yaml", "unfrozen_parameters",
]
