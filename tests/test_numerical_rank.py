"""The numerical floor (docs/spec.md, "The numerical floor"): every module's numerical rank, checked
against a float64 reference on planted rank-deficient matrices; full-rank ones never flagged; the
flag reaches the journal, the spectra file, the scan summary, `select` and `freeze()`.

"Real-weight" matrices here are the tiny checkpoints transformers writes for the other tests
(tests/conftest.py, tests/moe_models.py): randomly initialised, full rank. SmolLM2's trained
weights are not available offline.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from reference import all_matrices
from safetensors.torch import save_file

from spectrum_stream import scan
from spectrum_stream.cli.main import main
from spectrum_stream.cli.summary import format_summary
from spectrum_stream.kernel.route import decompose
from spectrum_stream.options import ScanOptions
from spectrum_stream.results.rank_floor import read_numerical_ranks
from spectrum_stream.trainers.freeze import freeze

F32_EPS = float(np.finfo(np.float32).eps)
M, N = 72, 40


def reference_rank(w: torch.Tensor) -> int:
    """numpy's matrix_rank rule in float64, at float32's eps: values above max(m, n) eps s0."""
    x = w.double().numpy()
    s = np.linalg.svd(x, compute_uv=False)
    return int((s > max(x.shape) * F32_EPS * s[0]).sum())


def planted(kind: str, seed: int = 0) -> tuple[torch.Tensor, int]:
    """A [72, 40] float32 matrix of the planted kind, and its rank by construction."""
    w = torch.randn(M, N, generator=torch.Generator().manual_seed(seed))
    if kind == "zero_columns":
        w[:, [3, 17, 30]] = 0
        return w, N - 3
    if kind == "duplicate_columns":
        w[:, 10] = w[:, 2]
        w[:, 20] = w[:, 2]
        w[:, 33] = w[:, 5]
        return w, N - 3
    if kind == "zero_block":  # a block of rows never trained from its zero initialisation
        w[24:, :] = 0
        return w, 24
    if kind == "full_rank":
        return w, N
    raise ValueError(kind)


PLANTED = ("zero_columns", "duplicate_columns", "zero_block")


@pytest.mark.parametrize("kind", PLANTED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["exact", "gram"])
@pytest.mark.parametrize("wide", [False, True])
def test_planted_rank_deficiency_is_counted_as_float64_does(kind, dtype, method, wide):
    w, built = planted(kind)
    stored = w.to(dtype).float()  # what a scan decodes from the stored tensor
    if wide:
        stored = stored.T.contiguous()
    ref = reference_rank(stored)
    assert ref == built  # the reference sees the planted deficiency exactly
    (d,) = decompose([stored], method)
    assert abs(d.stats.numerical_rank - ref) <= 1
    assert d.stats.numerical_rank < min(stored.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["exact", "gram"])
def test_full_rank_random_matrices_are_never_flagged(dtype, method):
    for seed, (m, n) in enumerate([(72, 40), (40, 72), (64, 64), (200, 24), (1, 30)]):
        w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed)).to(dtype).float()
        (d,) = decompose([w], method)
        assert d.stats.numerical_rank == min(m, n) == reference_rank(w)


def test_the_gram_rule_never_counts_a_value_within_its_error_of_zero():
    """A rank-1 matrix: every other eigenvalue of its Gram matrix is rounding error, and with the
    error bound taken off none of them may count, whatever sign the rounding gave it."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(M, 1, generator=g) @ torch.randn(1, N, generator=g)
    assert reference_rank(w) == 1
    (d,) = decompose([w], "gram")
    assert d.stats.numerical_rank == 1


def test_the_floor_matches_numpy_matrix_rank_at_float32_eps():
    """Our reference is numpy's own rule, with float32's eps (the decomposition's precision)."""
    for kind in (*PLANTED, "full_rank"):
        w, _ = planted(kind, seed=5)
        s = np.linalg.svd(w.double().numpy(), compute_uv=False)
        tol = max(w.shape) * F32_EPS * s[0]
        assert reference_rank(w) == np.linalg.matrix_rank(w.double().numpy(), tol=tol)


# -- through a scan: journal, spectra file, summary, select, freeze ---------------------------


def planted_checkpoint(folder) -> dict[str, torch.Tensor]:
    """Layer 0 holds the planted matrices (bf16 and fp32), layer 1 full-rank ones."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, kind in enumerate(PLANTED):
        w, _ = planted(kind, seed=i)
        tensors[f"model.layers.0.mlp.p{i}_bf16.weight"] = w.to(torch.bfloat16)
        tensors[f"model.layers.0.mlp.p{i}_f32.weight"] = w
        full, _ = planted("full_rank", seed=10 + i)
        tensors[f"model.layers.1.mlp.p{i}_bf16.weight"] = full.to(torch.bfloat16)
        tensors[f"model.layers.1.mlp.p{i}_f32.weight"] = full
    save_file(tensors, str(folder / "model.safetensors"))
    return {k.removesuffix(".weight"): v.float() for k, v in tensors.items()}


def journal_records(report) -> list[dict]:
    return [json.loads(line) for line in report.paths.journal.read_text().splitlines()[1:]]


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_a_scan_journals_the_numerical_rank_and_flags_what_is_deficient(tmp_path, method):
    mats = planted_checkpoint(tmp_path / "ckpt")
    report = scan(
        tmp_path / "ckpt", ScanOptions(out_dir=tmp_path / "out", progress=False, method=method)
    )
    records = {r["key"]: r for r in journal_records(report)}
    assert set(records) == set(mats)
    for key, w in mats.items():
        ref = reference_rank(w)
        assert abs(records[key]["numerical_rank"] - ref) <= 1, key
        assert (records[key]["numerical_rank"] < min(w.shape)) == key.startswith("model.layers.0.")
    # results files keep axolotl's format; the ranks travel in the spectra file's metadata
    results = json.loads(report.paths.results.read_text())
    assert all(set(v) == {"snr", "type"} for v in results.values())
    ranks = read_numerical_ranks(report.paths.spectra)
    assert ranks == {k: (r["numerical_rank"], min(r["shape"])) for k, r in records.items()}
    # the summary counts them
    summary = format_summary(report)
    assert "Warning: 6 scanned module(s) are numerically rank deficient" in summary
    # select warns when it selects one, and --drop-rank-deficient leaves them out
    args = ["select", str(report.paths.results), "--top-percent", "100", "--format", "json"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "warning: 6 selected module(s) are numerically rank deficient" in out.stderr
    assert sorted(json.loads(out.stdout)) == sorted(mats)  # the selection keeps the original rule
    dropped = CliRunner().invoke(main, [*args, "--drop-rank-deficient"])
    assert dropped.exit_code == 0, dropped.output
    assert "warning" not in dropped.stderr
    assert sorted(json.loads(dropped.stdout)) == sorted(k for k in mats if ".layers.1." in k)
    # the report marks them at the top, beside the selection
    page_dir = tmp_path / "page"
    shown = CliRunner().invoke(
        main, ["report", str(report.paths.results), "-o", str(page_dir), "--top-percent", "100"]
    )
    assert shown.exit_code == 0, shown.output
    html = (page_dir / "index.html").read_text()
    assert "<dt>rank deficient</dt>" in html
    assert "6 module(s), 6 of them selected" in html
    # freeze() warns the same way
    # (on its own logger: the CLI's handler, once installed, stops propagation to caplog's)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("spectrum_stream.trainers.freeze")
    logger.addHandler(handler)
    try:
        freeze(torch.nn.Module(), report.paths.results, top_percent=100)
        assert any("6 selected module(s)" in r.getMessage() for r in seen)
        seen.clear()
        freeze(torch.nn.Module(), report.paths.results, top_percent=100, drop_rank_deficient=True)
        assert not any("rank deficient" in r.getMessage() for r in seen)
    finally:
        logger.removeHandler(handler)


def test_the_planted_llama_is_flagged_exactly_where_float64_says(planted_dir, tmp_path):
    """Its square matrices are random: one may have a smallest value under the floor (the rule
    is numpy's; docs/spec.md says when that happens). Whatever the reference says, we say."""
    report = scan(planted_dir, ScanOptions(out_dir=tmp_path / "out", progress=False))
    mats = all_matrices(planted_dir)
    records = journal_records(report)
    deficient = 0
    for r in records:
        ref = reference_rank(mats[r["key"]])
        assert abs(r["numerical_rank"] - ref) <= 1, r["key"]
        deficient += r["numerical_rank"] < min(r["shape"])
    summary = format_summary(report)
    if deficient:
        assert f"Warning: {deficient} scanned module(s) are numerically rank deficient" in summary
    else:
        assert "rank deficient" not in summary
    rectangular = [r for r in records if r["shape"][0] != r["shape"][1]]
    assert rectangular and all(r["numerical_rank"] == min(r["shape"]) for r in rectangular)


@pytest.mark.parametrize("fixture", ["llama_dir", "qwen2_dir", "mixtral_dir", "dbrx_dir"])
def test_real_layout_weights_are_never_flagged(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    for method in ("exact", "gram"):
        report = scan(folder, ScanOptions(out_dir=tmp_path / method, progress=False, method=method))
        records = journal_records(report)
        assert records and all(r["numerical_rank"] == min(r["shape"]) for r in records)


def test_a_damaged_rank_table_is_a_warning_not_a_crash(tmp_path):
    mats = planted_checkpoint(tmp_path / "ckpt")
    report = scan(tmp_path / "ckpt", ScanOptions(out_dir=tmp_path / "out", progress=False))
    assert len(mats) == len(report.results)
    report.paths.spectra.write_bytes(b"\xff" * 64)  # garbage: header length far past the file
    out = CliRunner().invoke(main, ["select", str(report.paths.results)])
    assert out.exit_code == 0, out.output
    assert "Traceback" not in out.output
    assert "numerical ranks unknown" in out.stderr and "spectra.safetensors" in out.stderr


def test_dropping_rank_deficient_modules_keeps_the_head_and_embeddings(tmp_path):
    """They are ranked against nothing and trained by every selection: dropping deficient
    modules "from the ranking" must not drop them (as it did: their pattern vanished)."""
    from spectrum_stream.results.spectra import write_spectra

    keys = {
        "lm_head": "lm_head",
        "model.layers.0.mlp.up_proj": "mlp.up_proj",
        "model.layers.1.mlp.up_proj": "mlp.up_proj",
        "model.layers.2.mlp.up_proj": "mlp.up_proj",
    }
    results = tmp_path / "snr_results_m.json"
    results.write_text(
        json.dumps({k: {"snr": 1.0 + i, "type": t} for i, (k, t) in enumerate(keys.items())})
    )
    values = {k: np.array([3.0, 2.0, 1.0], dtype=np.float32) for k in keys}
    ranks = {"lm_head": (2, 3), "model.layers.2.mlp.up_proj": (2, 3)}  # the top up_proj too
    write_spectra(
        tmp_path / "snr_results_m_spectra.safetensors", values, {k: (3, 4) for k in keys}, ranks
    )
    args = ["select", str(results), "--top-percent", "50", "--format", "json"]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout) == ["^lm_head.weight$", "model.layers.2.mlp.up_proj"]
    dropped = CliRunner().invoke(main, [*args, "--drop-rank-deficient"])
    assert dropped.exit_code == 0, dropped.output
    assert json.loads(dropped.stdout) == ["^lm_head.weight$", "model.layers.1.mlp.up_proj"]
