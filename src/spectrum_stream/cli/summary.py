"""The one-screen summary printed after a scan."""

from __future__ import annotations

import os

from ..options import ScanReport
from ..results.files import sorted_by_type
from ..results.rank_floor import deficient_line, rank_deficient

MAX_TYPES = 16


def format_summary(report: ScanReport) -> str:
    """Counts, time, the best module of each type, and where the files are."""
    lines = [
        f"Scanned {report.model_name} on {report.device}: {report.scanned} modules this run, "
        f"{report.skipped} resumed from the journal, {len(report.failed)} failed, "
        f"{report.planned} planned, in {report.seconds:.1f} s",
    ]
    for key, reason in report.failed[:5]:
        lines.append(f"  failed: {key}: {reason}")
    if len(report.failed) > 5:
        lines.append(f"  ... and {len(report.failed) - 5} more failures (see the journal)")
    by_type = sorted_by_type(report.results)
    if by_type:
        width = min(max(len(t) for t in by_type), 40)
        lines.append(f"Highest SNR per type ({len(by_type)} types, {len(report.results)} modules):")
        for t, mods in list(by_type.items())[:MAX_TYPES]:
            key, snr = next(iter(mods.items()))
            lines.append(f"  {t:<{width}}  {snr:10.4g}  {key}  (of {len(mods)})")
        if len(by_type) > MAX_TYPES:
            lines.append(f"  ... {len(by_type) - MAX_TYPES} more types in the sorted file")
    deficient = rank_deficient(report.paths.results, report.results)
    warning = deficient_line("scanned", report.results, deficient)
    if warning:
        lines.append(f"Warning: {warning}")
    results = os.path.relpath(report.paths.results)
    lines += [
        f"Results: {results}  (axolotl's Spectrum plugin reads this path)",
        f"Sorted:  {os.path.relpath(report.paths.sorted)}",
        f"Spectra: {os.path.relpath(report.paths.spectra)}  (every module's singular values)",
        f"Journal: {os.path.relpath(report.paths.journal)}",
        f"Next:    spectrum-stream select {results} --top-percent 25",
        f"         spectrum-stream report {results} -o report/",
    ]
    return "\n".join(lines)
