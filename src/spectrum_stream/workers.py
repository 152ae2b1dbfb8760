"""Decomposing two matrices at once on a CPU, each with its share of the cores.

The gram route's symmetric eigensolver spends half its time in memory-bound steps that keep
barely more than one core busy at k ~ 1024, so two matrices side by side, each with half the
BLAS threads, finish sooner than one after the other (bench/RESULTS.md). Work is delivered back
in the order it was submitted, on the caller's thread, so the journal reads as it always did.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from threadpoolctl import threadpool_limits

T = TypeVar("T")
THREAD_NAME = "spectrum-decompose"


def default_workers(device: torch.device, method: str) -> int:
    """2 for the gram route on a CPU with 2+ threads, else 1 (exact measured slower with two)."""
    return 2 if device.type == "cpu" and method == "gram" and torch.get_num_threads() >= 2 else 1


@contextmanager
def threads_per_worker(workers: int) -> Iterator[None]:
    """Split torch's and the BLAS libraries' threads between `workers`; restored on exit.

    The settings are process-wide: other torch work in the same process meanwhile gets them too.
    """
    if workers <= 1:
        yield
        return
    total = torch.get_num_threads()
    share = max(1, total // workers)
    torch.set_num_threads(share)
    try:
        with threadpool_limits(limits=share, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(total)


class _Slot:
    """One submitted call's outcome, filled in by a worker thread."""

    def __init__(self, work: Callable[[], object]):
        self.work = work
        self.finished = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.work()
        except BaseException as exc:  # handed to the caller's thread, raised there
            self.error = exc
        finally:
            self.work = None  # let go of the matrices the call held
            self.finished.set()

    def done(self) -> bool:
        return self.finished.is_set()

    def result(self) -> object:
        self.finished.wait()
        if self.error is not None:
            raise self.error
        return self.value


class OrderedPool:
    """Runs up to `workers` calls at once; each result goes to its `deliver` in submit order.

    Up to `depth` calls may be submitted and not yet delivered, so a worker that finished a short
    call starts the next one while a long one ahead of it still runs. With one worker a call runs
    at once on the caller's thread, exactly as without a pool. `deliver` always runs on the
    caller's thread (the journal and the report are not shared between threads), and what is
    delivered is always a prefix of what was submitted, even after Ctrl-C.
    """

    def __init__(self, workers: int, depth: int | None = None):
        self.workers = workers
        self.depth = depth or 2 * workers
        self.inflight: deque[tuple[_Slot, Callable]] = deque()
        self.queue: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.broken = False  # a delivery was cut short: deliver nothing after it

    def _serve(self) -> None:
        while (slot := self.queue.get()) is not None:
            slot.run()

    def submit(self, work: Callable[[], T], deliver: Callable[[T], None]) -> None:
        if self.workers <= 1:
            deliver(work())
            return
        if not self.threads:  # started on first use, so a pool never used holds no threads
            self.threads = [threading.Thread(target=self._serve, name=f"{THREAD_NAME}-{i}")
                            for i in range(self.workers)]
            for thread in self.threads:
                thread.start()
        self.wait_below(self.depth)
        slot = _Slot(work)
        self.inflight.append((slot, deliver))
        self.queue.put(slot)

    def wait_below(self, count: int) -> None:
        """Deliver the oldest calls until fewer than `count` are undelivered."""
        while len(self.inflight) >= max(1, count):
            self._deliver_oldest()

    def drain(self) -> None:
        """Wait for everything submitted and deliver it."""
        self.wait_below(1)

    def _deliver_oldest(self) -> None:
        slot, deliver = self.inflight[0]
        value = slot.result()  # Ctrl-C while waiting here leaves the call at the head
        self.inflight.popleft()
        self.broken = True
        deliver(value)
        self.broken = False

    def deliver_finished(self) -> None:
        """Deliver, in order, what has already finished (stops at the first still running, and
        delivers nothing if an earlier delivery was cut short)."""
        while not self.broken and self.inflight and self.inflight[0][0].done():
            self._deliver_oldest()

    def close(self) -> None:
        """Stop the threads once their current call ends; undelivered work is dropped (not
        journaled), and calls not yet started never start."""
        self.inflight.clear()
        while True:  # take back what no worker has started
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        for _ in self.threads:
            self.queue.put(None)


def workers_busy() -> bool:
    """Whether a pool thread is still inside a call (after Ctrl-C: then the CLI exits at once,
    rather than wait minutes for a decomposition nobody will journal)."""
    return any(t.name.startswith(THREAD_NAME) and t.is_alive() for t in threading.enumerate())
