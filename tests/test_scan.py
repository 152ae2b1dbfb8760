"""Scanning real-layout checkpoints written by transformers, end to end through the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import all_matrices, reference_snr

from spectrum_stream import SpectrumError, scan
from spectrum_stream.layout.naming import module_type
from spectrum_stream.options import ScanOptions


@pytest.mark.parametrize("fixture", ["llama_dir", "qwen2_dir"])
def test_every_module_matches_float64_reference(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    assert len(list(folder.glob("*.safetensors"))) > 1, "fixture should be sharded"
    report = scan(folder, ScanOptions(out_dir=tmp_path, progress=False, device="cpu"))
    expected = all_matrices(folder)
    results = json.loads(report.paths.results.read_text())  # python's own json, as axolotl
    assert set(results) == set(expected)
    for key, w in expected.items():
        assert results[key]["type"] == module_type(key)
        ref = reference_snr(w.numpy())
        assert abs(results[key]["snr"] - ref) <= 1e-4 * abs(ref), key


def test_results_format_and_sorted_file(llama_dir, tmp_path):
    report = scan(llama_dir, out_dir=tmp_path, progress=False)
    assert report.paths.results == tmp_path / "snr_results_tiny-llama.json"
    flat = json.loads(report.paths.results.read_text())
    for info in flat.values():
        assert set(info) == {"snr", "type"} and isinstance(info["snr"], float)
    assert flat["model.layers.2.mlp.down_proj"]["type"] == "mlp.down_proj"
    assert flat["lm_head"]["type"] == "lm_head"
    assert flat["model.embed_tokens"]["type"] == "model.embed_tokens"
    ordered = json.loads(report.paths.sorted.read_text())
    assert set(ordered) == {info["type"] for info in flat.values()}
    for mods in ordered.values():
        values = list(mods.values())
        assert values == sorted(values, reverse=True)
    assert sum(len(m) for m in ordered.values()) == len(flat) == 3 * 7 + 2


def test_tied_model_has_no_lm_head(qwen2_dir, tmp_path):
    report = scan(qwen2_dir, out_dir=tmp_path, progress=False)
    assert "lm_head" not in report.results and "model.embed_tokens" in report.results


def test_single_file_and_single_shard_folder(tmp_path, llama_dir):
    from safetensors.torch import save_file

    w = torch.randn(30, 50, generator=torch.Generator().manual_seed(12))
    folder = tmp_path / "one"
    folder.mkdir()
    save_file(
        {"model.layers.0.mlp.up_proj.weight": w, "norm.weight": torch.ones(5)},
        str(folder / "model.safetensors"),
    )
    by_folder = scan(folder, out_dir=tmp_path / "a", progress=False).results
    by_file = scan(folder / "model.safetensors", out_dir=tmp_path / "b", progress=False, name="x")
    assert set(by_folder) == {"model.layers.0.mlp.up_proj"}
    assert by_folder == by_file.results
    assert by_file.paths.results.name == "snr_results_x.json"


def test_include_and_exclude_filter_on_type_or_name(llama_dir, tmp_path):
    only_mlp = scan(llama_dir, out_dir=tmp_path / "i", progress=False, include=r"^mlp\.").results
    assert only_mlp and all(v["type"].startswith("mlp.") for v in only_mlp.values())
    no_head = scan(
        llama_dir, out_dir=tmp_path / "e", progress=False, exclude=r"lm_head|embed|layers\.0\."
    ).results
    assert "lm_head" not in no_head and not any(k.startswith("model.layers.0.") for k in no_head)
    assert len(no_head) == 2 * 7
    with pytest.raises(SpectrumError, match="no weight matrices"):
        scan(llama_dir, out_dir=tmp_path / "n", progress=False, include="no-such-module")


def test_same_shape_matrices_are_batched_within_budget(llama_dir, tmp_path, svd_batch_sizes):
    sizes = svd_batch_sizes
    report = scan(llama_dir, out_dir=tmp_path / "big", progress=False)
    assert sum(sizes) == len(report.results)
    assert max(sizes) > 1, "consecutive same-shape matrices should share one svdvals call"
    sizes.clear()
    tiny_budget = ScanOptions(out_dir=tmp_path / "small", progress=False, batch_bytes=1)
    assert scan(llama_dir, tiny_budget).results.keys() == report.results.keys()
    assert set(sizes) == {1}, "a budget smaller than one matrix means one matrix per call"


def test_name_comes_from_config_or_folder(tmp_path, llama_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(llama_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["_name_or_path"] = "meta-llama/Tiny_Llama"
    (copy / "config.json").write_text(json.dumps(cfg))
    report = scan(copy, out_dir=tmp_path / "out", progress=False)
    assert report.paths.results.name == "snr_results_meta-llama-Tiny-Llama.json"


def test_cuda_requested_without_cuda_is_a_clear_error(llama_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SpectrumError, match="CUDA is not available"):
        scan(llama_dir, out_dir=tmp_path, progress=False, device="cuda:0")


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_tensor_that_cannot_be_loaded_fails_only_its_module(
    llama_dir, tmp_path, scan_with, prefetch
):
    from spectrum_stream.read.decode import decode

    def flaky(job, *args):
        if job.main.name == "model.layers.1.mlp.up_proj.weight":
            raise RuntimeError("CUDA out of memory (simulated)")
        return decode(job, *args)

    opts = ScanOptions(out_dir=tmp_path, progress=False, prefetch=prefetch)
    report = scan_with(llama_dir, opts, decode=flaky)
    assert [k for k, _ in report.failed] == ["model.layers.1.mlp.up_proj"]
    assert "out of memory" in report.failed[0][1]
    assert len(report.results) == 3 * 7 + 2 - 1


def test_keyword_overrides_apply_to_the_options_and_unknown_ones_are_refused(tmp_path):
    """scan(path, opts, **overrides): the keywords replace fields of `opts`, which stays as it was."""
    from safetensors.torch import save_file

    folder = tmp_path / "one"
    folder.mkdir()
    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(14))
    save_file({"model.layers.0.mlp.up_proj.weight": w}, str(folder / "model.safetensors"))
    opts = ScanOptions(out_dir=tmp_path / "from-opts", progress=False, device="auto")
    report = scan(folder, opts, device="cpu", out_dir=tmp_path / "override")
    assert report.device == "cpu"
    assert report.paths.results == tmp_path / "override" / "snr_results_one.json"
    assert report.paths.results.is_file() and not (tmp_path / "from-opts").exists()
    assert opts.out_dir == tmp_path / "from-opts" and opts.device == "auto"
    with pytest.raises(TypeError, match="no_such_option"):
        scan(folder, opts, no_such_option=1)
    assert not (tmp_path / "from-opts").exists()


@pytest.mark.parametrize(
    "dtype, name", [(torch.float8_e4m3fnuz, "F8_E4M3FNUZ"), (torch.float8_e5m2fnuz, "F8_E5M2FNUZ")]
)
def test_fnuz_fp8_tensors_are_read_and_scanned(tmp_path, dtype, name):
    """AMD's FP8 variants (no scale tensor): the SNR of the values the file holds, dequantized."""
    from safetensors.torch import save_file

    from spectrum_stream.source.header import read_header

    folder = tmp_path / "fnuz"
    folder.mkdir()
    gen = torch.Generator().manual_seed(15)
    stored = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(48, 80, generator=gen).to(dtype)
        for i in range(2)
    }
    save_file(stored, str(folder / "model.safetensors"))
    header = read_header(folder / "model.safetensors")
    assert {e.dtype for e in header.tensors.values()} == {name}
    for method in ("exact", "gram"):
        report = scan(
            folder, out_dir=tmp_path / method, progress=False, device="cpu", method=method
        )
        assert not report.failed and len(report.results) == 2
        for tensor, q in stored.items():
            ref = reference_snr(q.to(torch.float64).numpy())
            got = report.results[tensor.removesuffix(".weight")]["snr"]
            assert abs(got - ref) <= 1e-4 * ref, (method, tensor)


@pytest.fixture
def library_logging_as_shipped():
    """The package logger as an API caller finds it: only its NullHandler, propagating (an
    earlier CLI test in this process installs the CLI's handler and stops propagation)."""
    import logging

    logger = logging.getLogger("spectrum_stream")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    for h in list(logger.handlers):
        if not isinstance(h, logging.NullHandler):
            logger.removeHandler(h)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.handlers[:] = saved[0]
    logger.propagate = saved[1]
    logger.setLevel(saved[2])


def nan_checkpoint(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    gen = torch.Generator().manual_seed(16)
    bad = torch.randn(16, 12, generator=gen)
    bad[3, 4] = float("nan")
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": torch.randn(16, 12, generator=gen),
            "model.layers.1.mlp.up_proj.weight": bad,
        },
        str(folder / "model.safetensors"),
    )
    return folder


def test_api_callers_see_warnings_through_logging(tmp_path, caplog, library_logging_as_shipped):
    import logging

    folder = nan_checkpoint(tmp_path / "nan")
    with caplog.at_level(logging.WARNING):
        report = scan(folder, out_dir=tmp_path / "out", progress=False, device="cpu")
    assert [k for k, _ in report.failed] == ["model.layers.1.mlp.up_proj"]
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("spectrum_stream.")
    ]
    assert len(warnings) == 1, caplog.records
    message = warnings[0].getMessage()
    assert "model.layers.1.mlp.up_proj" in message and "NaN or Inf" in message


def test_the_library_itself_prints_nothing(tmp_path, capsys, library_logging_as_shipped):
    """No handler installed by the caller: the warning goes nowhere (the package's NullHandler
    keeps logging's last-resort handler off stderr), and nothing else is printed either."""
    import logging

    assert any(isinstance(h, logging.NullHandler) for h in library_logging_as_shipped.handlers)
    folder = nan_checkpoint(tmp_path / "nan")
    report = scan(folder, out_dir=tmp_path / "out", progress=False, device="cpu")
    assert len(report.failed) == 1
    assert capsys.readouterr() == ("", "")
