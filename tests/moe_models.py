"""Tiny MoE checkpoints for the MoE tests, and an independent reading of what their experts are.

Checkpoints written by `transformers` `save_pretrained` (Mixtral, Qwen2-MoE, DBRX, Llama 4, gpt-oss;
several shards each), plus the transformers-fused form (a model's in-memory state dict written with
safetensors, several shards). Import the fixtures you need into a test module.

`expected_matrices` reads the checkpoint with safetensors itself and cuts out every expert with plain
indexing written from docs/spec.md and docs/moe.md: the oracle the scanner is checked against.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spectrum_stream.layout.jobs import plan_jobs
from spectrum_stream.read.decode import decode
from spectrum_stream.source.checkpoint import open_local

E = 4  # experts in every tiny model
LAYERS = 2


def _save(model, folder: Path, shard: str = "40KB") -> Path:
    model.save_pretrained(folder, max_shard_size=shard)
    assert len(list(folder.glob("*.safetensors"))) > 1, "fixture should be sharded"
    return folder


def tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(41)
    cfg = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=E,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    return MixtralForCausalLM(cfg).to(torch.bfloat16)


def tiny_qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(42)
    cfg = Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=E,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=False,
    )
    return Qwen2MoeForCausalLM(cfg)


def tiny_dbrx():
    from transformers import DbrxConfig, DbrxForCausalLM

    torch.manual_seed(43)
    cfg = DbrxConfig(
        vocab_size=64,
        d_model=32,
        n_heads=4,
        n_layers=LAYERS,
        max_seq_len=64,
        attn_config={"kv_n_heads": 2, "rope_theta": 10000},
        ffn_config={"moe_num_experts": E, "moe_top_k": 2, "ffn_hidden_size": 24},
    )
    return DbrxForCausalLM(cfg)


def tiny_llama4():
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(44)
    cfg = Llama4TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=24,
        intermediate_size_mlp=40,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=E,
        interleave_moe_layer_step=1,
    )
    return Llama4ForCausalLM(cfg)


def tiny_gpt_oss():
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(45)
    cfg = GptOssConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=E,
        num_experts_per_tok=2,
    )
    return GptOssForCausalLM(cfg)


def write_sharded(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    config: dict | None,
    shards: int = 3,
    last: tuple[str, ...] = (),
) -> Path:
    """safetensors shards with an index; names ending in one of `last` all go to the last shard."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in tensors if not n.endswith(last or ("\0",))]
    tail = [n for n in tensors if n not in names]
    per = math.ceil(len(names) / (shards - 1 if tail else shards))
    groups = [names[i : i + per] for i in range(0, len(names), per)] + ([tail] if tail else [])
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, str(folder / fname))
        weight_map.update({n: fname for n in group})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def save_fused(model, folder: Path) -> Path:
    """The model's in-memory tensors (transformers 5's fused expert parameters) as a checkpoint."""
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    config = model.config.to_dict()
    return write_sharded(folder, state, config, shards=4)


@pytest.fixture(scope="session")
def mixtral_dir(tmp_path_factory) -> Path:
    return _save(tiny_mixtral(), tmp_path_factory.mktemp("moe") / "tiny-mixtral")


@pytest.fixture(scope="session")
def qwen2_moe_dir(tmp_path_factory) -> Path:
    return _save(tiny_qwen2_moe(), tmp_path_factory.mktemp("moe") / "tiny-qwen2-moe")


@pytest.fixture(scope="session")
def dbrx_dir(tmp_path_factory) -> Path:
    return _save(tiny_dbrx(), tmp_path_factory.mktemp("moe") / "tiny-dbrx")


@pytest.fixture(scope="session")
def llama4_dir(tmp_path_factory) -> Path:
    return _save(tiny_llama4(), tmp_path_factory.mktemp("moe") / "tiny-llama4")


@pytest.fixture(scope="session")
def gpt_oss_dir(tmp_path_factory) -> Path:
    return _save(tiny_gpt_oss(), tmp_path_factory.mktemp("moe") / "tiny-gpt-oss")


@pytest.fixture(scope="session")
def fused_qwen2_moe_dir(tmp_path_factory) -> Path:
    """Qwen2-MoE in transformers' fused form: experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]."""
    return save_fused(tiny_qwen2_moe(), tmp_path_factory.mktemp("moe") / "fused-qwen2-moe")


@pytest.fixture(scope="session")
def fused_mixtral_dir(tmp_path_factory) -> Path:
    return save_fused(tiny_mixtral(), tmp_path_factory.mktemp("moe") / "fused-mixtral")


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read with safetensors (independent of our reader)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as s:
            for name in s.keys():
                out[name] = s.get_tensor(name)
    return out


def expected_matrices(folder: Path) -> dict[str, torch.Tensor]:
    """{result key: float32 matrix} for every weight matrix, every expert cut out by hand."""
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type")
    out = {}
    for name, t in read_tensors(folder).items():
        if t.dim() < 2 or not t.is_floating_point() or name.endswith("_bias"):
            continue
        t = t.float()
        if name.endswith(("experts.mlp.w1", "experts.mlp.v1", "experts.mlp.w2")):  # DBRX
            ffn = config["ffn_config"]["ffn_hidden_size"]
            for e in range(config["ffn_config"]["moe_num_experts"]):
                out[f"{name}$[{e * ffn}:{(e + 1) * ffn}]"] = t[e * ffn : (e + 1) * ffn]
        elif t.dim() == 3 and name.endswith("gate_up_proj"):
            for e in range(t.shape[0]):
                w = t[e]
                if model_type == "gpt_oss":  # [H, 2I], gate/up interleaved on the last dim
                    gate, up = w[:, 0::2], w[:, 1::2]
                elif model_type in ("llama4", "llama4_text"):  # [H, 2I], halves on the last dim
                    gate, up = w.chunk(2, dim=1)
                else:  # transformers' fused form [2I, H], halves on the first dim
                    gate, up = w.chunk(2, dim=0)
                out[f"{name}(?#gate)$[{e}]"] = gate
                out[f"{name}(?#up)$[{e}]"] = up
        elif t.dim() == 3:
            for e in range(t.shape[0]):
                out[f"{name}$[{e}]"] = t[e]
        else:
            out[name.removesuffix(".weight")] = t
    return out


def planned_matrices(folder: Path) -> dict[str, torch.Tensor]:
    """{key: matrix} as the scanner cuts them: plan, decode each job, index, reshape."""
    ckpt, root = open_local(folder)
    out = {}
    for job in plan_jobs(ckpt):
        decoded = decode(job, lambda shard: root / shard, torch.device("cpu"))
        for spec in job.matrices:
            assert spec.key not in out, f"duplicate key {spec.key}"
            mat = decoded[spec.index] if spec.index else decoded
            out[spec.key] = mat.reshape(spec.shape)
    return out
