"""The trainer-name rules cache: equal to a fresh derivation, hostile files ignored and rewritten,
and a dense scan that never imports transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spectrum_stream.layout import rules_cache, trainer_names
from spectrum_stream.layout.trainer_names import DENSE_FAMILIES, TrainerNames

pytest.importorskip("transformers.conversion_mapping")

MODELS = [
    {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
    {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]},
    {"model_type": "qwen3_moe"},
    {"model_type": "jamba"},  # converted by transformers 5, not in the built-in table
    {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]},
    {"model_type": "dbrx"},
]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(rules_cache.CACHE_ENV, str(tmp_path))
    return tmp_path


def _fresh(config: dict) -> TrainerNames:
    """The rules read straight from transformers' mapping, as before the cache."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    found = None
    for name in [*(config.get("architectures") or []), config["model_type"]]:
        if (found := get_checkpoint_conversion_mapping(name)) is not None:
            break
    legacy = get_checkpoint_conversion_mapping("legacy") or []
    return TrainerNames(trainer_names.rules_from_transformers(list(found or []) + legacy), "fresh")


@pytest.mark.parametrize("config", MODELS, ids=lambda c: c["model_type"])
def test_cached_rules_equal_the_fresh_ones(config: dict, cache_dir: Path) -> None:
    first = TrainerNames.for_config(config)  # derives (or knows it dense) and writes the file
    TrainerNames.for_config({"model_type": "mixtral"})  # the file exists from here on
    assert (cache_dir / rules_cache.FILE_NAME).is_file()
    cached = TrainerNames.for_config(config)
    assert first.rules == cached.rules == _fresh(config).rules


def test_cache_round_trip_is_exact(cache_dir: Path) -> None:
    table = trainer_names.derive_table()
    assert table is not None
    legacy, types = table
    assert any(r.fuses for r in types.values())
    rules_cache.store("9.9", legacy, types)
    assert rules_cache.load("9.9") == (legacy, types)
    assert rules_cache.load("9.8") is None  # keyed by the transformers version


def test_dense_families_are_not_in_the_mapping() -> None:
    from transformers.models.auto import modeling_auto

    table = trainer_names.derive_table()
    assert table is not None
    listed = set(table[1])
    classes = {
        name
        for mapping in vars(modeling_auto).values()
        if isinstance(mapping, dict) and "llama" in mapping
        for value in mapping.values()
        for name in (value if isinstance(value, tuple) else (value,))
        if isinstance(name, str)
    }
    for model_type, prefix in DENSE_FAMILIES.items():
        assert model_type not in listed
        config = {"model_type": model_type}
        assert trainer_names._dense_family(config)
        same_family = {
            c
            for c in classes
            if c.startswith(prefix)
            and (c[len(prefix) :].startswith("For") or c == prefix + "Model")
        }
        assert same_family, model_type
        assert not same_family & listed, model_type
        for architecture in same_family:
            assert trainer_names._dense_family({**config, "architectures": [architecture]})
    assert not trainer_names._dense_family(
        {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}
    )
    assert not trainer_names._dense_family({"model_type": "phi3", "architectures": ["PhimoeX"]})


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": 1, "transformers": "%s", "legacy": {"renames": [[1, 2]], "fuses": []}, '
        b'"types": {}}',
        b'{"format": 1, "transformers": "%s", "legacy": {"renames": [], "fuses": []}, '
        b'"types": {"mixtral": {"renames": [["(", "x"]], "fuses": []}}}',
        b'{"format": 1, "transformers": "%s", "legacy": {"renames": [], "fuses": []}, '
        b'"types": {"mixtral": {"renames": [], "fuses": [{"sources": ["a"], "target": "b", '
        b'"kind": "melt", "parts": []}]}}}',
        b"[" * 100_000,
        b" " * (rules_cache.MAX_BYTES + 1),
    ],
)
def test_a_bad_cache_file_is_ignored_and_rewritten(content: bytes, cache_dir: Path) -> None:
    version = trainer_names.installed_transformers()
    assert version is not None
    path = cache_dir / rules_cache.FILE_NAME
    path.write_bytes(content.replace(b"%s", version.encode()) if b"%s" in content else content)
    config = {"model_type": "mixtral"}
    assert TrainerNames.for_config(config).rules == _fresh(config).rules
    assert json.loads(path.read_bytes())["transformers"] == version  # written again, whole


def test_an_unwritable_cache_costs_only_speed(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(rules_cache.CACHE_ENV, str(blocker / "below-a-file"))
    config = {"model_type": "mixtral"}
    assert TrainerNames.for_config(config).rules == _fresh(config).rules


def test_a_dense_scan_does_not_import_transformers(tmp_path: Path, cache_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    g = torch.Generator().manual_seed(0)
    save_file(
        {"model.layers.0.self_attn.q_proj.weight": torch.randn(16, 8, generator=g)},
        str(ckpt / "model.safetensors"),
    )
    code = (
        "import sys\nfrom spectrum_stream import scan\n"
        f"r = scan({str(ckpt)!r}, out_dir={str(tmp_path / 'out')!r}, progress=False)\n"
        "assert len(r.results) == 1, r\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    moe = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}
    (ckpt / "config.json").write_text(json.dumps(moe))
    out = subprocess.run(
        [sys.executable, "-c", code.replace("'out'", "'out2'")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "True"  # the check can fail: MoE, no cache yet
    assert (cache_dir / rules_cache.FILE_NAME).is_file()
    out = subprocess.run(
        [sys.executable, "-c", code.replace("'out'", "'out3'")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"  # the MoE model, from the cache now
