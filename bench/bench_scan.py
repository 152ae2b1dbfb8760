"""Benchmark 1: a real-layout Llama checkpoint of a few hundred MB, scanned three ways in one run.

- full load: what users do today (transformers loads the whole model in float32, then svdvals
  module by module); the baseline every ratio is against;
- spectrum-stream --method exact, and --method gram (when available).
Each runs in its own child process so its peak RSS is its own. Prints a Markdown table for
bench/RESULTS.md.

    python3 bench/bench_scan.py [--layers 8] [--hidden 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, run_child, table, variant_args


def build(folder: Path, layers: int, hidden: int) -> float:
    """Write the checkpoint with transformers (real names, real sharding); returns its size in MB."""
    if not (folder / "model.safetensors.index.json").exists():
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=32000,
            hidden_size=hidden,
            intermediate_size=hidden * 11 // 4,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=hidden // 256,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained(folder, max_shard_size="100MB")
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--methods",
        default="exact,gram",
        help="comma-separated; a +FLAG or +FLAG=VALUE suffix adds --FLAG [VALUE] "
        "(exact+prefetch, gram+workers=1)",
    )
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()

    folder = args.workdir / f"llama-{args.layers}x{args.hidden}"
    size_mb = build(folder, args.layers, args.hidden)
    rows = []
    base = run_child([str(Path(__file__).parent / "full_load_baseline.py"), str(folder)])
    base_snr = base["out"]["snr"]
    rows.append({"approach": "full load (transformers, float32)", **_fmt(base, base, size_mb)})
    print(f"# done: {json.dumps(rows[-1])}", flush=True)
    for variant in args.methods.split(","):
        method, flags = variant_args(variant)
        with tempfile.TemporaryDirectory() as out:
            try:
                r = run_child(
                    [
                        "-m",
                        "spectrum_stream",
                        "scan",
                        str(folder),
                        "--out-dir",
                        out,
                        "--device",
                        args.device,
                        "--method",
                        method,
                        "--quiet",
                        "--fresh",
                        *flags,
                    ]
                )
            except RuntimeError as exc:
                print(f"# {variant}: not run ({str(exc).splitlines()[-1]})")
                continue
            results = json.loads(next(Path(out).glob("snr_results_*[!d].json")).read_text())
        worst = max(abs(results[k]["snr"] - v) / abs(v) for k, v in base_snr.items())
        scan_s = float(re.search(r"planned, in ([\d.]+) s", r["stdout"]).group(1))
        rows.append(
            {
                "approach": " ".join(
                    ["spectrum-stream --method", method, *flags, f"({args.device})"]
                ),
                **_fmt(r, base, size_mb),
                "scan": scan_s,
                "max_rel_diff": f"{worst:.1e}",
            }
        )
        print(f"# done: {json.dumps(rows[-1])}", flush=True)  # kept if the step is killed
    exact = next(
        (
            r["scan"]
            for r in rows[1:]
            if r["approach"].startswith("spectrum-stream --method exact (")
        ),
        None,
    )
    for r in rows[1:]:
        r["scan_ratio"] = f"{exact / r['scan']:.2f}x" if exact else ""
    print(f"Checkpoint: {folder.name}, {size_mb:.0f} MB bf16, {len(base_snr)} matrices")
    print(f"Machine: {machine()}\n")
    print(
        table(
            rows,
            [
                ("approach", "approach"),
                ("wall", "wall s"),
                ("scan", "scan s"),
                ("scan_ratio", "speed-up vs exact (scan s)"),
                ("rss", "peak RSS MiB"),
                ("tput", "MB/s"),
                ("t_ratio", "time vs full load"),
                ("m_ratio", "RSS vs full load"),
                ("max_rel_diff", "max SNR rel. diff"),
            ],
        )
    )


def _fmt(r: dict, base: dict, size_mb: float) -> dict:
    return {
        "wall": f"{r['wall_s']:.1f}",
        "rss": f"{r['peak_rss_mib']:.0f}",
        "tput": f"{size_mb / r['wall_s']:.1f}",
        "t_ratio": f"{r['wall_s'] / base['wall_s']:.2f}x",
        "m_ratio": f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x",
    }


if __name__ == "__main__":
    main()
