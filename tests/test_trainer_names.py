"""Default results keys name the parameters of the model transformers 5 loads (docs/moe.md, "Names").

For tiny checkpoints written by transformers (dense Llama, BERT, Mixtral, Qwen2-MoE, Qwen3-MoE,
DeepSeek-V3, DBRX, and Qwen2-MoE saved in the fused 3-D form), the JSON of a default scan is applied
to the model loaded with `from_pretrained` three ways: axolotl's rules as tests/test_axolotl_match.py
re-implements them, axolotl 0.19's own SpectrumPlugin and freeze code (skipped when axolotl is not
installed), and `spectrum_stream.freeze`. Each must train exactly the rows that hold the selected
matrices, found *by value*: every selected key's matrix is read from the checkpoint with
safetensors and searched for in the loaded parameters, independent of any naming rule.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from moe_models import expected_matrices
from test_axolotl_match import LayerPattern, unfrozen_rows

from spectrum_stream import freeze, scan
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.layout.trainer_names import TrainerNames
from spectrum_stream.results.files import rebuild_results
from spectrum_stream.results.select import always_unfrozen, select

FRACTION = 0.5
PLUGIN_HEAD = ["^lm_head.weight$", "^model.embed_tokens.weight$"]  # axolotl's plugin adds these


def _save(model, folder):
    model.save_pretrained(folder, max_shard_size="40KB")
    return folder


@pytest.fixture(scope="session")
def qwen3_moe_dir(tmp_path_factory):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(51)
    cfg = Qwen3MoeConfig(
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
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=False,
    )
    return _save(Qwen3MoeForCausalLM(cfg), tmp_path_factory.mktemp("t5") / "tiny-qwen3-moe")


@pytest.fixture(scope="session")
def deepseek_v3_dir(tmp_path_factory):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(52)
    cfg = DeepseekV3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=8,
        qk_nope_head_dim=8,
        n_group=1,
        topk_group=1,
        tie_word_embeddings=False,
    )
    return _save(DeepseekV3ForCausalLM(cfg), tmp_path_factory.mktemp("t5") / "tiny-deepseek-v3")


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(53)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    return _save(BertForMaskedLM(cfg), tmp_path_factory.mktemp("t5") / "tiny-bert")


FAMILIES = [
    "llama_dir",
    "bert_dir",
    "mixtral_dir",
    "qwen2_moe_dir",
    "qwen3_moe_dir",
    "deepseek_v3_dir",
    "dbrx_dir",
    "fused_qwen2_moe_dir",
]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """One default scan per family: (folder, results JSON as axolotl reads it, journal records)."""
    cache = {}

    def get(folder):
        if folder not in cache:
            out = tmp_path_factory.mktemp("snr") / "model_snr_results"
            report = scan(folder, out_dir=out, progress=False)
            results = json.loads(report.paths.results.read_text())
            _, records, _ = read_journal(report.paths.journal)
            cache[folder] = (report, results, records)
        return cache[folder]

    return get


def load(folder):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    auto = (
        AutoModelForMaskedLM
        if AutoConfig.from_pretrained(folder).model_type == "bert"
        else AutoModelForCausalLM
    )
    return auto.from_pretrained(folder)


def locate(matrix: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[str, set[int]]:
    """Where a checkpoint matrix sits in the loaded model, by value: (parameter, its dim-0 rows)."""
    m, n = matrix.shape
    hits = []
    for name, p in params.items():
        p = p.detach().float()
        if p.dim() == 2 and p.shape[1] == n and p.shape[0] % m == 0:
            hits += [
                (name, set(range(r, r + m)))
                for r in range(0, p.shape[0], m)
                if torch.equal(p[r : r + m], matrix)
            ]
        elif p.dim() == 3:
            for e in range(p.shape[0]):
                x = p[e]
                pieces = (
                    [x]
                    + (list(x.chunk(2, 0)) if x.shape[0] == 2 * m else [])
                    + (list(x.chunk(2, 1)) if x.shape[1] == 2 * n else [])
                )
                if any(
                    piece.shape == matrix.shape and torch.equal(piece, matrix) for piece in pieces
                ):
                    hits.append((name, {e}))
    assert len(hits) == 1, f"matrix found {len(hits)} times in the loaded model"
    return hits[0]


def expected_rows(folder, keys, heads, records, params) -> dict[str, set[int]]:
    """The rows training exactly `keys` (results keys) means, found by value, plus `heads` whole;
    a whole weight's module trains its other parameters too (bias), as axolotl's prefix match."""
    oracle = expected_matrices(folder)
    by_result = {r["trainer_key"]: r["key"] for r in records.values()}
    out: dict[str, set[int]] = {}
    for key in keys:
        name, rows = locate(oracle[by_result[key]].float(), params)
        out.setdefault(name, set()).update(rows)
        if params[name].dim() == 2 and len(out[name]) == params[name].shape[0]:
            module = name.removesuffix(".weight")
            for other in params:
                if other.startswith(module + "."):
                    out[other] = set(range(params[other].shape[0]))
    for head in heads:
        out[head] = set(range(params[head].shape[0]))
    return out


def _backward_ones(model) -> None:
    """A backward pass giving every trainable element gradient 1, as a tensor of its own (a hook
    that zeroes rows in place must not see one shared, expanded gradient)."""
    params = [p for p in model.parameters() if p.requires_grad]
    sum((p.float() * torch.ones(p.shape)).sum() for p in params).backward()


def trained_rows(model) -> dict[str, set[int]]:
    """Rows that get a gradient, seen through a backward pass (gradient hooks included)."""
    _backward_ones(model)
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            rows = (
                p.grad.reshape(p.shape[0], -1).ne(0).any(dim=1) if p.dim() else p.grad.ne(0)[None]
            )
            out[name] = {i for i, hit in enumerate(rows.tolist()) if hit}
    return {n: r for n, r in out.items() if r}


@pytest.fixture
def logged(caplog):
    """Records of the package's logger, even when the CLI's setup stopped it propagating."""
    logger = logging.getLogger("spectrum_stream")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.setLevel(level)
    logger.removeHandler(caplog.handler)


def _axolotl():
    plugin = pytest.importorskip("axolotl.integrations.spectrum")
    freeze_mod = pytest.importorskip("axolotl.utils.freeze")
    from axolotl.utils.dict import DictDefault

    return plugin, freeze_mod, DictDefault


@pytest.mark.parametrize("engine", ["axolotl-rules", "axolotl-0.19", "freeze"])
@pytest.mark.parametrize("fixture", FAMILIES)
def test_default_keys_train_exactly_the_selected_matrices(
    fixture, engine, request, scanned, monkeypatch
):
    folder = request.getfixturevalue(fixture)
    report, results, records = scanned(folder)
    model = load(folder)
    params = dict(model.named_parameters())
    shapes = {n: p.shape[0] for n, p in params.items()}

    # every key of the JSON is live: it names at least one parameter of the loaded model
    dead = [k for k in results if not any(LayerPattern(k).match(n) for n in params)]
    assert not dead, f"keys that match no parameter: {dead}"

    chosen = [k for keys in select(results, FRACTION * 100).values() for k in keys]
    plugin_heads = [p.strip("^$") for p in PLUGIN_HEAD if p.strip("^$") in params]
    if engine == "axolotl-rules":
        got = unfrozen_rows(PLUGIN_HEAD + chosen, shapes)
        heads = plugin_heads
    elif engine == "axolotl-0.19":
        plugin, freeze_mod, DictDefault = _axolotl()
        monkeypatch.chdir(report.paths.results.parent.parent)  # ./model_snr_results/ is there
        cfg = DictDefault({"base_model": report.model_name, "spectrum_top_fraction": FRACTION})
        plugin.SpectrumPlugin().pre_model_load(cfg)
        patterns = cfg["unfrozen_parameters"]
        assert patterns[:2] == PLUGIN_HEAD and sorted(patterns[2:]) == sorted(chosen)
        freeze_mod.freeze_layers_except(model, patterns)
        got = trained_rows(model)
        heads = plugin_heads
    else:
        summary = freeze(model, report.paths.results, top_percent=FRACTION * 100)
        assert summary.unmatched == []
        got = trained_rows(model)
        heads = [p.strip("^$") for p in always_unfrozen(results)]
        assert summary.trainable == sum(
            params[n][0].numel() * len(r) if params[n].dim() else 1 for n, r in got.items()
        )
    want = expected_rows(folder, chosen, heads, records, params)
    assert got == want
    if ".experts." in "".join(results) and "dbrx" not in fixture:
        assert any(0 < len(r) < shapes[n] for n, r in got.items()), "some experts stay frozen"


@pytest.mark.parametrize(
    "model_type",
    [
        "llama",
        "bert",
        "mixtral",
        "minimax",
        "phimoe",
        "qwen2_moe",
        "qwen3_moe",
        "deepseek_v3",
        "olmoe",
        "dbrx",
        "qwen3_vl_moe",
    ],
)
def test_builtin_rules_are_transformers_mapping(model_type):
    pytest.importorskip("transformers.conversion_mapping")
    config = {"model_type": model_type}
    installed = TrainerNames.for_config(config)
    assert installed.origin.startswith("transformers 5")
    assert installed.rules == TrainerNames.for_config(config, use_transformers=False).rules


def test_keys_without_transformers_are_the_same(mixtral_dir, monkeypatch, scanned):
    from spectrum_stream.layout import trainer_names

    _, results, _ = scanned(mixtral_dir)
    monkeypatch.setattr(trainer_names, "transformers_rules", lambda config: None)
    report = scan(mixtral_dir, out_dir=mixtral_dir.parent / "no-tf", progress=False)
    assert report.results == results
    assert "model.layers.1.mlp.experts.gate_up_proj(?#up)$[3]" in results
    assert results["model.layers.1.mlp.experts.down_proj$[2]"]["type"] == "mlp.experts.down_proj"
    assert results["model.layers.0.mlp.gate"]["type"] == "mlp.gate"


def test_rebuild_switches_names_without_a_rescan(mixtral_dir, scanned, tmp_path):
    report, results, records = scanned(mixtral_dir)
    original = scan(
        mixtral_dir, out_dir=tmp_path, progress=False, names="checkpoint", grouping="per-expert"
    ).results
    assert "model.layers.1.block_sparse_moe.experts.3.w2" in original
    assert (
        original["model.layers.1.block_sparse_moe.experts.3.w2"]["type"]
        == "block_sparse_moe.experts.3.w2"
    )
    _, rebuilt, _ = rebuild_results(report.paths.journal, "checkpoint", "per-expert")
    assert rebuilt == original
    _, back, _ = rebuild_results(report.paths.journal)
    assert back == results
    # one record, both names: the journal maps them for anything keyed by results keys
    rec = records["model.layers.1.block_sparse_moe.experts.3.w1"]
    assert rec["trainer_key"] == "model.layers.1.mlp.experts.gate_up_proj(?#gate)$[3]"


def test_freeze_masks_rows_and_says_what_an_optimizer_still_does(
    fused_qwen2_moe_dir, scanned, logged
):
    _, results, _ = scanned(fused_qwen2_moe_dir)
    model = load(fused_qwen2_moe_dir)
    summary = freeze(model, results, top_percent=50)
    assert summary.partial and not summary.unmatched
    assert "optimizer still keeps state" in logged.text and "weight_decay=0" in logged.text
    name, (kept, rows) = next(iter(summary.partial.items()))
    param = dict(model.named_parameters())[name]
    before = param.detach().clone()
    frozen = [r for r in range(rows) if r not in trained_rows(model)[name]]
    assert len(frozen) == rows - kept

    model.zero_grad()
    opt = torch.optim.AdamW(summary.param_groups(model, weight_decay=0.1), lr=1e-2)
    _backward_ones(model)
    opt.step()
    assert torch.equal(param.detach()[frozen], before[frozen]), "masked rows stay as loaded"
    assert not torch.equal(param.detach(), before)

    # plain AdamW with weight decay on every trainable parameter moves the masked rows
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    opt.step()
    assert not torch.equal(param.detach()[frozen], before[frozen])
    summary.remove()


def test_freeze_reports_keys_that_match_nothing(mixtral_dir, tmp_path, logged):
    results = scan(mixtral_dir, out_dir=tmp_path, progress=False, names="checkpoint").results
    model = load(mixtral_dir)
    summary = freeze(model, results, top_percent=50)
    assert any("block_sparse_moe.experts" in k for k in summary.unmatched)
    assert any(
        r.levelno == logging.WARNING and "match no parameter" in r.getMessage()
        for r in logged.records
    )


def test_cli_names_and_grouping(mixtral_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from spectrum_stream.cli.main import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    done = runner.invoke(
        main,
        [
            "scan",
            str(mixtral_dir),
            "--device",
            "cpu",
            "--quiet",
            "--names",
            "checkpoint",
            "--expert-grouping",
            "per-expert",
        ],
    )
    assert done.exit_code == 0, done.output
    [path] = [
        p
        for p in (tmp_path / "model_snr_results").glob("snr_results_*.json")
        if not p.stem.endswith("_sorted")
    ]
    results = json.loads(path.read_text())
    assert (
        results["model.layers.1.block_sparse_moe.experts.3.w2"]["type"]
        == "block_sparse_moe.experts.3.w2"
    )
    journal = path.with_name(path.stem + ".journal.jsonl")
    done = runner.invoke(main, ["rebuild", str(journal)])
    assert done.exit_code == 0, done.output
    results = json.loads(path.read_text())
    assert results["model.layers.1.mlp.experts.down_proj$[3]"]["type"] == "mlp.experts.down_proj"
    done = runner.invoke(main, ["rebuild", str(journal), "--names", "nope"])
    assert done.exit_code != 0 and "Traceback" not in done.output
