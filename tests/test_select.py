"""Selection: per-type floor(count * P / 100), highest SNR first, and the YAML axolotl reads."""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml

from spectrum_stream import SpectrumError
from spectrum_stream.results.select import (
    load_results,
    select,
    to_yaml,
    top_count,
    unfrozen_parameters,
)


def make_results(layers: int = 10, seed: int = 0) -> dict:
    rng = random.Random(seed)
    out = {
        "lm_head": {"snr": 0.5, "type": "lm_head"},
        "model.embed_tokens": {"snr": 0.7, "type": "model.embed_tokens"},
    }
    for t in ("mlp.down_proj", "self_attn.q_proj", "self_attn.k_proj"):
        for i in range(layers):
            out[f"model.layers.{i}.{t}"] = {"snr": rng.random(), "type": t}
    return out


@pytest.mark.parametrize("percent", [0, 10, 25, 29, 33.3, 50, 70, 100])
def test_counts_per_type_and_highest_first(percent):
    results = make_results()
    chosen = select(results, percent)
    for t, keys in chosen.items():
        members = [k for k, v in results.items() if v["type"] == t]
        assert len(keys) == math.floor(len(members) * percent / 100 + 1e-9)
        best = sorted(members, key=lambda k: -results[k]["snr"])[: len(keys)]
        assert keys == best


def test_top_count_is_exact_at_the_boundary():
    assert top_count(100, 29) == 29  # 100 * 0.29 is 28.999... in floating point
    assert top_count(10, 70) == 7 and top_count(3, 50) == 1 and top_count(1, 99.9) == 0


def test_patterns_name_head_and_embedding_first():
    patterns = unfrozen_parameters(make_results(), 20)
    assert patterns[:2] == ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    assert len(patterns) == 2 + 3 * 2


def test_tied_model_gets_no_lm_head_pattern():
    results = make_results()
    del results["lm_head"]
    assert not any("lm_head" in p for p in unfrozen_parameters(results, 50))


def test_other_architecture_names_its_own_embedding():
    results = {
        "transformer.wte": {"snr": 1.0, "type": "transformer.wte"},
        "transformer.h.0.attn.c_attn": {"snr": 1.0, "type": "attn.c_attn"},
        "transformer.h.1.attn.c_attn": {"snr": 2.0, "type": "attn.c_attn"},
    }
    assert unfrozen_parameters(results, 50) == [
        "^transformer.wte.weight$",
        "transformer.h.1.attn.c_attn",
    ]


def test_yaml_is_what_axolotl_reads():
    results = make_results()
    doc = yaml.safe_load(to_yaml(results, 30))
    assert list(doc) == ["unfrozen_parameters"]
    assert doc["unfrozen_parameters"] == unfrozen_parameters(results, 30)


def test_bad_results_files_are_clear_errors(tmp_path):
    bad = tmp_path / "r.json"
    for content in [
        "{not json",
        "[1]",
        json.dumps({"a": {"snr": None, "type": "t"}}),
        json.dumps({"a": {"snr": 1.0}}),
    ]:
        bad.write_text(content)
        with pytest.raises(SpectrumError):
            load_results(bad)
    with pytest.raises(SpectrumError):
        load_results(tmp_path / "missing.json")
    with pytest.raises(SpectrumError):
        select(make_results(), 120)


@pytest.mark.parametrize(
    ("family", "keys"),
    [
        (
            "mixtral",
            [f"model.layers.1.block_sparse_moe.experts.3.{p}" for p in ("w1", "w2", "w3")]
            + ["model.layers.1.block_sparse_moe.gate", "model.layers.1.self_attn.q_proj"],
        ),
        (
            "qwen2_moe",
            [f"model.layers.0.mlp.experts.12.{p}_proj" for p in ("gate", "up", "down")]
            + ["model.layers.0.mlp.shared_expert.gate_proj"],
        ),
    ],
)
def test_fused_names_are_the_scans(family: str, keys: list[str]) -> None:
    """select --fused-experts names a per-expert key as the scan's trainer key for that family."""
    from spectrum_stream.layout.trainer_names import TrainerNames
    from spectrum_stream.results.select import fused_param_pattern

    scan_names = TrainerNames.for_config({"model_type": family}, use_transformers=False)
    for key in keys:
        assert fused_param_pattern(key) == scan_names.key(key, key + ".weight")
    assert "$[" in fused_param_pattern(keys[0])
