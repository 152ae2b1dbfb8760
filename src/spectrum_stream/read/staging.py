"""Host-to-GPU copies through a bounded pool of page-locked buffers, and blocks read ahead.

`pin_memory()` on a whole tensor goes through torch's caching host allocator, which rounds each
request up to a power of two and keeps it: a scan of a 110B model ended up holding ~5 GiB of
page-locked memory. Here a few fixed buffers are pinned once and every tensor is copied through
them in pieces, so page-locked memory stays at `count * buffer_bytes` however big the tensor.
With `pin=False` (CPU tests) the same logic runs on pageable buffers.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from .device import is_cuda

STAGING_BYTES = 64 * 1024**2  # one buffer (a power of two: the host allocator wastes nothing)
STAGING_COUNT = 2  # buffers per device: one being filled while the other is copied
T = TypeVar("T")


class StagingPool:
    """`count` buffers of `buffer_bytes`, allocated on first use and reused; never more."""

    def __init__(
        self, buffer_bytes: int = STAGING_BYTES, count: int = STAGING_COUNT, pin: bool = True
    ):
        self.buffer_bytes, self.count, self.pin = buffer_bytes, count, pin
        self._free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    @property
    def allocated(self) -> int:
        return self._made

    def try_acquire(self) -> torch.Tensor | None:
        """A free buffer (a new one while fewer than `count` exist), else None."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made >= self.count:
                return None
            self._made += 1
        return torch.empty(self.buffer_bytes, dtype=torch.uint8, pin_memory=self.pin)

    def acquire(self) -> torch.Tensor:
        """A buffer, waiting for one to be released (call only while holding none)."""
        return self.try_acquire() or self._free.get()

    def release(self, buf: torch.Tensor) -> None:
        self._free.put(buf)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def copy_through(
    raw: torch.Tensor, device: torch.device, pool: StagingPool, stream=None
) -> torch.Tensor:
    """`raw` (a CPU tensor) on `device`, copied piece by piece through `pool`'s buffers.

    On CUDA each piece is copied asynchronously on `stream` (the side stream), so the default
    stream's work goes on; the result is allocated on that stream and handed to the default
    stream, and every buffer is back in the pool when this returns. A buffer still in flight
    is waited for before this call waits on the pool, so two threads never hold each other's.
    """
    raw = raw.contiguous()
    cuda = is_cuda(device)
    ctx = torch.cuda.stream(stream) if cuda and stream is not None else _nullcontext()
    with ctx:
        out = torch.empty(raw.shape, dtype=raw.dtype, device=device)
    src, dst = _as_bytes(raw), _as_bytes(out)
    pending: list[tuple[torch.Tensor, Any]] = []  # (buffer, event marking its copy done)

    def reclaim_oldest() -> None:
        buf, event = pending.pop(0)
        if event is not None:
            event.synchronize()
        pool.release(buf)

    try:
        for start in range(0, src.numel(), pool.buffer_bytes):
            end = min(src.numel(), start + pool.buffer_bytes)
            buf = pool.try_acquire()
            while buf is None and pending:
                reclaim_oldest()
                buf = pool.try_acquire()
            if buf is None:
                buf = pool.acquire()  # holding none: safe to wait
            piece = buf[: end - start]
            piece.copy_(src[start:end])
            with ctx:
                dst[start:end].copy_(piece, non_blocking=cuda and pool.pin)
                event = torch.cuda.Event() if cuda else None
                if event is not None:
                    event.record()
            pending.append((buf, event))
    finally:
        while pending:
            reclaim_oldest()
    if cuda and stream is not None:
        out.record_stream(torch.cuda.default_stream(device))
    return out


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_DONE = object()


def read_ahead(
    items: Iterable[T], depth: int = 1, init: Callable[[], None] | None = None
) -> Iterator[T]:
    """Iterate `items` on a background thread, at most `depth` items ahead of the consumer.

    For blocks of a matrix streamed to a GPU: the next block is read from the file and copied
    while the current one is being multiplied. An exception in the thread is raised here, in
    order; closing the iterator early stops the thread after the item it is producing.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if init is not None:
                init()
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # delivered to the consumer in order
            put((_DONE, exc))
            return
        put((_DONE, None))

    # not a daemon: a daemon thread inside torch aborts the process at exit (kernel/workers.py)
    thread = threading.Thread(target=produce, name="spectrum-blocks")
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=60)
