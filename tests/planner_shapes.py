"""Header-only checkpoints shaped like real large models, for the planner's tests and docs.

Each shard gets its real safetensors header and is then extended to its full size with
`os.truncate`: a sparse file, so every header check passes while no weight byte exists on disk.
Shapes: Qwen1.5-110B, Mixtral-8x22B and DeepSeek-V3 (FP8 with 128x128 `_scale_inv`, without the
multi-token-prediction layer), from their published config.json.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}
SHARD_BYTES = 5 * 10**9


def write_sparse_checkpoint(
    folder: Path,
    tensors: list[tuple[str, str, tuple[int, ...]]],
    config: dict,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Shards of at most `shard_bytes` (a tensor is never split), an index, and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        n = math.prod(t[2]) * BYTES[t[1]]
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape in shard:
            n = math.prod(shape) * BYTES[dtype]
            header[name] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        path = folder / fname
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
        os.truncate(path, 8 + len(raw) + offset)
    total = sum(math.prod(s) * BYTES[d] for _, d, s in tensors)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _dense_layer(i: int, h: int, inter: int, heads: int, kv: int, bias: bool) -> list:
    d = h // heads
    p = f"model.layers.{i}."
    out = [(p + "input_layernorm.weight", "BF16", (h,))]
    for proj, rows in (("q", heads * d), ("k", kv * d), ("v", kv * d)):
        out.append((p + f"self_attn.{proj}_proj.weight", "BF16", (rows, h)))
        if bias:
            out.append((p + f"self_attn.{proj}_proj.bias", "BF16", (rows,)))
    out.append((p + "self_attn.o_proj.weight", "BF16", (h, heads * d)))
    out.append((p + "post_attention_layernorm.weight", "BF16", (h,)))
    return out


def qwen1_5_110b(folder: Path) -> Path:
    h, inter, layers, heads, kv, vocab = 8192, 49152, 80, 64, 8, 152064
    t = [("model.embed_tokens.weight", "BF16", (vocab, h))]
    for i in range(layers):
        t += _dense_layer(i, h, inter, heads, kv, bias=True)
        t += [
            (f"model.layers.{i}.mlp.{n}.weight", "BF16", s)
            for n, s in (
                ("gate_proj", (inter, h)),
                ("up_proj", (inter, h)),
                ("down_proj", (h, inter)),
            )
        ]
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (vocab, h))]
    config = {
        "model_type": "qwen2",
        "_name_or_path": "Qwen/Qwen1.5-110B",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    return write_sparse_checkpoint(folder, t, config)


def mixtral_8x22b(folder: Path) -> Path:
    h, inter, layers, heads, kv, vocab, experts = 6144, 16384, 56, 48, 8, 32768, 8
    t = [("model.embed_tokens.weight", "BF16", (vocab, h))]
    for i in range(layers):
        t += _dense_layer(i, h, inter, heads, kv, bias=False)
        p = f"model.layers.{i}.block_sparse_moe."
        t.append((p + "gate.weight", "BF16", (experts, h)))
        for e in range(experts):
            t += [
                (p + f"experts.{e}.{n}.weight", "BF16", s)
                for n, s in (("w1", (inter, h)), ("w2", (h, inter)), ("w3", (inter, h)))
            ]
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (vocab, h))]
    config = {
        "model_type": "mixtral",
        "_name_or_path": "mistralai/Mixtral-8x22B-v0.1",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "num_local_experts": experts,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
    }
    return write_sparse_checkpoint(folder, t, config)


def _fp8(name: str, shape: tuple[int, int]) -> list:
    scale = (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128))
    return [(name, "F8_E4M3", shape), (name + "_scale_inv", "F32", scale)]


def deepseek_v3(folder: Path) -> Path:
    h, layers, heads, vocab = 7168, 61, 128, 129280
    q_lora, kv_lora, nope, rope, v_dim = 1536, 512, 128, 64, 128
    dense_inter, moe_inter, experts, dense_layers = 18432, 2048, 256, 3
    t = [("model.embed_tokens.weight", "BF16", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        t += [
            (p + "input_layernorm.weight", "BF16", (h,)),
            (p + "post_attention_layernorm.weight", "BF16", (h,)),
            (p + "self_attn.q_a_layernorm.weight", "BF16", (q_lora,)),
            (p + "self_attn.kv_a_layernorm.weight", "BF16", (kv_lora,)),
        ]
        t += _fp8(p + "self_attn.q_a_proj.weight", (q_lora, h))
        t += _fp8(p + "self_attn.q_b_proj.weight", (heads * (nope + rope), q_lora))
        t += _fp8(p + "self_attn.kv_a_proj_with_mqa.weight", (kv_lora + rope, h))
        t += _fp8(p + "self_attn.kv_b_proj.weight", (heads * (nope + v_dim), kv_lora))
        t += _fp8(p + "self_attn.o_proj.weight", (h, heads * v_dim))
        mlps = (
            [("mlp.", dense_inter)]
            if i < dense_layers
            else [(f"mlp.experts.{e}.", moe_inter) for e in range(experts)]
            + [("mlp.shared_experts.", moe_inter)]
        )
        if i >= dense_layers:
            t += [
                (p + "mlp.gate.weight", "BF16", (experts, h)),
                (p + "mlp.gate.e_score_correction_bias", "F32", (experts,)),
            ]
        for prefix, inter in mlps:
            t += _fp8(p + prefix + "gate_proj.weight", (inter, h))
            t += _fp8(p + prefix + "up_proj.weight", (inter, h))
            t += _fp8(p + prefix + "down_proj.weight", (h, inter))
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (vocab, h))]
    config = {
        "model_type": "deepseek_v3",
        "_name_or_path": "deepseek-ai/DeepSeek-V3",
        "hidden_size": h,
        "intermediate_size": dense_inter,
        "moe_intermediate_size": moe_inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "q_lora_rank": q_lora,
        "kv_lora_rank": kv_lora,
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": v_dim,
        "n_routed_experts": experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "first_k_dense_replace": dense_layers,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    return write_sparse_checkpoint(folder, t, config)


SHAPES = {"qwen1.5-110b": qwen1_5_110b, "mixtral-8x22b": mixtral_8x22b, "deepseek-v3": deepseek_v3}
