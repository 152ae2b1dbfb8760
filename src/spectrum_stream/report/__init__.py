"""An offline HTML report of a scan: SNR heatmaps, per-expert grids, spectra and the selection."""

from .build import build_report
from .keys import ModuleKey, parse_key

__all__ = ["ModuleKey", "build_report", "parse_key"]
