"""Spectral metrics beyond the SNR, the spectra file they are computed from, and scan comparison."""

from ..results.spectra import read_spectra, spectra_path, write_spectra
from .compare import compare_results, format_compare_text, load_published_results, spearman
from .spectral import metrics_rows, spectral_metrics, write_table

__all__ = [
    "compare_results",
    "format_compare_text",
    "load_published_results",
    "metrics_rows",
    "read_spectra",
    "spearman",
    "spectra_path",
    "spectral_metrics",
    "write_spectra",
    "write_table",
]
