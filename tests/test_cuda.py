"""GPU paths (skipped without CUDA; CI has none): the same results as the CPU, exact and gram,
with the prefetch thread and the pinned side-stream copies; --max-gpu-mem as a cap; cuda:1
touching no other GPU; the prefetch overlapping a decomposition; FP8/MXFP4 decoded on the GPU;
streamed gram never decoding a whole matrix. tests/test_gpu_plan.py and tests/test_staging.py
test the CPU-testable parts of the same code."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import save_file

from spectrum_stream import scan
from spectrum_stream.kernel import memory
from spectrum_stream.options import ScanOptions
from spectrum_stream.read.quant import dequant_fp8_block, dequant_mxfp4

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("method", ["exact", "gram"])
@pytest.mark.parametrize("prefetch", [False, True])
def test_cuda_matches_cpu(llama_dir, tmp_path, method, prefetch):
    cpu = scan(
        llama_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu")
    ).results
    gpu = scan(
        llama_dir,
        ScanOptions(
            out_dir=tmp_path / "gpu",
            progress=False,
            device="cuda",
            method=method,
            prefetch=prefetch,
        ),
    ).results
    assert gpu.keys() == cpu.keys()
    for key, info in cpu.items():
        assert abs(gpu[key]["snr"] - info["snr"]) <= 1e-4 * abs(info["snr"]), key


@pytest.mark.parametrize("driver", ["gesvd", "gesvdj"])
def test_cuda_drivers_agree(qwen2_dir, tmp_path, driver):
    cpu = scan(
        qwen2_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu")
    ).results
    gpu = scan(
        qwen2_dir,
        ScanOptions(out_dir=tmp_path / driver, progress=False, device="cuda", svd_driver=driver),
    ).results
    for key, info in cpu.items():
        assert abs(gpu[key]["snr"] - info["snr"]) <= 1e-4 * abs(info["snr"]), key


def test_gram_streams_past_max_gpu_mem(llama_dir, tmp_path):
    whole = scan(
        llama_dir, ScanOptions(out_dir=tmp_path / "a", progress=False, device="cuda", method="gram")
    ).results
    tiny = scan(
        llama_dir,
        ScanOptions(
            out_dir=tmp_path / "b", progress=False, device="cuda", method="gram", max_gpu_mem=4096
        ),
    ).results
    for key, info in whole.items():
        assert abs(tiny[key]["snr"] - info["snr"]) <= 1e-6 * abs(info["snr"]), key


def _close(a: dict, b: dict, rel: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for key, info in b.items():
        assert abs(a[key]["snr"] - info["snr"]) <= rel * abs(info["snr"]), key


@pytest.fixture
def tall_dir(tmp_path):
    """Shapes that take the QR route and a default gesvd driver (k >= 512), a few MB."""
    g = torch.Generator().manual_seed(15)
    tensors = {
        "model.layers.0.mlp.down_proj.weight": torch.randn(640, 2048, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(2048, 640, generator=g),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(640, 640, generator=g),
    }
    folder = tmp_path / "tall"
    folder.mkdir()
    save_file(
        {k: (v * 0.02).to(torch.bfloat16) for k, v in tensors.items()},
        str(folder / "model.safetensors"),
    )
    return folder


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_tall_matrices_match_the_cpu(tall_dir, tmp_path, method):
    cpu = scan(tall_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu"))
    gpu = scan(
        tall_dir,
        ScanOptions(out_dir=tmp_path / "gpu", progress=False, device="cuda", method=method),
    )
    _close(gpu.results, cpu.results)


@pytest.mark.parametrize("method", ["exact", "gram"])
@pytest.mark.parametrize("prefetch", [False, True])
def test_max_gpu_mem_is_a_cap(tall_dir, tmp_path, method, prefetch):
    cap = 12 * 1024**2  # under any whole 2048x640 route: streamed (gram) or on the CPU (exact)
    assert memory.whole_bytes((2048, 640), method) > cap
    cpu = scan(tall_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu"))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    gpu = scan(
        tall_dir,
        ScanOptions(
            out_dir=tmp_path / "gpu",
            progress=False,
            device="cuda",
            method=method,
            max_gpu_mem=cap,
            prefetch=prefetch,
        ),
    )
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= cap
    _close(gpu.results, cpu.results)


def test_streamed_gram_really_streams_on_the_gpu(tall_dir, tmp_path, scan_with):
    from spectrum_stream.read.decode import decode

    cap = 12 * 1024**2
    cpu = scan(tall_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu"))
    decoded = []
    gpu = scan_with(
        tall_dir,
        ScanOptions(
            out_dir=tmp_path / "gpu",
            progress=False,
            device="cuda",
            method="gram",
            max_gpu_mem=cap,
            prefetch=False,
        ),
        decode=lambda job, *a: decoded.append(job) or decode(job, *a),
    )
    streamed = [
        s for s in ((640, 2048), (2048, 640)) if memory.place(s, "gram", cap).where == "stream"
    ]
    assert streamed, "the cap should leave a matrix to stream"
    assert not [j for j in decoded if tuple(j.matrices[0].shape) in streamed]
    _close(gpu.results, cpu.results)


def test_prefetch_overlaps_a_decomposition(tall_dir, tmp_path, scan_with):
    """The second tensor is read while the first is being decomposed (waits have deadlines:
    without overlap this fails after 60 s instead of hanging)."""
    from spectrum_stream.scanloop import STEPS

    in_svd, read_during = threading.Event(), threading.Event()
    real_decode, real_each = STEPS.decode, STEPS.decompose_each
    loads = []

    def decode(job, *a):
        loads.append(job)
        if len(loads) == 2 and in_svd.wait(60):
            read_during.set()
        return real_decode(job, *a)

    def decompose_each(*a, **k):
        in_svd.set()
        read_during.wait(60)
        in_svd.clear()
        return real_each(*a, **k)

    opts = ScanOptions(out_dir=tmp_path, progress=False, device="cuda", prefetch=True)
    scan_with(tall_dir, opts, decode=decode, decompose_each=decompose_each)
    assert read_during.is_set()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_1_touches_no_other_gpu(tall_dir, tmp_path):
    code = (
        "import sys, torch; from spectrum_stream import scan; "
        "from spectrum_stream.options import ScanOptions; "
        f"scan({str(tall_dir)!r}, ScanOptions(out_dir={str(tmp_path)!r}, progress=False, "
        "device='cuda:1', method=sys.argv[1], prefetch=True)); "
        "print([torch._C._cuda_hasPrimaryContext(i) for i in range(torch.cuda.device_count())])"
    )
    for method in ("exact", "gram"):
        out = (
            subprocess.run(
                [sys.executable, "-c", code, method],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        contexts = eval(out)  # a list of booleans printed by the child
        assert contexts[1] and not contexts[0] and not any(contexts[2:]), (method, contexts)


def test_fp8_and_mxfp4_decode_on_the_gpu_as_on_the_cpu():
    from test_quant import quantize_fp8

    g = torch.Generator().manual_seed(8)
    q, s = quantize_fp8(torch.randn(300, 260, generator=g))
    cpu = dequant_fp8_block(q, s)
    gpu = dequant_fp8_block(q.cuda(), s.cuda())
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    blocks = torch.randint(0, 256, (2, 64, 3, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, (2, 64, 3), dtype=torch.uint8, generator=g)
    assert torch.equal(
        dequant_mxfp4(blocks.cuda(), scales.cuda()).cpu(), dequant_mxfp4(blocks, scales)
    )


def test_gpt_oss_mxfp4_scan_on_the_gpu(gpt_oss_dir, tmp_path):
    cpu = scan(gpt_oss_dir, ScanOptions(out_dir=tmp_path / "cpu", progress=False, device="cpu"))
    gpu = scan(gpt_oss_dir, ScanOptions(out_dir=tmp_path / "gpu", progress=False, device="cuda"))
    _close(gpu.results, cpu.results)
