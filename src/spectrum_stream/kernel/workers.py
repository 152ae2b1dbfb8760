"""Decomposing two matrices at once on a CPU, each with its share of the cores.

The gram route's symmetric eigensolver spends half its time in memory-bound steps that keep
barely more than one core busy at k ~ 1024, so two matrices side by side, each with half the
BLAS threads, finish sooner than one after the other (bench/RESULTS.md). Work is delivered back
in the order it was submitted, on the caller's thread, so the journal reads as it always did.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
        self.inflight: deque[tuple[Future, Callable]] = deque()
        self.pool: ThreadPoolExecutor | None = None  # started on first use
        self.broken = False  # a delivery was cut short: deliver nothing after it

    def submit(self, work: Callable[[], T], deliver: Callable[[T], None]) -> None:
        if self.workers <= 1:
            deliver(work())
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_NAME)
        self.wait_below(self.depth)
        self.inflight.append((self.pool.submit(work), deliver))

    def wait_below(self, count: int) -> None:
        """Deliver the oldest calls until fewer than `count` are undelivered."""
        while len(self.inflight) >= max(1, count):
            self._deliver_oldest()

    def drain(self) -> None:
        """Wait for everything submitted and deliver it."""
        self.wait_below(1)

    def _deliver_oldest(self) -> None:
        future, deliver = self.inflight[0]
        # Ctrl-C while waiting here leaves the call at the head. The wait is in short slices:
        # a signal that lands just before one long wait would only be acted on when it ends.
        while not future.done():
            wait([future], timeout=0.2)
        value = future.result()
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
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def workers_busy() -> bool:
    """Whether a pool thread is still alive, most likely inside a call (after Ctrl-C the CLI then
    exits at once, rather than wait minutes for a decomposition nobody will journal)."""
    return any(t.name.startswith(THREAD_NAME) and t.is_alive() for t in threading.enumerate())
