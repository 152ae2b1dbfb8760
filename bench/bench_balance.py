"""Benchmark: how evenly `distributed.split` spreads a scan over ranks, on synthetic plans of two
big checkpoints (no files: MatrixSpec/TensorJob lists with the real shapes and shard sizes).

- Qwen1.5-110B: hidden 8192, intermediate 49152, 80 layers, 64 heads / 8 KV heads (kv 1024),
  vocab 152064, untied head, bf16, packed in file order into 49 shards of about 4.5 GB.
- DeepSeek-V3: 61 layers, hidden 7168, MLA attention, dense MLP (18432) in layers 0-2, then 256
  routed experts of 2048x7168 (gate, up) and 7168x2048 (down) plus one shared expert and the
  router per layer, vocab 129280, FP8 (1 byte), packed into 163 shards.

Cost is m*n*k flops per matrix. "whole shards" never gives a shard to two ranks (what a Hub scan
uses); "split allowed" may cut an island to bring the heaviest rank within 2% of the mean.

    python3 bench/bench_balance.py [--ranks 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
from common import machine, table

from spectrum_stream.distributed.split import imbalance, shared_shards, split
from spectrum_stream.layout.naming import module_name, module_type
from spectrum_stream.layout.specs import MatrixSpec, TensorJob, TensorRef
from spectrum_stream.source.header import TensorEntry


def qwen_110b() -> list[tuple[str, tuple[int, int], int]]:
    h, inter, kv, vocab = 8192, 49152, 1024, 152064
    out = [("model.embed_tokens.weight", (vocab, h), 2)]
    for i in range(80):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (h, h), 2),
            (p + "self_attn.k_proj.weight", (kv, h), 2),
            (p + "self_attn.v_proj.weight", (kv, h), 2),
            (p + "self_attn.o_proj.weight", (h, h), 2),
            (p + "mlp.gate_proj.weight", (inter, h), 2),
            (p + "mlp.up_proj.weight", (inter, h), 2),
            (p + "mlp.down_proj.weight", (h, inter), 2),
        ]
    return out + [("lm_head.weight", (vocab, h), 2)]


def deepseek_v3() -> list[tuple[str, tuple[int, int], int]]:
    h, vocab, moe, dense = 7168, 129280, 2048, 18432
    out = [("model.embed_tokens.weight", (vocab, h), 2)]
    for i in range(61):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_a_proj.weight", (1536, h), 1),
            (p + "self_attn.q_b_proj.weight", (128 * 192, 1536), 1),
            (p + "self_attn.kv_a_proj_with_mqa.weight", (576, h), 1),
            (p + "self_attn.kv_b_proj.weight", (128 * 256, 512), 1),
            (p + "self_attn.o_proj.weight", (h, 128 * 128), 1),
        ]
        if i < 3:
            out += [
                (p + f"mlp.{n}.weight", s, 1)
                for n, s in (
                    ("gate_proj", (dense, h)),
                    ("up_proj", (dense, h)),
                    ("down_proj", (h, dense)),
                )
            ]
            continue
        out.append((p + "mlp.gate.weight", (256, h), 2))
        for e in [*range(256), "shared"]:
            q = p + (f"mlp.experts.{e}." if e != "shared" else "mlp.shared_experts.")
            out += [
                (q + "gate_proj.weight", (moe, h), 1),
                (q + "up_proj.weight", (moe, h), 1),
                (q + "down_proj.weight", (h, moe), 1),
            ]
    return out + [("lm_head.weight", (vocab, h), 2)]


def as_jobs(tensors, shards: int) -> list[TensorJob]:
    """Pack tensors in file order into `shards` shards of about equal bytes."""
    total = sum(m * n * b for _, (m, n), b in tensors)
    per = total / shards
    jobs, index, filled, offset = [], 1, 0, 0
    for name, (m, n), b in tensors:
        size = m * n * b
        if filled and filled + size / 2 > per * index and index < shards:
            index, offset = index + 1, 0
        shard = f"model-{index:05d}-of-{shards:05d}.safetensors"
        entry = TensorEntry(name, "BF16" if b == 2 else "F8_E4M3", (m, n), offset, offset + size)
        key = module_name(name)
        jobs.append(
            TensorJob(TensorRef(name, shard, entry), (MatrixSpec(key, module_type(key), (m, n)),))
        )
        offset += size
        filled += size
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="8", help="comma-separated world sizes")
    args = ap.parse_args()
    rows = []
    for label, tensors, shards in (
        ("Qwen1.5-110B", qwen_110b(), 49),
        ("DeepSeek-V3", deepseek_v3(), 163),
    ):
        jobs = as_jobs(tensors, shards)
        n_shards = len({j.main.shard for j in jobs})
        for world in map(int, args.ranks.split(",")):
            for mode, allow in (("whole shards", False), ("split allowed", True)):
                t0 = time.perf_counter()
                shares = split(jobs, world, allow_split=allow)
                ms = 1000 * (time.perf_counter() - t0)
                mean = sum(s.cost for s in shares) / world
                rows.append(
                    {
                        "plan": label,
                        "tensors": len(jobs),
                        "shards": f"{n_shards} ({sum(j.nbytes for j in jobs) / n_shards / 1e9:.1f} GB)",
                        "ranks": world,
                        "mode": mode,
                        "imb": f"{100 * imbalance(shares):.2f}%",
                        "min": f"{100 * (min(s.cost for s in shares) / mean - 1):+.2f}%",
                        "shared": len(shared_shards(shares)),
                        "per": f"{min(len(s.shards) for s in shares)}-{max(len(s.shards) for s in shares)}",
                        "ms": f"{ms:.0f}",
                    }
                )
    print(
        table(
            rows,
            [
                ("plan", "plan"),
                ("tensors", "tensors"),
                ("shards", "shards (mean size)"),
                ("ranks", "ranks"),
                ("mode", "mode"),
                ("imb", "heaviest rank vs mean"),
                ("min", "lightest rank vs mean"),
                ("shared", "shards opened by 2 ranks"),
                ("per", "shards per rank"),
                ("ms", "split ms"),
            ],
        )
    )
    print(f"\nMachine: {machine()}")


if __name__ == "__main__":
    main()
