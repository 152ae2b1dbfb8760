"""The planner (spectrum_stream.planner) against what torch and transformers actually do.

- parameter views: names and shapes equal `named_parameters()` of the model transformers 5 loads;
- trainable counts: equal an independent application of axolotl's freezing rules to the loaded
  model (dense, per-expert MoE loaded fused, DBRX row ranges);
- optimizer bytes: equal the state torch's AdamW holds after one real step, row-masked fused
  experts included (a hook zeroes the untrained rows, the state stays full-size);
- the memory arithmetic on a hand-computed case, and the text's first lines;
- header-only checkpoints shaped like Qwen1.5-110B, Mixtral-8x22B, DeepSeek-V3: they plan, their
  parameter counts match the published ones, and they take almost no disk.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import planner_shapes
import pytest
import torch

from spectrum_stream.layout.jobs import plan_jobs as scan_plan
from spectrum_stream.planner import build_plan, format_plan_text, stored_view, trainer_view
from spectrum_stream.planner.memory import (
    GPU_COUNTS,
    NF4_BYTES,
    OVERHEAD_FIXED,
    OVERHEAD_FRACTION,
    fits,
    footprint,
    per_gpu,
)
from spectrum_stream.planner.params import VIEW_NAMES, Param
from spectrum_stream.planner.trainable import Trained, lora_params, totals, trained
from spectrum_stream.results.files import compat_results
from spectrum_stream.results.select import unfrozen_parameters
from spectrum_stream.source.checkpoint import open_local

PERCENT = 50


# --- tiny models, float32 (AdamW's moments then are fp32, as in mixed precision) ------------------


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(
        MixtralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
        )
    )


def _qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            tie_word_embeddings=False,
        )
    )


def _qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return Qwen3MoeForCausalLM(
        Qwen3MoeConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            moe_intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
        )
    )


def _deepseek_v3():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    return DeepseekV3ForCausalLM(
        DeepseekV3Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            moe_intermediate_size=24,
            num_hidden_layers=2,
            first_k_dense_replace=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            q_lora_rank=16,
            kv_lora_rank=8,
            qk_nope_head_dim=8,
            qk_rope_head_dim=4,
            v_head_dim=8,
            tie_word_embeddings=False,
        )
    )


def _dbrx():
    from transformers import DbrxConfig, DbrxForCausalLM

    return DbrxForCausalLM(
        DbrxConfig(
            vocab_size=64,
            d_model=32,
            n_heads=4,
            n_layers=2,
            max_seq_len=64,
            attn_config={"kv_n_heads": 2, "rope_theta": 10000},
            ffn_config={"moe_num_experts": 4, "moe_top_k": 2, "ffn_hidden_size": 24},
        )
    )


MODELS = {
    "llama": _llama,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v3": _deepseek_v3,
    "dbrx": _dbrx,
}
# DBRX and Llama load as stored; the per-expert MoE checkpoints load fused (transformers 5). The
# trainer view is the stored one for Llama and DBRX too: both views are checked there.
VIEWS = {
    "llama": stored_view,
    "dbrx": stored_view,
    "mixtral": trainer_view,
    "qwen2_moe": trainer_view,
    "qwen3_moe": trainer_view,
    "deepseek_v3": trainer_view,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: folder} of every tiny model, saved in several shards."""
    out = {}
    for i, (name, make) in enumerate(MODELS.items()):
        torch.manual_seed(100 + i)
        folder = tmp_path_factory.mktemp(name) / name
        make().save_pretrained(folder, max_shard_size="40KB")
        out[name] = folder
    return out


def _load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _patterns(ckpt, view, seed: int = 7) -> list[str]:
    """A Spectrum selection from seeded random SNRs over the matrices the scan would report,
    keyed as a scan writes them under the view's --names."""
    rng = random.Random(seed)
    records = [
        {
            "key": s.key,
            "trainer_key": s.trainer_key,
            "type": s.type,
            "status": "ok",
            "snr": rng.random(),
        }
        for job in scan_plan(ckpt)
        for s in job.matrices
    ]
    return unfrozen_parameters(compat_results(records, VIEW_NAMES[view]), PERCENT)


# --- an independent reading of axolotl's freezing rules, applied to a loaded model ---------------


def _axolotl_rows(patterns: list[str], name: str, rows: int) -> set[int] | None:
    """Rows of dim 0 that keep a gradient, or None when the parameter stays frozen."""
    matched, ranges = False, []
    for raw in patterns:
        m = re.fullmatch(r"(.+)\[(\d*)(?::(\d*))?\]", raw)
        body = m.group(1) if m else raw
        if re.match(re.sub(r"\.(?!\+)", r"\\.", body), name) is None:
            continue
        matched = True
        if m:
            a, b = m.group(2), m.group(3)
            ranges.append(
                (int(a), int(a) + 1) if b is None and a else (int(a or 0), int(b) if b else rows)
            )
    if not matched:
        return None
    return {r for a, b in ranges for r in range(a, b)} if ranges else set(range(rows))


def _freeze(model, patterns: list[str]) -> tuple[int, int, list]:
    """Apply the rules as axolotl does (requires_grad, a hook zeroing untrained rows); return
    (trainable elements, elements of gradient-receiving tensors, the row-masked parameters)."""
    trainable = grad = 0
    masked = []
    for name, p in model.named_parameters():
        keep = _axolotl_rows(patterns, name, p.shape[0])
        p.requires_grad_(keep is not None)
        if keep is None:
            continue
        grad += p.numel()
        trainable += p.numel() // p.shape[0] * len(keep)
        if len(keep) < p.shape[0]:
            frozen = torch.tensor(sorted(set(range(p.shape[0])) - keep))
            p.register_hook(lambda g, rows=frozen: g.index_fill(0, rows, 0.0))
            masked.append((name, p, frozen))
    return trainable, grad, masked


# --- (0) views ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_view_matches_loaded_parameters(saved, name):
    ckpt, _ = open_local(saved[name])
    view = {p.name: p.shape for p in VIEWS[name](ckpt)}
    loaded = {n: tuple(p.shape) for n, p in _load(saved[name]).named_parameters()}
    assert view == loaded
    assert {p.name: p.shape for p in trainer_view(ckpt)} == loaded  # the default view


# --- (2) trainable counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "mixtral", "qwen2_moe", "dbrx"])
def test_trainable_counts_match_axolotl_rules(saved, name):
    ckpt, _ = open_local(saved[name])
    view = VIEWS[name]
    patterns = _patterns(ckpt, view)
    chosen, unmatched = trained(view(ckpt), patterns)
    assert unmatched == []
    want_trainable, want_grad, masked = _freeze(_load(saved[name]), patterns)
    assert totals(chosen) == (want_trainable, want_grad)
    if name in ("mixtral", "dbrx"):  # the selection trains only some experts of a fused tensor
        assert masked and want_trainable < want_grad


def test_a_range_wins_over_an_unranged_match():
    """axolotl: once any matching pattern has a range, only the ranges keep their gradient."""
    p = Param("model.layers.0.mlp.experts.down_proj", (4, 8, 6), 2, True, 4)
    pats = [
        "model.layers.0.mlp.experts.down_proj",
        "model.layers.0.mlp.experts.down_proj$[1]",
        "model.layers.0.mlp.experts.down_proj$[1:3]",
    ]
    (t,), _ = trained([p], pats)
    assert (t.rows, t.trainable, t.grad) == (2, 2 * 48, 192)
    assert _axolotl_rows(pats, p.name, 4) == {1, 2}
    (t,), _ = trained([p], pats[:1])
    assert t.rows == 4
    assert (
        trained([Param("model.layers.10.x.weight", (2, 2), 2, True)], ["model.layers.1.x"])[0] == []
    )


# --- (1) optimizer bytes after a real AdamW step ----------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_optimizer_bytes_equal_adamw_state(saved, name):
    ckpt, _ = open_local(saved[name])
    view = VIEWS[name]
    patterns = _patterns(ckpt, view)
    params = view(ckpt)
    chosen, _ = trained(params, patterns)
    model = _load(saved[name])
    _, _, masked = _freeze(model, patterns)
    live = [p for p in model.parameters() if p.requires_grad]
    # no weight decay: decoupled decay would shrink the zero-gradient rows too (docs/planner.md)
    opt = torch.optim.AdamW(live, lr=1e-3, weight_decay=0.0)
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    before = {n: p.detach().clone() for n, p, _ in masked}
    opt.step()
    state = sum(opt.state[p][k].numel() * 4 for p in live for k in ("exp_avg", "exp_avg_sq"))
    fp = footprint(params, "spectrum", chosen, "adamw")
    assert fp.optimizer == state
    assert fp.grads == 2 * sum(p.grad.numel() for p in live)  # bf16 grads, whole tensors
    assert fp.master == 4 * sum(p.numel() for p in live)
    if name == "mixtral":
        assert masked, "the selection should row-mask a fused expert tensor"
        for n, p, frozen in masked:
            assert opt.state[p]["exp_avg"].shape == p.shape  # full-size state for a masked tensor
            assert torch.equal(p.detach()[frozen], before[n][frozen])  # frozen rows unchanged


# --- (3) the arithmetic on a hand-computed case ------------------------------------------------------


def test_memory_arithmetic_by_hand():
    a = Param("model.layers.0.mlp.down_proj.weight", (4, 8), 2, True)  # 32 elements
    b = Param("model.layers.1.mlp.experts.gate_up_proj", (2, 6, 8), 2, True, 2)  # 96
    e = Param("model.embed_tokens.weight", (10, 8), 2, True)  # 80
    params = [a, b, e]
    sel = [Trained(a, 4), Trained(b, 1)]  # b: one expert of two trained
    fp = footprint(params, "spectrum", sel, "adamw", activations=1000)
    assert fp.trainable == 32 + 48
    assert (fp.weights, fp.grads, fp.optimizer, fp.master) == (2 * 208, 2 * 128, 8 * 128, 4 * 128)
    assert (fp.unit_weights, fp.unit_grads) == (2 * 96, 2 * 96)  # layer 1 is the largest unit
    assert per_gpu(fp, 1) == {
        "weights": 416,
        "grads": 256,
        "optimizer": 1024,
        "master": 512,
        "activations": 1000,
        "total": 3208,
    }
    # 2 GPUs: weights 416/2 + 2 gathered units (2 * 192); grads 256/2 + one unit's (192)
    two = per_gpu(fp, 2)
    assert two == {
        "weights": 208 + 384,
        "grads": 128 + 192,
        "optimizer": 512,
        "master": 256,
        "activations": 1000,
        "total": 592 + 320 + 512 + 256 + 1000,
    }
    need = math.ceil(two["total"] * (1 + OVERHEAD_FRACTION)) + OVERHEAD_FIXED
    f = fits(fp, need)
    assert f["2"] == {"fits": True, "need": need, "margin": 0}
    assert f["1"]["fits"] is False and list(f) == [str(n) for n in GPU_COUNTS]

    assert footprint(params, "spectrum", sel, "adamw-8bit").optimizer == 2 * 128
    # LoRA r=2: a [4, 8] -> 2*(4+8) = 24; b 2 experts of [6, 8] -> 2*2*(6+8) = 56; e not a target
    assert lora_params(b, 2) == 56
    lo = footprint(params, "lora", lora_rank=2)
    assert (lo.trainable, lo.grads, lo.optimizer) == (80, 160, 640)
    assert lo.weights == 2 * 208 + 2 * 80
    q = footprint(params, "qlora", lora_rank=2)
    assert q.weights == math.ceil(128 * NF4_BYTES + 2 * 80 + 2 * 80)


# --- (4) the text answers the question first ---------------------------------------------------------


def test_text_first_lines_say_how_many_gpus(saved):
    ckpt, _ = open_local(saved["llama"])
    text = format_plan_text(build_plan(ckpt, gpu_mem=80e9))
    first = text.splitlines()[:4]
    assert [ln.split(":")[0] for ln in first] == [
        "Full fine-tuning",
        "Spectrum-25%",
        "LoRA r16",
        "QLoRA r16",
    ]
    for ln in first:
        assert re.search(r": 1 x 80 GB \(fits with \d+ GB to spare each\)$", ln), ln


# --- header-only checkpoints of real sizes -----------------------------------------------------------


@pytest.mark.parametrize(
    "shape, published", [("qwen1.5-110b", 111e9), ("mixtral-8x22b", 141e9), ("deepseek-v3", 671e9)]
)
def test_large_shapes_plan_from_headers(tmp_path, shape, published):
    folder = planner_shapes.SHAPES[shape](tmp_path / shape)
    files = list(folder.iterdir())
    on_disk = sum(f.stat().st_blocks * 512 for f in files)
    apparent = sum(f.stat().st_size for f in files)
    assert apparent > 100e9 and on_disk < 50e6  # sparse: headers only
    ckpt, _ = open_local(folder)
    p = build_plan(ckpt, gpu_mem=80e9)
    assert abs(p["params_total"] / published - 1) < 0.03
    assert set(p["methods"]) == {"full", "spectrum", "lora", "qlora"}
    for m in p["methods"].values():
        assert set(m["bytes_per_gpu"]) >= {"weights", "grads", "optimizer", "activations", "total"}
        assert set(m["fits"]) == {"1", "2", "4", "8"}
    assert re.match(r"Full fine-tuning: ", format_plan_text(p))
