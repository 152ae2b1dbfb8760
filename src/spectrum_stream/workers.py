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
    caller's thread (the journal and the report are not shared between threads).

    The threads are daemons, unlike concurrent.futures' (which the interpreter joins on exit): after
    Ctrl-C the process ends at once instead of waiting minutes for a decomposition nobody will read.
    """

    def __init__(self, workers: int, depth: int | None = None):
        self.workers = workers
        self.depth = depth or 2 * workers
        self.inflight: deque[tuple[_Slot, Callable]] = deque()
        self.queue: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._serve, name=f"spectrum-decompose-{i}",
                                         daemon=True) for i in range(workers if workers > 1 else 0)]
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        while (slot := self.queue.get()) is not None:
            slot.run()

    def submit(self, work: Callable[[], T], deliver: Callable[[T], None]) -> None:
        if not self.threads:
            deliver(work())
            return
        while len(self.inflight) >= self.depth:
            self._deliver_oldest()
        slot = _Slot(work)
        self.inflight.append((slot, deliver))
        self.queue.put(slot)

    def drain(self) -> None:
        """Wait for everything submitted and deliver it."""
        while self.inflight:
            self._deliver_oldest()

    def _deliver_oldest(self) -> None:
        slot, deliver = self.inflight.popleft()
        deliver(slot.result())

    def deliver_finished(self) -> None:
        """Deliver, in order, what has already finished (stops at the first still running)."""
        while self.inflight and self.inflight[0][0].done():
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
