"""A scan's report from its files: results, the spectra and journal beside them, metrics computed
or read back.

Why apart from build_report: build_report draws what it is given; this decides what to give it
the way the CLI promises (the file read by the one results reader, alpha from a metrics table or
from the kept spectra, what was scanned from the journal), so that `report` and `demo` make the
same page.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections import Counter
from importlib import metadata
from pathlib import Path

from ..errors import SpectrumError
from ..results.kept_spectra import load_kept_spectra
from ..results.paths import RESULTS_PREFIX, ResultPaths
from ..results.rank_floor import rank_deficient
from ..results.select import read_results
from .build import build_report

log = logging.getLogger(__name__)


def model_title(results_path: Path) -> str:
    """`snr_results_<slug>.json` -> `<slug>`: the model as the results file names it."""
    stem = Path(results_path).stem
    return stem.removeprefix(RESULTS_PREFIX)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def scan_facts(results_path: Path, results: dict) -> tuple[list[tuple[str, str]], dict]:
    """(label, value) lines saying what was scanned, from the journal beside the results when
    there is one, and {key: (m, n)} from its records (for the selection's size)."""
    facts = [("results file", str(results_path))]
    shapes: dict[str, tuple[int, int]] = {}
    try:
        journal = ResultPaths.for_results(results_path).journal
    except SpectrumError:
        journal = None
    header: dict | None = None
    records: dict[str, dict] = {}
    if journal is not None and journal.is_file():
        from ..journal.journal import read_journal  # only when there is a journal to read

        try:
            header, records, _ = read_journal(journal)
        except SpectrumError as exc:
            facts.append(("journal", f"unreadable ({exc})"))
    if header is not None and journal is not None:
        shards = header.get("checkpoint", [])
        digest = hashlib.sha256(
            "".join(f"{s.get('shard')}:{s.get('header_sha256')}" for s in shards).encode()
        ).hexdigest()
        settings = header.get("settings", {}) if isinstance(header.get("settings"), dict) else {}
        facts.append(("model", model_title(results_path)))
        facts.append(("checkpoint", f"{len(shards)} shard(s), headers' sha256 {digest[:16]}"))
        facts.append(("repo and revision", "not recorded in the journal"))
        facts.append(("method", str(settings.get("method", "not recorded"))))
        ok = [r for r in records.values() if r.get("status") == "ok"]
        devices = Counter(str(r.get("device", "?")) for r in ok)
        methods = Counter(str(r.get("method", "?")) for r in ok)
        facts.append(("routes taken", ", ".join(f"{m} x{n}" for m, n in methods.most_common())))
        facts.append(("device", ", ".join(f"{d} x{n}" for d, n in devices.most_common())))
        mtime = datetime.datetime.fromtimestamp(journal.stat().st_mtime, datetime.timezone.utc)
        facts.append(("scanned", f"journal last written {mtime:%Y-%m-%d %H:%M} UTC"))
        for key, r in records.items():
            shape = r.get("shape")
            if key in results and isinstance(shape, list) and len(shape) == 2:
                shapes[key] = (int(shape[0]), int(shape[1]))
    else:
        facts.append(("checkpoint", "no journal beside the results file: not recorded"))
    now = datetime.datetime.now(datetime.timezone.utc)
    facts.append(
        (
            "report",
            f"made {now:%Y-%m-%d %H:%M} UTC by spectrum-stream {_version('spectrum-stream')}, "
            f"transformers {_version('transformers')}",
        )
    )
    return facts, shapes


def report_from_results(
    results_path,
    out_dir,
    *,
    top_percent: float = 25.0,
    grouping: str | None = None,
    metrics_file=None,
    progress: bool = True,
    workers: int | None = None,
    results_arg: str | None = None,
) -> Path:
    """Write out_dir/index.html (and selection.yaml) for the scan whose results file is
    `results_path`; return the page's path. results_arg: the path as the user typed it."""
    results_path = Path(results_path)
    read = read_results(results_path, "on the report page")
    results = read.results
    if not 0 <= top_percent <= 100:
        raise SpectrumError(f"--top-percent {top_percent}: expected a number from 0 to 100")
    if results_path.name.startswith(RESULTS_PREFIX):
        spectra, shapes, reason = load_kept_spectra(results_path, results, required=False)
    else:  # not a scan's name: no spectra file to look for beside it
        spectra, shapes = {}, {}
        reason = f"{results_path.name} is not named {RESULTS_PREFIX}<model>.json as a scan names it"
    # read_spectra has checked every spectrum: k values of its shape, at most MAX_SPECTRUM
    deficient = rank_deficient(results_path, results) if spectra else {}
    notes = [] if reason is None else [f"No spectra or alpha: {reason.replace('`', '')}."]
    facts, journal_shapes = scan_facts(results_path, results)
    metrics = None
    if metrics_file is not None:
        from ..metrics.table_file import read_metrics_table

        metrics = read_metrics_table(metrics_file)
        facts.append(("metrics", f"read from {metrics_file} (no fit)"))
    elif spectra:
        from ..metrics.compute import compute_rows

        rows = compute_rows(results, spectra, shapes, progress=progress, workers=workers)
        metrics = {row["key"]: row for row in rows}
    return build_report(
        results,
        out_dir,
        top_percent=top_percent,
        grouping=grouping,
        spectra=spectra,
        shapes={**journal_shapes, **shapes},
        metrics=metrics,
        title=model_title(results_path),
        notes=notes,
        scanned=facts,
        skipped=read.skipped,
        results_arg=results_arg or str(results_path),
        deficient=deficient,
    )
