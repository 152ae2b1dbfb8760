"""Benchmark 2: one or two layers with Qwen1.5-110B's shapes, per method and device, extrapolated.

Qwen1.5-110B: hidden 8192, intermediate 49152, 8 KV heads of 128 (kv 1024), 80 layers, vocab
152064 (untied embedding and head). The synthetic checkpoint holds `--layers` layers of bf16 noise
with a planted low-rank part. Each method/device runs in a child process; seconds per matrix
come from the journal. Extrapolated to 80 layers, plus the embedding and head (measured with
`--with-embeddings`, else estimated from gate_proj by the m·n² cost of both routes). The I/O floor
is a plain sequential read of the same shard files with their pages dropped from the cache first.

    python3 bench/bench_110b.py --methods gram,exact --devices cpu [--layers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, run_child, table, variant_args

HIDDEN, INTER, KV, LAYERS_110B, VOCAB = 8192, 49152, 1024, 80, 152064
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}


def noisy_low_rank(rows: int, cols: int, gen: torch.Generator, rank: int = 16) -> torch.Tensor:
    """bf16 noise plus a cheap rank-`rank` part (no QR of a huge matrix needed)."""
    w = torch.randn(rows, cols, generator=gen).mul_(0.02)
    a = torch.randn(rows, rank, generator=gen) / rows**0.5
    b = torch.randn(rank, cols, generator=gen) / cols**0.5
    w.addmm_(a, b, alpha=4.0)
    return w.to(torch.bfloat16)


def build(folder: Path, layers: int, with_embeddings: bool) -> None:
    """One shard per layer (about 2.7 GB each), like the real model's ~4 GB shards."""
    if (folder / "model.safetensors.index.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for layer in range(layers):
        shard = f"model-{layer + 1:05d}-of-{layers + 1:05d}.safetensors"
        tensors = {
            f"model.layers.{layer}.{t}.weight": noisy_low_rank(*s, gen) for t, s in SHAPES.items()
        }
        save_file(tensors, str(folder / shard))
        weight_map.update(dict.fromkeys(tensors, shard))
        del tensors
    if with_embeddings:
        shard = f"model-{layers + 1:05d}-of-{layers + 1:05d}.safetensors"
        tensors = {
            n: noisy_low_rank(VOCAB, HIDDEN, gen)
            for n in ("model.embed_tokens.weight", "lm_head.weight")
        }
        save_file(tensors, str(folder / shard))
        weight_map.update(dict.fromkeys(tensors, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def io_floor(folder: Path) -> tuple[float, int]:
    """Seconds to read every shard once, sequentially, from disk (pages dropped first)."""
    files = sorted(folder.glob("*.safetensors"))
    total = 0
    t0 = time.perf_counter()
    buf = bytearray(64 * 1024**2)
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while (n := os.readv(fd, [buf])) > 0:
                total += n
        finally:
            os.close(fd)
    return time.perf_counter() - t0, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument(
        "--methods",
        default="gram,exact",
        help="comma-separated; +FLAG[=VALUE] adds a scan flag (gram+workers=1)",
    )
    ap.add_argument("--devices", default="cuda,cpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--with-embeddings", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()

    folder = (
        args.workdir / f"qwen110b-shapes-{args.layers}l{'-emb' if args.with_embeddings else ''}"
    )
    build(folder, args.layers, args.with_embeddings)
    floor_s, nbytes = io_floor(folder)
    layer_bytes = sum(2 * r * c for r, c in SHAPES.values())
    floor_per_layer = floor_s * layer_bytes / nbytes
    rows = [
        {
            "run": "sequential read (I/O floor)",
            "layer": f"{floor_per_layer:.1f}",
            "total80": f"{floor_per_layer * LAYERS_110B / 60:.1f}",
            "tput": f"{nbytes / floor_s / 1e6:.0f}",
            "rss": "",
        }
    ]
    for device in args.devices.split(","):
        for variant in args.methods.split(","):
            method, flags = variant_args(variant)
            with tempfile.TemporaryDirectory() as out:
                r = run_child(
                    [
                        "-m",
                        "spectrum_stream",
                        "scan",
                        str(folder),
                        "--out-dir",
                        out,
                        "--device",
                        device,
                        "--method",
                        method,
                        "--quiet",
                        "--fresh",
                        *flags,
                    ]
                )
                journal = next(Path(out).glob("*.journal.jsonl")).read_text().splitlines()[1:]
            per_type: dict[str, list[float]] = {}
            for line in journal:
                rec = json.loads(line)
                per_type.setdefault(rec["type"], []).append(rec["seconds"])
            # with --workers the matrices' own seconds overlap: scale them to the scan's wall time
            scale = min(1.0, r["wall_s"] / sum(sum(v) for v in per_type.values()))
            layer_s = scale * sum(sum(v) / len(v) for t, v in per_type.items() if t in SHAPES)
            gate = scale * sum(per_type["mlp.gate_proj"]) / len(per_type["mlp.gate_proj"])
            emb = [
                scale * sum(per_type[t]) for t in ("model.embed_tokens", "lm_head") if t in per_type
            ]
            emb_s = sum(emb) if len(emb) == 2 else 2 * gate * VOCAB / INTER
            total = LAYERS_110B * layer_s + emb_s
            rows.append(
                {
                    "run": " ".join([method, *flags, "on", device]),
                    "layer": f"{layer_s:.1f}",
                    "total80": f"{total / 60:.1f}" + ("" if len(emb) == 2 else " (emb. est.)"),
                    "tput": f"{layer_bytes / layer_s / 1e6:.0f}",
                    "rss": f"{r['peak_rss_mib']:.0f}",
                    "detail": ", ".join(
                        f"{t.split('.')[-1]} {sum(v) / len(v):.1f}s" for t, v in per_type.items()
                    ),
                }
            )
            print(f"# done: {json.dumps(rows[-1])}", flush=True)  # kept if a later run times out
    base = next((float(r["layer"]) for r in rows[1:] if r["run"].startswith("exact")), None)
    for r in rows:
        r["ratio"] = f"{float(r['layer']) / base:.2f}x" if base else ""
    print(
        f"Checkpoint: {folder.name}: {args.layers} layer(s) of Qwen1.5-110B shapes, "
        f"{nbytes / 1e9:.1f} GB bf16"
    )
    print(f"Machine: {machine()}\n")
    print(
        table(
            rows,
            [
                ("run", "run"),
                ("layer", "s per layer"),
                ("ratio", "vs exact"),
                ("total80", "80 layers + emb/head, min"),
                ("tput", "MB/s"),
                ("rss", "peak RSS MiB"),
                ("detail", "s per matrix"),
            ],
        )
    )


if __name__ == "__main__":
    main()
