"""`spectrum-stream demo`: a planted-signal Llama checkpoint, scanned, with the answer checked."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..driver import scan
from ..options import ScanOptions, ScanReport
from ..results.files import sorted_by_type
from .synthetic import write_planted_llama

DEMO_NAME = "spectrum-stream/demo-llama"


def run_demo(
    out_dir: Path, device: str = "auto", progress: bool = True, keep: Path | None = None
) -> tuple[ScanReport, list[str]]:
    """Write the demo checkpoint, scan it fresh, and check each type's top module.

    Returns the report and one line per type saying whether the top module is the planted one.
    """
    with tempfile.TemporaryDirectory(prefix="spectrum-demo-") as tmp:
        folder = Path(keep) if keep else Path(tmp) / "demo-llama"
        planted = write_planted_llama(folder)
        report = scan(
            folder,
            ScanOptions(
                out_dir=out_dir, name=DEMO_NAME, device=device, fresh=True, progress=progress
            ),
        )
    verdicts = []
    for mtype, mods in sorted_by_type(report.results).items():
        if len(mods) < 2:
            continue
        top = next(iter(mods))
        best = max((k for k in mods), key=lambda k: planted[k])
        ok = "ok  " if top == best else "MISS"
        verdicts.append(
            f"  {ok} {mtype:<18} top {top} (planted rank {planted[top]}; strongest planted: {best})"
        )
    return report, verdicts
