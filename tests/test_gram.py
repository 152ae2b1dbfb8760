"""--method gram: its accuracy contract against exact on every test checkpoint, its fallback,
its block-streamed path for matrices past the memory budget, and the prefetch thread."""

from __future__ import annotations

import json

import pytest
import torch
from reference import all_matrices, reference_snr

from spectrum_stream import scan
from spectrum_stream.examples.synthetic import planted_matrix
from spectrum_stream.kernel.gram import gram_stats
from spectrum_stream.kernel.route import GRAM_TOLERANCE, decompose
from spectrum_stream.options import ScanOptions
from spectrum_stream.results.select import select

CHECKPOINTS = [
    "llama_dir",
    "qwen2_dir",
    "mixtral_dir",
    "qwen2_moe_dir",
    "dbrx_dir",
    "llama4_dir",
    "gpt_oss_dir",
    "fused_qwen2_moe_dir",
    "fused_mixtral_dir",
    "planted_dir",
]


def journal_lines(report):
    return [json.loads(line) for line in report.paths.journal.read_text().splitlines()[1:]]


@pytest.mark.parametrize("fixture", CHECKPOINTS)
def test_gram_holds_its_contract_on_every_test_checkpoint(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    exact = scan(folder, ScanOptions(out_dir=tmp_path / "exact", progress=False)).results
    gram_report = scan(
        folder, ScanOptions(out_dir=tmp_path / "gram", progress=False, method="gram")
    )
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
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": ill_conditioned(),
            "model.layers.1.mlp.up_proj.weight": good,
        },
        str(folder / "model.safetensors"),
    )
    report = scan(folder, ScanOptions(out_dir=tmp_path / "out", progress=False, method="gram"))
    by_key = {r["key"]: r for r in journal_lines(report)}
    assert by_key["model.layers.0.mlp.up_proj"]["method"] == "exact"
    assert "gram error bound" in by_key["model.layers.0.mlp.up_proj"]["fallback"]
    assert by_key["model.layers.1.mlp.up_proj"]["method"] == "gram"
    assert "fallback" not in by_key["model.layers.1.mlp.up_proj"]


def routes_taken() -> tuple[dict[str, list[str]], dict]:
    """Steps that record the routes taken: tensors decoded whole (`decode`) and matrices summed
    from blocks read straight from the file (`streamed_gram`), by tensor name."""
    from spectrum_stream.scanloop import STEPS

    taken: dict[str, list[str]] = {"whole": [], "streamed": []}

    def decode(job, *args):
        taken["whole"].append(job.main.name)
        return STEPS.decode(job, *args)

    def streamed_gram(path, entry, *args):
        taken["streamed"].append(entry.name)
        return STEPS.streamed_gram(path, entry, *args)

    return taken, {"decode": decode, "streamed_gram": streamed_gram}


def reference_snrs(folder) -> dict[str, float]:
    return {key: reference_snr(w.numpy()) for key, w in all_matrices(folder).items()}


def test_whole_and_streamed_gram_routes_agree(planted_dir, tmp_path, monkeypatch, scan_with):
    """The same checkpoint through both gram routes, each one checked to be the route taken:
    whole (a float32 copy, as on a GPU for a matrix within the budget, forced here) and streamed
    (float64 blocks from the file: always on CPU, here with a budget smaller than any matrix)."""
    from spectrum_stream.kernel.memory import Placement
    from spectrum_stream.scanloop.placement import DevicePolicy

    taken, steps = routes_taken()
    with monkeypatch.context() as m:
        m.setattr(DevicePolicy, "place", lambda self, job: Placement("whole", 0))
        whole = scan_with(
            planted_dir,
            ScanOptions(out_dir=tmp_path / "a", progress=False, device="cpu", method="gram"),
            **steps,
        )
    tensors = [name + ".weight" for name in whole.results]
    assert sorted(taken["whole"]) == sorted(tensors) and taken["streamed"] == []
    taken["whole"].clear()

    streamed = scan_with(
        planted_dir,
        ScanOptions(
            out_dir=tmp_path / "b", progress=False, device="cpu", method="gram", batch_bytes=1024
        ),
        **steps,
    )
    assert taken["whole"] == [], "a matrix past the budget was read whole"
    assert sorted(taken["streamed"]) == sorted(tensors)

    assert {r["method"] for r in journal_lines(whole) + journal_lines(streamed)} == {"gram"}
    assert streamed.results.keys() == whole.results.keys() and len(whole.results) == 44
    reference = reference_snrs(planted_dir)
    for key, info in whole.results.items():
        # both are float64 sums of the same float64 products, only in another order
        assert abs(streamed.results[key]["snr"] - info["snr"]) <= 1e-6 * info["snr"], key
        for got in (info["snr"], streamed.results[key]["snr"]):
            assert abs(got - reference[key]) <= 1e-4 * reference[key], key


def test_which_plain_matrices_the_runner_streams():
    """On a CPU the gram route reads every plain matrix in blocks; never for --method exact,
    quantized or empty matrices. (On a GPU device memory decides: tests/test_gpu_plan.py.)"""
    from types import SimpleNamespace

    from spectrum_stream.scanloop.placement import DevicePolicy

    def streams(method: str, shape, decode: str = "plain") -> bool:
        policy = DevicePolicy(torch.device("cpu"), ScanOptions(method=method, progress=False))
        job = SimpleNamespace(decode=decode, matrices=[SimpleNamespace(shape=shape, index=None)])
        return policy.place(job).where == "stream"

    assert streams("gram", (100, 80))
    assert not streams("exact", (100, 80))
    assert not streams("gram", (100, 80), decode="fp8_block")
    assert not streams("gram", (0, 80))


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_prefetch_gives_the_same_results(planted_dir, tmp_path, method):
    """Identical floats: one worker, so each matrix is decomposed on the same thread either way
    (with two, the last bits of the gram route can move with the thread a matrix ran on)."""
    four_layers = r"layers\.[0-3]\.|embed|lm_head"
    runs = [
        scan(
            planted_dir,
            ScanOptions(
                out_dir=tmp_path / str(p),
                progress=False,
                method=method,
                prefetch=p,
                workers=1,
                include=four_layers,
            ),
        ).results
        for p in (False, True)
    ]
    assert runs[0] == runs[1] and len(runs[0]) == 4 * 7 + 2


def test_gram_reports_bad_matrices_and_goes_on(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "bad"
    folder.mkdir()
    gen = torch.Generator().manual_seed(11)
    nan = torch.randn(40, 60, generator=gen)
    nan[3, 7] = float("nan")
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": nan,
            "model.layers.1.mlp.up_proj.weight": torch.zeros(40, 60),
            "model.layers.2.mlp.up_proj.weight": torch.randn(40, 60, generator=gen),
        },
        str(folder / "model.safetensors"),
    )
    report = scan(folder, ScanOptions(out_dir=tmp_path / "out", progress=False, method="gram"))
    failed = dict(report.failed)
    assert "NaN" in failed["model.layers.0.mlp.up_proj"]
    assert "all-zero" in failed["model.layers.1.mlp.up_proj"]
    assert list(report.results) == ["model.layers.2.mlp.up_proj"]


def test_svd_driver_is_refused_off_cuda(planted_dir, tmp_path):
    from spectrum_stream import SpectrumError

    with pytest.raises(SpectrumError, match="only for CUDA"):
        scan(
            planted_dir,
            ScanOptions(out_dir=tmp_path, progress=False, device="cpu", svd_driver="gesvdj"),
        )


def test_well_conditioned_matrices_never_fall_back(planted_dir, tmp_path):
    """Falling back costs a whole exact SVD on top: it must stay for matrices that need it."""
    report = scan(planted_dir, ScanOptions(out_dir=tmp_path, progress=False, method="gram"))
    lines = journal_lines(report)
    assert lines and all(r["method"] == "gram" and "fallback" not in r for r in lines)
    square = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(5))
    (_,), (bound,) = gram_stats(square[None])
    assert bound < GRAM_TOLERANCE / 100
