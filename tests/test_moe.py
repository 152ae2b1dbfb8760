"""MoE checkpoints: per-expert, DBRX-fused and 3-D fused expert tensors, scanned expert by expert."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from moe_models import LAYERS, E, expected_matrices, planned_matrices, write_sharded
from reference import reference_snr

from spectrum_stream import SpectrumError, scan
from spectrum_stream.cli import main as cli
from spectrum_stream.layout import experts as layout_mod
from spectrum_stream.layout.jobs import plan_jobs
from spectrum_stream.layout.naming import module_type
from spectrum_stream.options import ScanOptions
from spectrum_stream.source.checkpoint import open_local

ALL = [
    "mixtral_dir",
    "qwen2_moe_dir",
    "dbrx_dir",
    "llama4_dir",
    "gpt_oss_dir",
    "fused_qwen2_moe_dir",
    "fused_mixtral_dir",
]

# how each layout names its routed experts: regex with the expert index as group "e" (for DBRX
# the first row of the expert, 24 rows each)
EXPERT_KEYS = {
    "mixtral_dir": r"block_sparse_moe\.experts\.(?P<e>\d+)\.w[123]$",
    "qwen2_moe_dir": r"mlp\.experts\.(?P<e>\d+)\.(gate|up|down)_proj$",
    "dbrx_dir": r"ffn\.experts\.mlp\.(w1|v1|w2)\$\[(?P<e>\d+):\d+\]$",
    "llama4_dir": r"feed_forward\.experts\.(gate_up_proj\(\?#(gate|up)\)|down_proj)\$\[(?P<e>\d+)\]$",
    "gpt_oss_dir": r"mlp\.experts\.(gate_up_proj\(\?#(gate|up)\)|down_proj)\$\[(?P<e>\d+)\]$",
    "fused_qwen2_moe_dir": r"mlp\.experts\.(gate_up_proj\(\?#(gate|up)\)|down_proj)\$\[(?P<e>\d+)\]$",
    "fused_mixtral_dir": r"mlp\.experts\.(gate_up_proj\(\?#(gate|up)\)|down_proj)\$\[(?P<e>\d+)\]$",
}


@pytest.mark.parametrize("fixture", ALL)
def test_plan_cuts_out_exactly_each_expert(fixture, request):
    folder = request.getfixturevalue(fixture)
    expected = expected_matrices(folder)
    got = planned_matrices(folder)
    assert set(got) == set(expected)
    for key, w in expected.items():
        assert got[key].shape == w.shape, key
        assert torch.equal(got[key], w), key


@pytest.mark.parametrize("fixture", ALL)
def test_every_expert_is_scanned_and_matches_float64_reference(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    report = scan(
        folder,
        ScanOptions(
            out_dir=tmp_path,
            progress=False,
            device="cpu",
            names="checkpoint",
            grouping="per-expert",
        ),
    )
    assert not report.failed
    results = json.loads(report.paths.results.read_text())  # python's own json, as axolotl
    expected = expected_matrices(folder)
    assert set(results) == set(expected)
    for key, w in expected.items():
        assert results[key]["type"] == module_type(key)
        ref = reference_snr(w.double().numpy())
        assert abs(results[key]["snr"] - ref) <= 1e-4 * abs(ref), key

    rx = EXPERT_KEYS[fixture]
    seen: dict[int, int] = {}
    for key in results:
        m = re.search(rx, key)
        if m:
            e = int(m["e"]) // (24 if fixture == "dbrx_dir" else 1)
            seen[e] = seen.get(e, 0) + 1
    # gate, up and down (w1, w3, w2; DBRX w1, v1, w2) of every expert in every layer
    assert seen == {e: 3 * LAYERS for e in range(E)}


def test_expert_types_follow_the_original_naming(
    mixtral_dir, dbrx_dir, fused_qwen2_moe_dir, tmp_path
):
    original = dict(progress=False, names="checkpoint", grouping="per-expert")
    mix = scan(mixtral_dir, out_dir=tmp_path / "m", **original).results
    assert (
        mix["model.layers.1.block_sparse_moe.experts.3.w2"]["type"]
        == "block_sparse_moe.experts.3.w2"
    )
    assert mix["model.layers.0.block_sparse_moe.gate"]["type"] == "block_sparse_moe.gate"
    dbrx = scan(dbrx_dir, out_dir=tmp_path / "d", **original).results
    assert (
        dbrx["transformer.blocks.1.ffn.experts.mlp.v1$[24:48]"]["type"]
        == "ffn.experts.mlp.v1$[24:48]"
    )
    assert dbrx["transformer.blocks.0.ffn.router.layer"]["type"] == "ffn.router.layer"
    fused = scan(fused_qwen2_moe_dir, out_dir=tmp_path / "f", **original).results
    key = "model.layers.1.mlp.experts.gate_up_proj(?#up)$[2]"
    assert fused[key]["type"] == "mlp.experts.gate_up_proj(?#up)$[2]"
    assert "model.layers.1.mlp.shared_expert_gate" in fused


def test_experts_of_one_tensor_share_one_batched_call(
    fused_qwen2_moe_dir, dbrx_dir, tmp_path, svd_batch_sizes
):
    sizes = svd_batch_sizes
    report = scan(fused_qwen2_moe_dir, out_dir=tmp_path / "f", progress=False)
    assert sum(sizes) == len(report.results)
    assert max(sizes) >= 2 * E, "gate and up of all experts of a gate_up_proj in one svdvals call"
    sizes.clear()
    report = scan(dbrx_dir, out_dir=tmp_path / "d", progress=False)
    assert sum(sizes) == len(report.results)
    assert max(sizes) >= E
    sizes.clear()
    scan(dbrx_dir, ScanOptions(out_dir=tmp_path / "d1", progress=False, batch_bytes=1))
    assert set(sizes) == {1}, "the memory budget still caps a batch"


@pytest.mark.parametrize("fixture", ["dbrx_dir", "llama4_dir", "fused_qwen2_moe_dir"])
def test_big_fused_tensors_are_read_a_few_experts_at_a_time(
    fixture, request, tmp_path, monkeypatch
):
    folder = request.getfixturevalue(fixture)
    whole = scan(folder, out_dir=tmp_path / "whole", progress=False).results
    ckpt, _ = open_local(folder)
    monkeypatch.setattr(layout_mod, "EXPERT_CHUNK_BYTES", 1)  # one expert per read
    jobs = plan_jobs(ckpt)
    by_tensor: dict[str, list] = {}
    for job in jobs:
        by_tensor.setdefault(job.main.name, []).append(job)
    fused = {n: js for n, js in by_tensor.items() if len(js) > 1}
    assert fused, "fused expert tensors should be split into several reads"
    for name, js in fused.items():
        shard, entry = ckpt.tensors[name]
        assert len(js) == E
        assert js[0].main.entry.start == entry.start and js[-1].main.entry.end == entry.end
        for a, b in zip(js, js[1:]):
            assert a.main.entry.end == b.main.entry.start, "reads tile the tensor"
    chunked = scan(folder, out_dir=tmp_path / "chunked", progress=False).results
    assert chunked.keys() == whole.keys()
    for key, info in whole.items():
        assert chunked[key]["snr"] == pytest.approx(info["snr"], rel=1e-5), key


def test_gate_up_orientation_without_config(llama4_dir, fused_qwen2_moe_dir, tmp_path):
    """[E, H, 2I] vs [E, 2I, H] is told apart by the sibling down_proj when config.json is missing."""
    for src in (llama4_dir, fused_qwen2_moe_dir):
        copy = tmp_path / src.name
        shutil.copytree(src, copy)
        expected = expected_matrices(copy)  # reads config.json for the model type
        (copy / "config.json").unlink()
        got = planned_matrices(copy)
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], w) for k, w in expected.items())


def _write_dbrx_like(folder, config):
    torch.manual_seed(5)
    tensors = {
        "transformer.wte.weight": torch.randn(64, 32),
        "transformer.blocks.0.ffn.experts.mlp.w1": torch.randn(4 * 24, 32),
        "transformer.blocks.0.ffn.router.layer.weight": torch.randn(4, 32),
    }
    return write_sharded(folder, tensors, config, shards=2)


def test_dbrx_without_its_config_is_a_clear_error(tmp_path):
    folder = _write_dbrx_like(tmp_path / "dbrx", None)
    with pytest.raises(SpectrumError, match=r"ffn_config\.moe_num_experts"):
        scan(folder, out_dir=tmp_path / "out", progress=False)
    # the rest of the model still scans when the tensor is excluded
    report = scan(folder, out_dir=tmp_path / "out2", progress=False, exclude="experts")
    assert set(report.results) == {"transformer.wte", "transformer.blocks.0.ffn.router.layer"}
    # one of the two numbers is enough
    (folder / "config.json").write_text(json.dumps({"ffn_config": {"moe_num_experts": 4}}))
    keys = set(scan(folder, out_dir=tmp_path / "out3", progress=False).results)
    assert {
        f"transformer.blocks.0.ffn.experts.mlp.w1$[{e * 24}:{e * 24 + 24}]" for e in range(4)
    } <= keys


def test_dbrx_config_that_does_not_fit_the_tensor(tmp_path):
    cfg = {"ffn_config": {"moe_num_experts": 4, "ffn_hidden_size": 25}}
    folder = _write_dbrx_like(tmp_path / "dbrx", cfg)
    with pytest.raises(
        SpectrumError,
        match=r"moe_num_experts \(4\) times ffn_config.ffn_hidden_size \(25\) is 100 rows",
    ):
        scan(folder, out_dir=tmp_path / "out", progress=False)
    result = CliRunner().invoke(
        cli, ["scan", str(folder), "--out-dir", str(tmp_path / "o"), "--quiet"]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "is 100 rows, but 'transformer.blocks.0.ffn.experts.mlp.w1' has 96" in result.output


def test_odd_gate_up_is_a_clear_error(tmp_path):
    tensors = {"model.layers.0.mlp.experts.gate_up_proj": torch.randn(2, 7, 8)}
    folder = write_sharded(tmp_path / "odd", tensors, {"hidden_size": 8}, shards=1)
    with pytest.raises(SpectrumError, match="even size"):
        scan(folder, out_dir=tmp_path / "out", progress=False)


def test_keys_survive_json_and_the_yaml_writer(fused_qwen2_moe_dir, dbrx_dir, tmp_path):
    import yaml

    from spectrum_stream.results.select import to_yaml, unfrozen_parameters

    for folder in (fused_qwen2_moe_dir, dbrx_dir):
        report = scan(folder, out_dir=tmp_path / folder.name, progress=False)
        flat = json.loads(report.paths.results.read_text())
        assert flat.keys() == report.results.keys()
        sorted_file = json.loads(report.paths.sorted.read_text())
        assert {k for mods in sorted_file.values() for k in mods} == set(flat)
        doc = yaml.safe_load(to_yaml(flat, 50))
        assert doc["unfrozen_parameters"] == unfrozen_parameters(flat, 50)
        assert any("$[" in p for p in doc["unfrozen_parameters"])
