"""Decomposing two matrices at once on a CPU, each with its share of the cores.

The gram route's symmetric eigensolver spends half its time in memory-bound steps that keep
barely more than one core busy at k ~ 1024, so two matrices side by side, each with half the
BLAS threads, finish sooner than one after the other (bench/RESULTS.md). Work is delivered back
in the order it was submitted, on the caller's thread, so the journal reads as it always did.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


class OrderedPool:
    """Runs up to `workers` calls at once; each result goes to its `deliver` in submit order.

    Up to `depth` calls may be submitted and not yet delivered, so a worker that finished a short
    call starts the next one while a long one ahead of it still runs. With one worker a call runs
    at once on the caller's thread, exactly as without a pool. `deliver` always runs on the
    caller's thread (the journal and the report are not shared between threads).
    """

    def __init__(self, workers: int, depth: int | None = None):
        self.workers = workers
        self.depth = depth or 2 * workers
        self.inflight: deque[tuple[Future, Callable]] = deque()
        self.pool = (ThreadPoolExecutor(workers, thread_name_prefix="spectrum-decompose")
                     if workers > 1 else None)

    def submit(self, work: Callable[[], T], deliver: Callable[[T], None]) -> None:
        if self.pool is None:
            deliver(work())
            return
        while len(self.inflight) >= self.depth:
            self._deliver_oldest()
        self.inflight.append((self.pool.submit(work), deliver))

    def drain(self) -> None:
        """Wait for everything submitted and deliver it."""
        while self.inflight:
            self._deliver_oldest()

    def _deliver_oldest(self) -> None:
        future, deliver = self.inflight.popleft()
        deliver(future.result())

    def deliver_finished(self) -> None:
        """Deliver, in order, what has already finished (stops at the first still running)."""
        while self.inflight and self.inflight[0][0].done():
            self._deliver_oldest()

    def close(self) -> None:
        """Let go of the threads; work still running finishes, undelivered (not journaled)."""
        self.inflight.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
