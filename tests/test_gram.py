"""--method gram: its accuracy contract against exact on every test checkpoint, its fallback,
its block-streamed path for matrices past the memory budget, and the prefetch thread."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from reference import reference_snr
from spectrum_stream import scan
from spectrum_stream.options import ScanOptions
from spectrum_stream.results.select import select
from spectrum_stream.kernel.gram import gram_stats
from spectrum_stream.kernel.route import GRAM_TOLERANCE, decompose
from spectrum_stream.examples.synthetic import planted_matrix, write_planted_llama

CHECKPOINTS = ["llama_dir", "qwen2_dir", "mixtral_dir", "qwen2_moe_dir", "dbrx_dir", "llama4_dir",
               "gpt_oss_dir", "fused_qwen2_moe_dir", "fused_mixtral_dir", "planted_dir"]


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted") / "planted-llama"
    write_planted_llama(folder, layers=4, hidden=128, intermediate=256, vocab=256)
    return folder


def journal_lines(report):
    return [json.loads(line) for line in report.paths.journal.read_text().splitlines()[1:]]


@pytest.mark.parametrize("fixture", CHECKPOINTS)
def test_gram_holds_its_contract_on_every_test_checkpoint(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    exact = scan(folder, ScanOptions(out_dir=tmp_path / "exact", progress=False)).results
    gram_report = scan(folder, ScanOptions(out_dir=tmp_path / "gram", progress=False, method="gram"))
    gram = gram_report.results
    assert gram.keys() == exact.keys() and len(gram) > 0
    for key in exact:
        assert abs(gram[key]["snr"] - exact[key]["snr"]) <= 1e-4 * abs(exact[key]["snr"]), key
    for percent in (25, 50):
        assert select(gram, percent) == select(exact, percent)
    assert {r["method"] for r in journal_lines(gram_report)} <= {"gram", "exact"}


def test_gram_matches_float64_reference_on_random_shapes():
    gen = torch.Generator().manual_seed(7)
    for shape in [(40, 40), (33, 120), (150, 20), (1, 9)]:
        w = torch.randn(*shape, generator=gen) * 0.1
        (st,), (bound,) = gram_stats(w[None])
        ref = reference_snr(w.numpy())
        assert abs(st.snr - ref) <= 1e-4 * abs(ref), shape
        assert bound <= GRAM_TOLERANCE


def ill_conditioned(m: int = 120, n: int = 200) -> torch.Tensor:
    """Singular values from 1 down to 1e-9: the Gram route cannot see the small ones."""
    gen = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    return (u @ torch.diag(torch.logspace(0, -9, m, dtype=torch.float64)) @ v.T).float()


def test_gram_detects_what_it_cannot_hold_and_falls_back_to_exact():
    w = ill_conditioned()
    (_,), (bound,) = gram_stats(w[None])
    assert bound > GRAM_TOLERANCE
    (r,) = decompose([w], "gram")
    (e,) = decompose([w], "exact")
    assert r.method == "exact" and "gram error bound" in r.note
    assert r.stats == e.stats


def test_fallback_is_written_to_the_journal(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "ill"
    folder.mkdir()
    good = planted_matrix(120, 200, 4, torch.Generator().manual_seed(1))
    save_file({"model.layers.0.mlp.up_proj.weight": ill_conditioned(),
               "model.layers.1.mlp.up_proj.weight": good}, str(folder / "model.safetensors"))
    report = scan(folder, ScanOptions(out_dir=tmp_path / "out", progress=False, method="gram"))
    by_key = {r["key"]: r for r in journal_lines(report)}
    assert by_key["model.layers.0.mlp.up_proj"]["method"] == "exact"
    assert "gram error bound" in by_key["model.layers.0.mlp.up_proj"]["fallback"]
    assert by_key["model.layers.1.mlp.up_proj"]["method"] == "gram"
    assert "fallback" not in by_key["model.layers.1.mlp.up_proj"]


def test_matrices_past_the_budget_are_streamed_in_blocks(planted_dir, tmp_path, monkeypatch):
    """With a budget smaller than any matrix, gram never decodes a whole matrix, same results."""
    scan_mod = sys.modules["spectrum_stream.scan"]  # the package's `scan` attribute is the function
    whole = scan(planted_dir, ScanOptions(out_dir=tmp_path / "a", progress=False, method="gram"))
    decoded = []
    real_decode = scan_mod.decode
    monkeypatch.setattr(scan_mod, "decode", lambda job, *a: decoded.append(job) or real_decode(job, *a))
    streamed = scan(planted_dir, ScanOptions(out_dir=tmp_path / "b", progress=False, method="gram",
                                             batch_bytes=1024))
    assert decoded == [], "a matrix past the budget was read whole"
    assert streamed.results.keys() == whole.results.keys()
    for key, info in whole.results.items():
        assert abs(streamed.results[key]["snr"] - info["snr"]) <= 1e-6 * info["snr"], key


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_prefetch_gives_the_same_results(planted_dir, tmp_path, method):
    runs = [scan(planted_dir, ScanOptions(out_dir=tmp_path / str(p), progress=False, method=method,
                                          prefetch=p)).results for p in (False, True)]
    if method == "exact":
        assert runs[0] == runs[1]
    else:  # two gram workers share OpenBLAS, whose summation order follows its thread use
        assert runs[0].keys() == runs[1].keys()
        for key, info in runs[0].items():
            assert abs(runs[1][key]["snr"] - info["snr"]) <= 1e-12 * abs(info["snr"]), key


def test_gram_reports_bad_matrices_and_goes_on(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "bad"
    folder.mkdir()
    nan = torch.randn(40, 60)
    nan[3, 7] = float("nan")
    save_file({"model.layers.0.mlp.up_proj.weight": nan,
               "model.layers.1.mlp.up_proj.weight": torch.zeros(40, 60),
               "model.layers.2.mlp.up_proj.weight": torch.randn(40, 60)},
              str(folder / "model.safetensors"))
    report = scan(folder, ScanOptions(out_dir=tmp_path / "out", progress=False, method="gram"))
    failed = dict(report.failed)
    assert "NaN" in failed["model.layers.0.mlp.up_proj"]
    assert "all-zero" in failed["model.layers.1.mlp.up_proj"]
    assert list(report.results) == ["model.layers.2.mlp.up_proj"]


def test_svd_driver_is_refused_off_cuda(planted_dir, tmp_path):
    from spectrum_stream import SpectrumError

    with pytest.raises(SpectrumError, match="only for CUDA"):
        scan(planted_dir, ScanOptions(out_dir=tmp_path, progress=False, device="cpu",
                                      svd_driver="gesvdj"))


def test_well_conditioned_matrices_never_fall_back(planted_dir, tmp_path):
    """Falling back costs a whole exact SVD on top: it must stay for matrices that need it."""
    report = scan(planted_dir, ScanOptions(out_dir=tmp_path, progress=False, method="gram"))
    lines = journal_lines(report)
    assert lines and all(r["method"] == "gram" and "fallback" not in r for r in lines)
    square = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(5))
    (_,), (bound,) = gram_stats(square[None])
    assert bound < GRAM_TOLERANCE / 100
