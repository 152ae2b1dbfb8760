"""Benchmark: `spectrum-stream report` from the interpreter's start, small and large.

Two synthetic scans written as a scan writes them (results JSON, spectra safetensors beside it):
- dense: SmolLM2-135M's layout, 30 layers x 7 projections + embeddings = 211 modules, every
  module's spectrum kept at its real k (192 for k/v, 576 for the rest and the embeddings);
- moe: a DeepSeek-style 20,000-module results set (27 layers x 256 experts x 3 projections plus
  attention, the last layer with half its experts, as a scan stopped part way), every module's
  spectrum kept at k = 2048 (DeepSeek-V3's 7168 x 2048) as a scan keeps them (`--every N`: every
  N-th only).
Each `report` runs as its own process (`python -m spectrum_stream report ...`), so the time
includes the interpreter, the imports, reading the files, the fit (unless `--metrics` hands it a
table) and writing the page. Baseline, in the same run: the same process start with `--help`
(interpreter and CLI imports only); the ratio says how much the report adds. No assertions.

    PYTHONPATH=src python3 bench/bench_report.py [--repeat 3] [--only dense|moe] [--every N]
        [--baseline-src OTHER/src]   # also time another checkout's report on the same files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))
from spectrum_stream.results.spectra import spectra_path, write_spectra  # noqa: E402

DENSE = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
ATTENTION = ("self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa")


def _spectrum(rng, m: int, n: int) -> np.ndarray:
    """A noise bulk plus a few planted spikes, largest first."""
    k = min(m, n)
    bulk = np.sqrt(rng.beta(0.5, 1.5, size=k) * 4.0) + 1e-3
    bulk[: rng.integers(2, 12)] *= rng.uniform(3, 20)
    return np.sort(bulk.astype(np.float32))[::-1]


def dense_scan(folder: Path, seed: int = 0) -> Path:
    """211 modules in SmolLM2-135M's shapes, every spectrum kept."""
    rng = np.random.default_rng(seed)
    shape_of = {
        "self_attn.q_proj": (576, 576),
        "self_attn.k_proj": (192, 576),
        "self_attn.v_proj": (192, 576),
        "self_attn.o_proj": (576, 576),
        "mlp.gate_proj": (1536, 576),
        "mlp.up_proj": (1536, 576),
        "mlp.down_proj": (576, 1536),
    }
    results, spectra, shapes = {}, {}, {}
    for i in range(30):
        for t in DENSE:
            key = f"model.layers.{i}.{t}"
            results[key] = {"snr": float(rng.lognormal(-1, 0.5)), "type": t}
            shapes[key] = shape_of[t]
            spectra[key] = _spectrum(rng, *shape_of[t])
    results["model.embed_tokens"] = {"snr": 8.3, "type": "model.embed_tokens"}
    shapes["model.embed_tokens"] = (49152, 576)
    spectra["model.embed_tokens"] = _spectrum(rng, 49152, 576)
    return _write(folder, "snr_results_bench-dense", results, spectra, shapes)


def moe_scan(
    folder: Path, layers: int = 27, experts: int = 256, every: int = 1, seed: int = 1
) -> Path:
    """About 20,000 modules (the last layer holds half the experts), spectra for every `every`-th
    (1: all, as a scan keeps them)."""
    rng = np.random.default_rng(seed)
    results: dict[str, dict] = {}
    for i in range(layers):
        for t in ATTENTION:
            results[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-3, 1)), "type": t}
        for e in range(experts if i < layers - 1 else experts // 2):  # last layer incomplete
            for p in ("gate_proj", "up_proj", "down_proj"):
                t = f"mlp.experts.{e}.{p}"
                results[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-5, 1)), "type": t}
    for name in ("model.embed_tokens", "lm_head"):
        results[name] = {"snr": float(rng.lognormal(-2, 1)), "type": name}
    spectra, shapes = {}, {}
    for j, key in enumerate(results):
        if j % every == 0:
            shapes[key] = (7168, 2048)
            spectra[key] = _spectrum(rng, 7168, 2048)
    return _write(folder, "snr_results_bench-moe", results, spectra, shapes)


def _write(folder: Path, base: str, results, spectra, shapes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{base}.json"
    path.write_text(json.dumps(results))
    write_spectra(spectra_path(path), spectra, shapes)
    return path


def run(args: list[str], src: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB of that child) of one `python -m spectrum_stream ...`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "spectrum_stream", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode() if child.stderr else ""
    if child.returncode:
        raise SystemExit(f"{args}: exit {child.returncode}\n{err}")
    return seconds, usage.ru_maxrss / 1024


def best(args: list[str], src: Path, repeat: int) -> tuple[float, float]:
    times = [run(args, src) for _ in range(repeat)]
    return min(t for t, _ in times), max(m for _, m in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest is shown")
    ap.add_argument("--only", choices=["dense", "moe"])
    ap.add_argument("--every", type=int, default=1, help="moe: spectra for every N-th module")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to time too")
    ap.add_argument("--write", nargs=3, metavar=("CASE", "DIR", "EVERY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:  # the child that writes one case's files
        case, folder, every = args.write
        if case == "dense":
            dense_scan(Path(folder))
        else:
            moe_scan(Path(folder), every=int(every))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_report_"))
    start, _ = best(["--help"], SRC, args.repeat)
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(
        "| case | modules | spectra | seconds (best of "
        f"{args.repeat}) | peak RSS MiB | vs `--help` start ({start:.2f} s) | page MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    cases = []
    for name in ("dense", "moe"):
        if args.only in (None, name):
            # written by a child process: a child forked from a parent holding the spectra would
            # inherit its peak RSS, and every row's memory figure would be the parent's
            subprocess.run(
                [sys.executable, __file__, "--write", name, str(work / name), str(args.every)],
                check=True,
            )
            cases.append((name, next((work / name).glob("snr_results_*.json"))))
    for name, path in cases:
        results = json.loads(path.read_text())
        n_spectra = len(results) if name == "dense" else len(list(results)[:: args.every])
        table = work / f"{name}_metrics.json"
        run(["metrics", str(path), "-o", str(table), "--quiet"], SRC)
        rows = [
            (f"{name}: report", ["report", str(path), "-o", str(work / f"{name}_r"), "--quiet"]),
            (
                f"{name}: report --metrics",
                [
                    "report",
                    str(path),
                    "-o",
                    str(work / f"{name}_m"),
                    "--quiet",
                    "--metrics",
                    str(table),
                ],
            ),
        ]
        for label, cmd in rows:
            seconds, peak = best(cmd, SRC, args.repeat)
            out = Path(cmd[3]) / "index.html"
            print(
                f"| {label} | {len(results):,} | {n_spectra:,} | {seconds:.2f} | {peak:.0f} | "
                f"{seconds / start:.1f}x | {out.stat().st_size / 1024**2:.1f} |"
            )
        if args.baseline_src:
            cmd = ["report", str(path), "-o", str(work / f"{name}_base"), "--quiet"]
            seconds, peak = best(cmd, args.baseline_src, 1)
            print(
                f"| {name}: report, {args.baseline_src} | {len(results):,} | {n_spectra:,} | "
                f"{seconds:.2f} | {peak:.0f} | {seconds / start:.1f}x | - |"
            )
    print(f"pages under {work}")


if __name__ == "__main__":
    main()
