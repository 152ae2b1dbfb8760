"""The metrics table of a whole results set, over the CPU cores, with a progress bar.

Why a pool: the power-law fit is pure numpy on one core (0.02-0.1 s for k = 2048-8192), and a big
MoE has tens of thousands of expert matrices, so on a many-core machine the table takes minutes
in one process and a fraction of that spread over processes. Small sets stay in-process, where a
pool's start-up would cost more than it saves (bench/RESULTS.md, "Metrics table").
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from .spectral import METRIC_NAMES, spectral_metrics

POOL_MIN_VALUES = 200_000  # fewer singular values in all than this: one process is quicker
CHUNK_VALUES = 50_000  # singular values per task sent to a worker (a few dozen expert matrices)


def cpu_count() -> int:
    """The cores this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _metrics_of(items: list[tuple[np.ndarray, int, int]]) -> list[dict]:
    """One task: the metrics of a few matrices, in order (a top-level function, so it pickles)."""
    return [spectral_metrics(s, m, n) for s, m, n in items]


def _chunks(keys: list[str], spectra: dict, limit: int) -> list[list[str]]:
    """Consecutive runs of keys holding about `limit` singular values each (at least one key)."""
    out, current, size = [], [], 0
    for key in keys:
        current.append(key)
        size += int(np.size(spectra[key]))
        if size >= limit:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def compute_rows(
    results: dict[str, dict],
    spectra: dict,
    shapes: dict,
    *,
    progress: bool = True,
    workers: int | None = None,
) -> list[dict]:
    """Rows as metrics_rows gives them (key, type, snr, then the metrics; None where no spectrum),
    computed in a process pool when the work is big enough and more than one core is free."""
    keys = [key for key in results if key in spectra]
    workers = cpu_count() if workers is None else max(1, workers)
    total = sum(int(np.size(spectra[k])) for k in keys)
    computed: dict[str, dict] = {}
    with tqdm(
        total=len(keys),
        unit="module",
        desc="metrics",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        if workers <= 1 or total < POOL_MIN_VALUES or len(keys) < 2:
            for key in keys:
                computed[key] = spectral_metrics(spectra[key], *shapes[key])
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunks = _chunks(keys, spectra, CHUNK_VALUES)
                futures = [
                    (chunk, pool.submit(_metrics_of, [(spectra[k], *shapes[k]) for k in chunk]))
                    for chunk in chunks
                ]
                for chunk, future in futures:
                    computed.update(zip(chunk, future.result()))
                    bar.update(len(chunk))
    rows = []
    for key, info in results.items():
        row = {"key": key, "type": info.get("type"), "snr": info.get("snr")}
        row.update(computed.get(key) or dict.fromkeys(METRIC_NAMES))
        rows.append(row)
    return rows
