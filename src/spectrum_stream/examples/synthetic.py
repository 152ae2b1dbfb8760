"""Checkpoints with planted signal: weight matrices whose SNR ranking is known in advance.

W = U diag(s) Vᵀ + noise, with U, V random orthonormal. Past the noise edge, the SNR (docs/spec.md)
grows with the number of planted directions (the rank), so a module planted with a higher
rank must rank higher within its type. Used by `spectrum-stream demo`, the tests and the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

NOISE_STD = 0.02


def planted_matrix(
    rows: int, cols: int, rank: int, generator: torch.Generator, noise_std: float = NOISE_STD
) -> torch.Tensor:
    """A [rows, cols] matrix: `rank` strong directions well above a Gaussian noise bulk."""
    noise = torch.randn(rows, cols, generator=generator) * noise_std
    if rank == 0:
        return noise
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=generator))
    edge = noise_std * (rows**0.5 + cols**0.5)  # where the noise bulk ends
    strengths = torch.linspace(8.0, 4.0, rank) * edge
    return u @ torch.diag(strengths) @ v.T + noise


def llama_shapes(
    hidden: int, intermediate: int, heads: int, kv_heads: int
) -> dict[str, tuple[int, int]]:
    """Per-layer module type -> [out, in] in the Llama layout."""
    kv = hidden // heads * kv_heads
    return {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }


def write_planted_llama(
    folder: str | Path,
    layers: int = 4,
    hidden: int = 256,
    intermediate: int = 512,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 512,
    ranks: tuple[int, ...] = (2, 5, 10, 20),
    shards: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> dict[str, int]:
    """Write a sharded Llama-layout checkpoint; return {module name: planted rank}.

    Within each type, layer i gets rank ranks[(i + type_offset) % len(ranks)], so every type has a
    different known best layer.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    planted: dict[str, int] = {}
    for layer in range(layers):
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        for t_index, (mtype, (rows, cols)) in enumerate(
            llama_shapes(hidden, intermediate, heads, kv_heads).items()
        ):
            rank = ranks[(layer + t_index) % len(ranks)]
            name = f"model.layers.{layer}.{mtype}"
            tensors[f"{name}.weight"] = planted_matrix(rows, cols, rank, gen).to(dtype)
            planted[name] = rank
        tensors[f"model.layers.{layer}.post_attention_layernorm.weight"] = torch.ones(
            hidden, dtype=dtype
        )
    tensors["model.embed_tokens.weight"] = planted_matrix(vocab, hidden, ranks[-1], gen).to(dtype)
    tensors["model.norm.weight"] = torch.ones(hidden, dtype=dtype)
    tensors["lm_head.weight"] = planted_matrix(vocab, hidden, ranks[0], gen).to(dtype)
    planted["model.embed_tokens"], planted["lm_head"] = ranks[-1], ranks[0]

    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per_shard : (i + 1) * per_shard]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(
            {n: tensors[n].contiguous() for n in part},
            str(folder / fname),
            metadata={"format": "pt"},
        )
        for n in part:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return planted
