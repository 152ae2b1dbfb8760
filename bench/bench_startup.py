"""Benchmark: start-up cost, in one run: `import torch` alone (the baseline), `spectrum-stream
--help`, `scan --help`, and a scan of a one-matrix checkpoint (dense Llama, and Mixtral-typed
with the rules cache warm), each the median of a few runs in its own child process.

`--compare-src DIR` runs the same steps a second time with DIR (another checkout's src/) first on
PYTHONPATH, e.g. the code before the change. Prints a Markdown table for bench/RESULTS.md.

    python3 bench/bench_startup.py [--runs 5] [--compare-src /path/to/other/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, run_child, table

SRC = Path(__file__).resolve().parents[1] / "src"


def write_checkpoint(folder: Path, model_type: str) -> Path:
    """One 512x512 matrix under a Llama (or Mixtral) name, with its config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    arch = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}[model_type]
    (folder / "config.json").write_text(
        json.dumps({"model_type": model_type, "architectures": [arch]})
    )
    g = torch.Generator().manual_seed(0)
    tensor = torch.randn(512, 512, generator=g)
    save_file({"model.layers.0.self_attn.q_proj.weight": tensor}, str(folder / "model.safetensors"))
    return folder


def measure(args: list[str], env: dict[str, str], runs: int) -> dict:
    walls, peaks = [], []
    for _ in range(runs):
        r = run_child(args, env)
        walls.append(r["wall_s"])
        peaks.append(r["peak_rss_mib"])
    return {"wall": statistics.median(walls), "min": min(walls), "rss": statistics.median(peaks)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compare-src", type=Path, help="another checkout's src/ to measure too")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    torch_only = work / "import_torch.py"
    torch_only.write_text("import torch\n")
    dense = write_checkpoint(work / "llama", "llama")
    moe = write_checkpoint(work / "mixtral", "mixtral")
    cache = work / "cache"

    def scan(ckpt: Path, out: str) -> list[str]:
        return ["-m", "spectrum_stream", "scan", str(ckpt), "--out-dir", str(work / out)]

    steps = [
        ("import torch alone", [str(torch_only)]),
        ("spectrum-stream --help", ["-m", "spectrum_stream", "--help"]),
        ("spectrum-stream scan --help", ["-m", "spectrum_stream", "scan", "--help"]),
        ("scan, one matrix (llama)", [*scan(dense, "o1"), "--fresh", "--quiet"]),
        ("scan, one matrix (mixtral, cache warm)", [*scan(moe, "o2"), "--fresh", "--quiet"]),
    ]
    codes = [("this", SRC)] + ([("compared", a.compare_src.resolve())] if a.compare_src else [])
    rows = []
    for code, src in codes:
        env = {
            "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
            "SPECTRUM_STREAM_CACHE": str(cache),
        }
        run_child(steps[-1][1], env)  # warms the rules cache (this code) and the page cache
        base = None
        for name, args in steps:
            m = measure(args, env, a.runs)
            base = base or m
            rows.append(
                {
                    "step": name,
                    "code": code if a.compare_src else "",
                    "wall": f"{m['wall']:.2f}",
                    "min": f"{m['min']:.2f}",
                    "over": f"{m['wall'] - base['wall']:+.2f}",
                    "ratio": f"{m['wall'] / base['wall']:.2f}x",
                    "rate": f"{1 / m['wall']:.2f}",
                    "rss": f"{m['rss']:.0f}",
                }
            )
    columns = [
        ("step", "step"),
        *([("code", "code")] if a.compare_src else []),
        ("wall", f"median wall s ({a.runs} runs)"),
        ("min", "min wall s"),
        ("over", "s over import torch"),
        ("ratio", "time vs import torch"),
        ("rate", "runs/s"),
        ("rss", "peak RSS MiB"),
    ]
    print(table(rows, columns))
    print(f"\nMachine: {machine()}")


if __name__ == "__main__":
    main()
