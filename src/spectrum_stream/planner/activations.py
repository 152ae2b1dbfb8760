"""Activation memory per GPU with gradient checkpointing: an estimate, from config.json's sizes.

With checkpointing, each layer keeps only its input for the backward pass; the layer being
recomputed holds its full activations (and their gradients) for a moment, and the loss holds the
logits in float32. Formula and terms: docs/planner.md, "Activations". Not divided by the GPU count:
each GPU runs its own micro-batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..layout.config import config_int
from .params import Param

ACT_BYTES = 2  # bf16 activations
LOGIT_BYTES = 12  # per logit: bf16 logits 2 + fp32 copy 4 + fp32 log-softmax 4 + bf16 grad 2
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class ModelDims:
    """The sizes the activation estimate needs; `ffn_active` is the MLP width one token passes
    through (top_k * expert width + shared experts for an MoE layer, the widest layer's)."""

    layers: int
    hidden: int
    kv_dim: int
    ffn_active: int
    vocab: int
    top_k: int = 0  # experts per token (0 for dense), for the dispatch copies


def _first(config: dict, *keys: str) -> int | None:
    for key in keys:
        value = config_int(config, *key.split("/"))
        if value is not None:
            return value
    return None


def model_dims(config: dict, params: list[Param]) -> ModelDims:
    """From config.json, falling back to the parameters (layer count from names, hidden size and
    vocabulary from the embedding) where a key is missing."""
    embed = max(
        (p for p in params if len(p.shape) == 2 and re.search(r"embed|wte", p.name)),
        key=lambda p: p.numel,
        default=None,
    )
    layers = _first(config, "num_hidden_layers", "n_layers", "num_layers") or len(
        {m.group(1) for p in params for m in [_LAYER.search(p.name)] if m}
    )
    hidden = _first(config, "hidden_size", "d_model", "n_embd") or (embed.shape[1] if embed else 0)
    vocab = _first(config, "vocab_size") or (embed.shape[0] if embed else 0)
    heads = _first(config, "num_attention_heads", "n_heads") or 1
    head_dim = _first(config, "head_dim") or hidden // heads
    kv_heads = _first(config, "num_key_value_heads", "attn_config/kv_n_heads") or heads
    dense = (
        _first(config, "intermediate_size", "ffn_config/ffn_hidden_size", "n_inner") or 4 * hidden
    )
    top_k = _first(config, "num_experts_per_tok", "moe_topk", "ffn_config/moe_top_k") or 0
    expert = _first(config, "moe_intermediate_size", "ffn_config/ffn_hidden_size") or dense
    shared = (_first(config, "shared_expert_intermediate_size") or 0) + (
        _first(config, "n_shared_experts") or 0
    ) * expert
    if not top_k:
        ffn = dense
    else:  # MoE; DeepSeek's first layers are dense MLPs of intermediate_size
        ffn = top_k * expert + shared
        if _first(config, "first_k_dense_replace"):
            ffn = max(ffn, dense)
    return ModelDims(layers, hidden, kv_heads * head_dim, ffn, vocab, top_k)


def activation_terms(d: ModelDims, seq_len: int, micro_batch: int) -> dict[str, int]:
    """Bytes per GPU: the layer inputs kept at the checkpoints, one layer's full activations
    (saved tensors, twice for their gradients), and the logits of the loss."""
    tokens = seq_len * micro_batch
    per_token = 6 * d.hidden + 2 * d.kv_dim + 3 * d.ffn_active + 2 * d.top_k * d.hidden
    return {
        "checkpoints": d.layers * tokens * d.hidden * ACT_BYTES,
        "layer": 2 * tokens * per_token * ACT_BYTES,
        "logits": tokens * d.vocab * LOGIT_BYTES,
    }
