"""The CPU-testable parts of the GPU copy path: the bounded staging pool (pin=False), blocks read
ahead on a thread, every CUDA-touching thread binding the scan's device (torch.cuda mocked), the
out-of-memory fallback, and the float64 warning."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from spectrum_stream.kernel import calibrate, route
from spectrum_stream.options import ScanOptions
from spectrum_stream.read import device as device_mod
from spectrum_stream.read.prefetch import prefetched
from spectrum_stream.read.staging import StagingPool, copy_through, read_ahead

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.uint8])
def test_copy_through_is_exact_and_uses_a_fixed_number_of_buffers(dtype):
    g = torch.Generator().manual_seed(3)
    raw = (torch.randn(37, 53, generator=g) * 100).to(dtype)
    pool = StagingPool(buffer_bytes=64, count=2, pin=False)  # many pieces per tensor
    out = copy_through(raw, CPU, pool)
    assert out.dtype == raw.dtype and out.shape == raw.shape and torch.equal(out, raw)
    assert out.data_ptr() != raw.data_ptr()
    assert pool.allocated <= 2
    copy_through(raw.mT, CPU, pool)  # a non-contiguous view is copied too
    assert pool.allocated <= 2


def test_two_threads_share_a_pool_of_two_without_deadlock():
    pool = StagingPool(buffer_bytes=32, count=2, pin=False)
    tensors = [torch.arange(i, i + 1000, dtype=torch.int32) for i in range(8)]
    with ThreadPoolExecutor(2) as ex:
        futures = [ex.submit(copy_through, t, CPU, pool) for t in tensors]
        outs = [f.result(timeout=60) for f in futures]
    assert all(torch.equal(a, b) for a, b in zip(outs, tensors))
    assert pool.allocated <= 2


def test_empty_tensor_copies():
    out = copy_through(torch.empty(0, 5), CPU, StagingPool(16, 1, pin=False))
    assert out.shape == (0, 5)


def test_read_ahead_keeps_order_stays_bounded_and_raises_in_order():
    produced = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    it = read_ahead(items(), depth=1)
    first = next(it)
    assert first == 0
    # the producer is at most depth + 1 items ahead (one queued, one being made)
    assert len(produced) <= 3
    assert [first, *it] == list(range(6))

    def failing():
        yield 1
        raise ValueError("bad block")

    got = []
    with pytest.raises(ValueError, match="bad block"):
        for x in read_ahead(failing()):
            got.append(x)
    assert got == [1]


def test_read_ahead_stops_its_thread_when_closed_early():
    it = read_ahead(iter(range(10**6)), depth=1)
    assert next(it) == 0
    it.close()
    assert not any(t.name == "spectrum-blocks" and t.is_alive() for t in threading.enumerate())


def test_read_ahead_runs_init_on_its_thread():
    seen = []
    list(read_ahead(iter([1, 2]), init=lambda: seen.append(threading.current_thread().name)))
    assert seen == ["spectrum-blocks"]


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.set_device/current_device recorded per thread (no GPU needed)."""
    calls: list[tuple[str, object]] = []

    @contextlib.contextmanager
    def device(d):
        calls.append((threading.current_thread().name, d))
        yield
        calls.append((threading.current_thread().name, "restored"))

    monkeypatch.setattr(
        torch.cuda, "set_device", lambda d: calls.append((threading.current_thread().name, d))
    )
    monkeypatch.setattr(torch.cuda, "device", device)
    return calls


def test_bind_thread_and_on_device_set_the_cuda_device(fake_cuda):
    dev = torch.device("cuda:1")
    with device_mod.on_device(dev):
        pass
    device_mod.bind_thread(dev)
    device_mod.bind_thread(CPU)  # no CUDA call for the CPU
    with device_mod.on_device(CPU):
        pass
    assert [d for _, d in fake_cuda] == [dev, "restored", dev]  # enter, restore, bind


def test_the_prefetch_thread_binds_before_it_reads(fake_cuda):
    dev = torch.device("cuda:1")
    got = list(
        prefetched([1, 2, 3], lambda x: x * 2, True, init=lambda: device_mod.bind_thread(dev))
    )
    assert [g[1] for g in got] == [2, 4, 6]
    assert fake_cuda and all(name.startswith("spectrum-read") and d == dev for name, d in fake_cuda)


def test_scan_binds_the_read_thread_to_its_device(llama_dir, tmp_path, scan_with):
    bound = []
    scan_with(
        llama_dir,
        ScanOptions(out_dir=tmp_path, progress=False, device="cpu", prefetch=True),
        bind_thread=lambda d: bound.append((threading.current_thread().name, d)),
    )
    assert bound and all(n.startswith("spectrum-read") and d == CPU for n, d in bound)


def test_out_of_memory_on_one_matrix_goes_to_the_cpu_once(monkeypatch):
    real = route.decompose
    calls = []

    def oom_first(mats, method, driver=None):
        calls.append(len(mats))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(mats, method, driver)

    monkeypatch.setattr(route, "decompose", oom_first)
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    (d,) = route.decompose_each([w], "exact")
    assert calls == [1, 1]  # never retried at the same size on the device: straight to the CPU
    assert d.note == route.ON_CPU_NOTE and d.method == "exact"
    assert abs(d.stats.snr - real([w], "exact")[0].stats.snr) <= 1e-6 * abs(d.stats.snr)


def test_a_batch_out_of_memory_splits_then_each_falls_back(monkeypatch):
    real = route.decompose
    calls = []

    def oom_on_batches(mats, method, driver=None):
        calls.append(len(mats))
        if len(mats) > 1:
            raise torch.OutOfMemoryError("simulated")
        return real(mats, method, driver)

    monkeypatch.setattr(route, "decompose", oom_on_batches)
    g = torch.Generator().manual_seed(1)
    out = route.decompose_each([torch.randn(20, 10, generator=g) for _ in range(3)], "gram")
    assert calls == [3, 1, 1, 1] and all(d.note is None for d in out)


def test_float64_warning_only_where_float64_is_weak():
    assert calibrate.float64_warning(1.1, "NVIDIA H200") is None
    text = calibrate.float64_warning(64, "NVIDIA GeForce RTX 4090")
    assert "64x" in text and "--method exact" in text and "RTX 4090" in text
    ratio = calibrate.float64_ratio(CPU, size=64)
    assert ratio > 0 and calibrate.float64_ratio(CPU, size=64) == ratio  # measured once
