"""The CPU-testable parts of the CUDA path: memory accounting, whole-vs-blocks placement, the QR
route of exact, the driver choice, and gesvda's refusal (tests/test_cuda.py runs the rest on a GPU)."""

from __future__ import annotations

import pytest
import torch

from spectrum_stream import scan
from spectrum_stream.errors import SpectrumError
from spectrum_stream.kernel import memory
from spectrum_stream.kernel.snr import default_driver, exact_singular_values, r_factor
from spectrum_stream.options import ScanOptions

GiB = 1024**3


def test_exact_bytes_counts_every_copy_the_solver_makes():
    m, n = 4096, 1024  # tall: QR route; R is 1024 x 1024; gesvd from k = 512
    need = memory.exact_bytes((m, n), driver="gesvd")
    floats = 4 * m * n
    assert need >= 2 * floats + 2 * 4 * n * n  # input, column-major copy, R and its copy
    # gesvdj's U and V come on top of gesvd's count
    assert memory.exact_bytes((m, n), driver="gesvdj") - need == 4 * (n * n + n * n)
    # a square matrix has no R but a full-height U under gesvdj
    sq = memory.exact_bytes((2048, 2048), driver="gesvdj")
    assert sq >= 3 * 4 * 2048 * 2048
    # a batch copies its inputs once more when stacked
    assert memory.exact_bytes((m, n), batch=2, driver="gesvd") > 2 * need
    # orientation does not matter
    assert memory.exact_bytes((n, m)) == memory.exact_bytes((m, n))


def test_gram_bytes_count_the_float64_gram_matrices():
    m, n = 8192, 8192
    need = memory.gram_bytes((m, n))
    assert need >= 4 * m * n + 4 * 8 * n * n  # input, Gram, stacked copy, eigvalsh's copy+work
    streamed = memory.streamed_gram_bytes((49152, 8192), 128 * 1024**2, raw_itemsize=2)
    assert streamed < memory.gram_bytes((49152, 8192))
    assert streamed >= 3 * 8 * 8192 * 8192 + 128 * 1024**2


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_whole_when_the_route_fits(method):
    p = memory.place((8192, 49152), method, budget=100 * GiB)
    assert p.where == "whole" and 0 < p.need <= 100 * GiB


def test_past_the_cap_gram_streams_and_exact_goes_to_the_cpu():
    shape = (49152, 8192)
    k2 = 8 * 8192 * 8192
    budget = 4 * k2  # room for the Gram matrices and blocks, not for the float32 matrix
    assert memory.whole_bytes(shape, "gram") > budget
    p = memory.place(shape, "gram", budget)
    assert p.where == "stream" and p.need <= budget and 8 * 8192 <= p.block_bytes
    assert memory.place(shape, "exact", budget).where == "cpu"
    # a fused or dequantized tensor cannot stream: the CPU
    assert memory.place(shape, "gram", budget, can_stream=False).where == "cpu"
    # not even the Gram matrix fits: the CPU
    assert memory.place(shape, "gram", k2).where == "cpu"


def test_the_reserve_for_a_prefetched_tensor_counts():
    shape = (8192, 8192)
    need = memory.whole_bytes(shape, "exact")
    assert memory.place(shape, "exact", need).where == "whole"
    assert memory.place(shape, "exact", need, reserve=1).where == "cpu"


def test_device_budget_is_a_cap_under_the_free_memory():
    assert memory.device_budget(None, 100) == 90
    assert memory.device_budget(50, 100) == 50
    assert memory.device_budget(500, 100) == 90


def test_prefetch_reserve_keeps_every_whole_tensor_beside_the_biggest_load():
    tensors = [(10, 5), (60, 50), (30, 20)]  # (whole need, load bytes)
    reserve = memory.prefetch_reserve(tensors, budget=80)
    # (60, 50) cannot sit beside its own load: it leaves the device, and the reserve is 20
    assert reserve == 20
    assert all(need + reserve <= 80 for need, _ in [(10, 5), (30, 20)])
    assert memory.prefetch_reserve([], 80) == 0
    assert memory.prefetch_reserve([(100, 1)], 80) == 0


def _reference(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.double())


@pytest.mark.parametrize("shape", [(1200, 96), (97, 400), (512, 256)])
def test_qr_route_gives_the_singular_values(shape):
    g = torch.Generator().manual_seed(15)
    w = torch.randn(*shape, generator=g) * 0.02
    w += 0.5 * torch.randn(shape[0], 3, generator=g) @ torch.randn(3, shape[1], generator=g)
    via_qr = exact_singular_values(w[None], qr=True)[0]
    plain = torch.linalg.svdvals(w)
    ref = _reference(w)
    assert via_qr.dtype == torch.float32 and via_qr.shape == (min(shape),)
    tol = 1e-5 * float(ref[0])  # backward stable: errors of order eps * ||W||
    assert float((via_qr.double() - ref).abs().max()) <= tol
    assert float((via_qr - plain).abs().max()) <= tol


def test_r_factor_is_square_and_keeps_the_spectrum():
    w = torch.randn(3, 300, 40, generator=torch.Generator().manual_seed(1))
    r = r_factor(w)
    assert r.shape == (3, 40, 40)
    assert torch.allclose(torch.linalg.svdvals(r), torch.linalg.svdvals(w), rtol=1e-4, atol=1e-5)


def test_default_driver_is_gesvd_for_large_k_on_cuda_only():
    assert default_driver("cuda", 8192) == "gesvd"
    assert default_driver("cuda", 64) is None
    assert default_driver("cpu", 8192) is None


def test_gesvda_is_refused_before_anything_is_read(llama_dir, tmp_path):
    with pytest.raises(SpectrumError, match="gesvda.*approximate"):
        scan(llama_dir, ScanOptions(out_dir=tmp_path, progress=False, svd_driver="gesvda"))
    assert not list(tmp_path.rglob("*.json*"))
