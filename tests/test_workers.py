"""Two matrices at once on a CPU (--workers): same results, journal in plan order, shards released
only once journaled, thread settings restored, and the pool's own ordering promises."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info

from spectrum_stream.driver import scan, scan_checkpoint
from spectrum_stream.errors import SpectrumError
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.kernel.workers import OrderedPool, default_workers
from spectrum_stream.options import ScanOptions
from spectrum_stream.source.checkpoint import open_local
from spectrum_stream.source.shards import LocalSource


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def journal_keys(report) -> list[str]:
    _, records, _ = read_journal(report.paths.journal)
    return list(records)


@pytest.mark.parametrize("fixture", ["llama_dir", "qwen2_moe_dir"])
def test_two_workers_match_one_in_results_and_journal_order(fixture, request, tmp_path):
    """The MoE checkpoint also sends same-shape batches (split experts) through the pool."""
    folder = request.getfixturevalue(fixture)
    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    one = scan(
        folder,
        ScanOptions(out_dir=tmp_path / "1", progress=False, device="cpu", method="gram", workers=1),
    )
    two = scan(
        folder,
        ScanOptions(
            out_dir=tmp_path / "2",
            progress=False,
            device="cpu",
            method="gram",
            workers=2,
            batch_bytes=64 * 1024,
        ),
    )
    assert (torch.get_num_threads(), blas_threads()) == (torch_before, blas_before)
    assert journal_keys(two) == journal_keys(one)
    assert two.results.keys() == one.results.keys() and len(one.results) > 10
    for key, info in one.results.items():
        assert two.results[key]["snr"] == pytest.approx(info["snr"], rel=1e-9), key


def test_a_shard_is_released_only_after_its_modules_are_journaled(llama_dir, tmp_path):
    ckpt, folder = open_local(llama_dir)
    opts = ScanOptions(out_dir=tmp_path, progress=False, device="cpu", method="gram", workers=2)
    journal = tmp_path / "snr_results_tiny-llama.journal.jsonl"
    released = []

    class CheckingSource(LocalSource):
        def release(self, shard: str) -> None:
            _, records, _ = read_journal(journal)
            expected = {s.key for job in jobs for s in job.matrices if job.main.shard == shard}
            assert expected and expected <= records.keys(), shard
            released.append(shard)

    from spectrum_stream.layout.jobs import plan_jobs

    jobs = plan_jobs(ckpt, None, None)
    scan_checkpoint(ckpt, CheckingSource(folder), opts)
    assert len(released) == len({job.main.shard for job in jobs}) > 1


def test_workers_need_a_cpu_and_a_positive_count(llama_dir, tmp_path):
    with pytest.raises(SpectrumError, match="--workers 0"):
        scan(llama_dir, ScanOptions(out_dir=tmp_path, progress=False, device="cpu", workers=0))
    assert default_workers(torch.device("cpu"), "exact") == 1
    assert default_workers(torch.device("cuda"), "gram") == 1
    assert default_workers(torch.device("cpu"), "gram") == min(2, torch.get_num_threads())


def finished(future, timeout: float = 10) -> bool:
    """Wait, at most `timeout` seconds, for a call the pool runs to finish."""
    done, _ = futures.wait([future], timeout=timeout)
    return bool(done)


def interrupt_main_thread_once_it_waits(inside: str, timeout: float = 10) -> threading.Thread:
    """Send SIGINT to the main thread once it blocks in a lock wait (threading's `wait`, as
    Future.result does) somewhere under a call of the function named `inside`, not before: a
    signal landing too early would end the test instead. Gives up after `timeout` seconds (the
    test then fails: no KeyboardInterrupt)."""
    import signal
    import sys

    main = threading.main_thread()

    def waiting_inside() -> bool:
        frame = sys._current_frames().get(main.ident)
        if (
            frame is None
            or frame.f_code.co_name != "wait"
            or frame.f_code.co_filename != threading.__file__
        ):
            return False
        while frame is not None and frame.f_code.co_name != inside:
            frame = frame.f_back
        return frame is not None

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if waiting_inside():
                signal.pthread_kill(main.ident, signal.SIGINT)
                return
            time.sleep(0.001)

    sender = threading.Thread(target=watch)
    sender.start()
    return sender


def test_pool_delivers_in_submit_order_on_the_callers_thread():
    pool = OrderedPool(2)
    first_may_end = threading.Event()
    delivered, threads = [], []

    def slow():
        assert first_may_end.wait(10)
        return "slow"

    def fast():
        first_may_end.set()  # runs while `slow` waits: the two are in flight together
        return "fast"

    def deliver(value):
        delivered.append(value)
        threads.append(threading.current_thread())

    pool.submit(slow, deliver)
    pool.submit(fast, deliver)
    pool.drain()
    pool.close()
    assert delivered == ["slow", "fast"]
    assert threads == [threading.main_thread()] * 2


def test_pool_bounds_what_is_undelivered_and_passes_errors_on():
    pool = OrderedPool(2, depth=3)
    started = []
    gate = threading.Event()

    def work(i):
        started.append(i)
        gate.wait(10)
        return i

    delivered = []
    for i in range(3):
        pool.submit(lambda i=i: work(i), delivered.append)
    assert delivered == [] and len(pool.inflight) == 3
    gate.set()
    pool.submit(lambda: work(3), delivered.append)  # the 4th waits for the oldest's delivery
    assert delivered[0] == 0 and len(pool.inflight) <= 3
    pool.drain()
    assert delivered == [0, 1, 2, 3]

    def boom():
        raise RuntimeError("worker failed")

    pool.submit(boom, delivered.append)
    with pytest.raises(RuntimeError, match="worker failed"):
        pool.drain()
    pool.close()


def test_deliver_finished_stops_at_the_first_still_running():
    pool = OrderedPool(2)
    gate = threading.Event()
    delivered = []
    pool.submit(lambda: 1, delivered.append)
    pool.submit(lambda: gate.wait(10) and 2, delivered.append)
    assert finished(pool.inflight[0][0])
    pool.deliver_finished()
    assert delivered == [1] and len(pool.inflight) == 1
    gate.set()
    pool.drain()
    assert delivered == [1, 2]
    pool.close()


def test_one_worker_runs_inline():
    pool = OrderedPool(1)
    seen = []
    pool.submit(lambda: threading.current_thread(), seen.append)
    assert seen == [threading.main_thread()] and pool.pool is None


def test_cli_takes_workers(llama_dir, tmp_path):
    from click.testing import CliRunner

    from spectrum_stream.cli import main

    r = CliRunner().invoke(
        main,
        [
            "scan",
            str(llama_dir),
            "--out-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--method",
            "gram",
            "--workers",
            "3",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (Path(tmp_path) / "snr_results_tiny-llama.json").exists()
    r = CliRunner().invoke(
        main, ["scan", str(llama_dir), "--out-dir", str(tmp_path), "--workers", "0"]
    )
    assert r.exit_code == 2 and "--workers" in r.stderr


@pytest.mark.parametrize("planted_dir", [1], indirect=True)
def test_an_error_mid_scan_still_journals_what_the_workers_had(planted_dir, tmp_path, monkeypatch):
    """One shard, so nothing settles at a shard's end: the error must wait for the work handed out."""
    from spectrum_stream.scanloop.runner import Runner

    real, calls = Runner.consume, []

    def consume_then_fail(self, job, todo, *rest):
        calls.append(todo[0].key)
        if len(calls) == 6:
            raise OSError("the disk went away")
        return real(self, job, todo, *rest)

    monkeypatch.setattr(Runner, "consume", consume_then_fail)
    with pytest.raises(OSError, match="went away"):
        scan(
            planted_dir,
            ScanOptions(
                out_dir=tmp_path / "out", progress=False, device="cpu", method="gram", workers=2
            ),
        )
    _, records, _ = read_journal(tmp_path / "out" / "snr_results_planted.journal.jsonl")
    assert list(records) == calls[:5]


BUSY_FIRST_MATRIX = """
import sys, threading, time, torch
from spectrum_stream.scanloop.placement import DevicePolicy
real, calls = DevicePolicy.exact_fits, []
main = threading.main_thread()

def say_busy_once_the_main_thread_waits():
    # Ctrl-C must find the caller waiting on the worker's call: a signal landing just before the
    # wait's lock call is only seen once that call ends (a CPython limitation), so wait for it
    end = time.monotonic() + 60
    while time.monotonic() < end:
        frame = sys._current_frames().get(main.ident)
        if frame is not None and frame.f_code.co_name == "wait":
            while frame is not None and frame.f_code.co_name != "_deliver_oldest":
                frame = frame.f_back
            if frame is not None:
                time.sleep(0.05)  # well inside the lock call by now
                print("busy", flush=True)
                return
        time.sleep(0.001)

def busy_first(self, *args):  # the first thing a streamed matrix's worker asks
    calls.append(1)
    if len(calls) == 1:  # torch C++ work in this worker thread, longer than the test waits
        x = torch.randn(600, 600, dtype=torch.float64)
        threading.Thread(target=say_busy_once_the_main_thread_waits, daemon=True).start()
        end = time.monotonic() + 300  # bounded, so that a stray process ends on its own
        while time.monotonic() < end:
            torch.linalg.eigvalsh(x @ x.T)
    return real(self, *args)
DevicePolicy.exact_fits = busy_first
from spectrum_stream.cli import main as cli
cli(sys.argv[1:])
"""


@pytest.mark.parametrize("planted_dir", [1], indirect=True)
def test_ctrl_c_exits_at_once_while_a_worker_is_inside_torch(planted_dir, tmp_path):
    """The interpreter would wait for the worker's call, which outlasts the test (a daemon thread
    instead aborts inside torch at exit): the CLI says how to resume and exits 130 without it."""
    import select
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        BUSY_FIRST_MATRIX,
        "scan",
        str(planted_dir),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--method",
        "gram",
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == "busy\n", "the worker never started"
        proc.send_signal(signal.SIGINT)  # the first matrix is inside torch now
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not end the scan while a worker was busy inside torch")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert stderr.startswith("interrupted: 0 of ") and "terminate called" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1


def test_ctrl_c_while_waiting_keeps_the_oldest_call_and_the_order():
    """Ctrl-C lands while the caller waits on the oldest call: nothing after it is delivered
    until it is, so the journal stays a prefix of the plan."""
    pool = OrderedPool(2)
    gate, delivered = threading.Event(), []
    pool.submit(lambda: gate.wait(10) and "slow", delivered.append)
    pool.submit(lambda: "fast", delivered.append)
    assert finished(pool.inflight[1][0])
    # a real signal, to the main thread, once it waits on the oldest call: it wakes the wait
    sender = interrupt_main_thread_once_it_waits(inside="drain")
    with pytest.raises(KeyboardInterrupt):
        pool.drain()
    sender.join(10)
    pool.deliver_finished()
    assert delivered == [] and len(pool.inflight) == 2
    gate.set()
    pool.drain()
    assert delivered == ["slow", "fast"]
    pool.close()


def test_a_delivery_cut_short_stops_later_deliveries():
    pool = OrderedPool(2)
    delivered = []

    def cut(value):
        raise KeyboardInterrupt

    pool.submit(lambda: 1, cut)
    pool.submit(lambda: 2, delivered.append)
    with pytest.raises(KeyboardInterrupt):
        pool.drain()
    assert finished(pool.inflight[0][0])
    pool.deliver_finished()
    assert delivered == []
    pool.close()


def test_batches_waiting_in_memory_are_bounded_by_the_workers(llama_dir, tmp_path, monkeypatch):
    """Same-shape batches hold float32 matrices: at most one per worker is handed out."""
    from spectrum_stream.scanloop.batcher import Batcher

    most = []
    real = Batcher.flush

    def watching(self):  # each batch handed out: how many are in memory with it
        real(self)
        most.append(len(self.pool.inflight))

    monkeypatch.setattr(Batcher, "flush", watching)
    scan(
        llama_dir,
        ScanOptions(
            out_dir=tmp_path,
            progress=False,
            device="cpu",
            method="exact",
            workers=2,
            batch_bytes=64 * 1024,
        ),
    )
    assert most and max(most) <= 2
