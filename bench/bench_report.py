"""Benchmark: how long the HTML report takes for a big MoE results set.

A synthetic DeepSeek-style results set (attention per layer plus 256 per-expert gate/up/down
projections per layer; 26 layers is about 20,000 modules), random spectra for a few hundred modules,
alpha for every module. Times build_report and prints a Markdown table row; no assertions.
Then, apart from the rendering, times the metrics table (`spectrum-stream metrics`' code path,
compute_rows) over realistic spectra: k = 2048 for every expert (DeepSeek-V3's 7168 x 2048),
1536 for attention; `--metrics-sample N` fits N of them and scales to the whole set.

    PYTHONPATH=src python3 bench/bench_report.py [--layers 26] [--experts 256] [--out DIR]
        [--metrics-sample N] [--workers N]
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from spectrum_stream.metrics.compute import compute_rows, cpu_count
from spectrum_stream.report import build_report

ATTENTION = (
    "self_attn.q_a_proj",
    "self_attn.q_b_proj",
    "self_attn.kv_a_proj_with_mqa",
    "self_attn.kv_b_proj",
    "self_attn.o_proj",
)
EXPERT_PROJ = ("gate_proj", "up_proj", "down_proj")


def results_set(layers: int, experts: int, seed: int = 0) -> dict[str, dict]:
    """{key: {snr, type}} with SNRs spread over a few decades, like real scans."""
    rng = np.random.default_rng(seed)
    res: dict[str, dict] = {}
    for i in range(layers):
        for t in ATTENTION:
            res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-3, 1)), "type": t}
        for e in range(experts):
            for p in EXPERT_PROJ:
                t = f"mlp.experts.{e}.{p}"
                res[f"model.layers.{i}.{t}"] = {
                    "snr": float(rng.lognormal(-5 + i / layers, 1)),
                    "type": t,
                }
    for name in ("model.embed_tokens", "lm_head"):
        res[name] = {"snr": float(rng.lognormal(-2, 1)), "type": name}
    return res


def top(results: dict[str, dict], percent: float) -> set[str]:
    by_type: dict[str, list[str]] = {}
    for k, v in results.items():
        by_type.setdefault(v["type"], []).append(k)
    out: set[str] = set()
    for keys in by_type.values():
        keys.sort(key=lambda k: -results[k]["snr"])
        out.update(keys[: math.floor(len(keys) * percent / 100)])
    return out


def spectra(results: dict[str, dict], every: int, seed: int = 1):
    """Random spectra (noise plus a few planted spikes) and shapes for every `every`-th module."""
    rng = np.random.default_rng(seed)
    s_out, shapes = {}, {}
    for j, key in enumerate(results):
        if j % every == 0:
            m, n = 2048, 512
            s = np.sort(np.abs(rng.normal(size=n)) * 0.5 + rng.random(n))[::-1]
            s[:4] *= 10
            s_out[key], shapes[key] = s, (m, n)
    return s_out, shapes


def realistic_spectra(keys: list[str], seed: int = 2):
    """Noise bulk (Marchenko-Pastur-like quarter circle) plus a few spikes, k = 2048 for experts."""
    rng = np.random.default_rng(seed)
    s_out, shapes = {}, {}
    for key in keys:
        m, n = (7168, 2048) if ".experts." in key else (7168, 1536)
        bulk = np.sqrt(rng.beta(0.5, 1.5, size=n) * 4.0) + 1e-3
        bulk[: rng.integers(2, 12)] *= rng.uniform(3, 20)
        s_out[key], shapes[key] = np.sort(bulk.astype(np.float32))[::-1], (m, n)
    return s_out, shapes


def time_metrics(results: dict[str, dict], sample: int | None, workers: int | None) -> None:
    """Time compute_rows alone; a sample (every j-th key) is scaled to the whole set."""
    keys = list(results)
    if sample and sample < len(keys):
        keys = keys[:: max(1, len(keys) // sample)][:sample]
    sv, shapes = realistic_spectra(keys)
    subset = {k: results[k] for k in keys}
    t0 = time.perf_counter()
    rows = compute_rows(subset, sv, shapes, progress=False, workers=workers)
    seconds = time.perf_counter() - t0
    assert len(rows) == len(keys)
    used = workers or cpu_count()
    whole = seconds * len(results) / len(keys)
    print()
    print("| metrics | modules fitted | k | processes | seconds | ms per module | whole set s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    print(
        f"| compute_rows | {len(keys):,} | 2048 experts, 1536 attention | {used} | "
        f"{seconds:.1f} | {1000 * seconds / len(keys):.1f} | {whole:.0f} ({len(results):,}) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--every", type=int, default=50, help="spectra for every N-th module")
    ap.add_argument("--out", type=Path, default=None, help="keep the report here")
    ap.add_argument(
        "--metrics-sample",
        type=int,
        default=None,
        help="fit this many modules' spectra and scale (default: all)",
    )
    ap.add_argument("--workers", type=int, default=None, help="processes for the metrics")
    ap.add_argument("--no-metrics", action="store_true", help="time the rendering only")
    args = ap.parse_args()

    results = results_set(args.layers, args.experts)
    selected = top(results, 25)
    sv, shapes = spectra(results, args.every)
    metrics = {k: {"alpha": 2 + 4 * v["snr"] ** 0.1} for k, v in results.items()}
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_report_"))
    t0 = time.perf_counter()
    page = build_report(
        results,
        out,
        selected=selected,
        top_percent=25,
        spectra=sv,
        shapes=shapes,
        metrics=metrics,
        title="bench: synthetic MoE",
    )
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pngs = sorted(out.glob("*.png"))
    size_mib = (sum(p.stat().st_size for p in pngs) + page.stat().st_size) / 1024**2
    print("| modules | layers x experts | spectra | seconds | peak RSS MiB | PNGs | output MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {len(results):,} | {args.layers} x {args.experts} | {len(sv)} | {seconds:.1f} | "
        f"{peak_mib:.0f} | {len(pngs)} | {size_mib:.1f} |"
    )
    print(f"report: {page}")
    if not args.no_metrics:
        time_metrics(results, args.metrics_sample, args.workers)


if __name__ == "__main__":
    main()
