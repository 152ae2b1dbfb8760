"""GPU paths (skipped without CUDA; CI has none): the same results as the CPU, exact and gram,
with the prefetch thread and the pinned side-stream copies, and --max-gpu-mem streaming."""

from __future__ import annotations

import pytest
import torch

from spectrum_stream import scan
from spectrum_stream.options import ScanOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("method", ["exact", "gram"])
@pytest.mark.parametrize("prefetch", [False, True])
def test_cuda_matches_cpu(llama_dir, tmp_path, method, prefetch):
    cpu = scan(llama_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu")).results
    gpu = scan(llama_dir, ScanOptions(out_dir=tmp_path / "gpu", progress=False, device="cuda",
                                      method=method, prefetch=prefetch)).results
    assert gpu.keys() == cpu.keys()
    for key, info in cpu.items():
        assert abs(gpu[key]["snr"] - info["snr"]) <= 1e-4 * abs(info["snr"]), key


@pytest.mark.parametrize("driver", ["gesvd", "gesvdj", "gesvda"])
def test_cuda_drivers_agree(qwen2_dir, tmp_path, driver):
    cpu = scan(qwen2_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu")).results
    gpu = scan(qwen2_dir, ScanOptions(out_dir=tmp_path / driver, progress=False, device="cuda",
                                      svd_driver=driver)).results
    for key, info in cpu.items():
        assert abs(gpu[key]["snr"] - info["snr"]) <= 1e-4 * abs(info["snr"]), key


def test_gram_streams_past_max_gpu_mem(llama_dir, tmp_path):
    whole = scan(llama_dir, ScanOptions(out_dir=tmp_path / "a", progress=False, device="cuda",
                                        method="gram")).results
    tiny = scan(llama_dir, ScanOptions(out_dir=tmp_path / "b", progress=False, device="cuda",
                                       method="gram", max_gpu_mem=4096)).results
    for key, info in whole.items():
        assert abs(tiny[key]["snr"] - info["snr"]) <= 1e-6 * abs(info["snr"]), key
