"""The values a scan's callers hand in and get back: its options, its report, its interruption.

Kept apart from the loop so that the summary, the demo and the CLI need not import the scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ScanInterrupted as ScanInterrupted  # raised with a ScanReport
from .errors import SpectrumError
from .modes import APPROXIMATE_DRIVERS, METHODS, SVD_DRIVERS, Grouping, Method, Names, SvdDriver

if TYPE_CHECKING:
    from .results.paths import ResultPaths

DEFAULT_BATCH_BYTES = 256 * 1024**2


@dataclass
class ScanOptions:
    """Settings of one scan; `method`, `include` and `exclude` are part of the resume fingerprint
    (`names` and `grouping` only choose how the results files present the journal)."""

    out_dir: Path = Path("model_snr_results")
    name: str | None = None
    device: str = "auto"
    include: str | None = None
    exclude: str | None = None
    method: Method = "exact"
    fresh: bool = False
    batch_bytes: int = DEFAULT_BATCH_BYTES
    progress: bool = True
    prefetch: bool | None = None  # read the next tensor during the current SVD; None: on for CUDA
    svd_driver: SvdDriver | None = None  # CUDA only: gesvd | gesvdj (None: gesvd for k >= 512)
    max_gpu_mem: int | None = None  # CUDA only: cap on device bytes (None: 90% of free memory)
    workers: int | None = None  # CPU only: matrices decomposed at once (None: 2 for gram, else 1)
    names: Names = "trainer"  # results keys: trainer (transformers 5 parameters) | checkpoint
    grouping: Grouping = "pooled"  # results types: pooled | per-expert (docs/moe.md)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a mode outside its Literal's values, on construction: one SpectrumError line."""
        from .results.names import check_grouping, check_names

        check_names(self.names)
        check_grouping(self.grouping)
        if self.method not in METHODS:
            raise SpectrumError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.svd_driver is not None and self.svd_driver not in SVD_DRIVERS:
            raise SpectrumError(
                f"--svd-driver {self.svd_driver!r}: expected one of {', '.join(SVD_DRIVERS)}"
            )
        if self.svd_driver in APPROXIMATE_DRIVERS:
            raise SpectrumError(
                f"--svd-driver {self.svd_driver}: cuSOLVER's approximate driver "
                "(no accuracy guarantee), so its values could not be journaled as "
                "exact; use gesvd or gesvdj"
            )

    def check(self, device_type: str) -> None:
        """Refuse settings that cannot work together on this device, with one line (the modes
        again too: a field may have been changed since construction)."""
        self.validate()
        if self.svd_driver and device_type != "cuda":
            raise SpectrumError(
                f"--svd-driver {self.svd_driver}: only for CUDA devices, not {device_type}"
            )
        if self.workers is not None and (
            self.workers < 1 or (self.workers > 1 and device_type != "cpu")
        ):
            raise SpectrumError(
                f"--workers {self.workers}: a count of 1 or more, above 1 only "
                f"on CPU (device {device_type})"
            )


@dataclass
class ScanReport:
    """What a scan did, for the summary and for callers of the API."""

    model_name: str
    paths: ResultPaths
    device: str
    planned: int = 0
    skipped: int = 0
    scanned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    results: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False
