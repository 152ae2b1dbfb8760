"""Reading the next tensor while the current one is being decomposed.

One background thread runs `load` one item ahead of the consumer. Only one extra tensor is ever
in memory, and errors travel with their item instead of killing the thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import ModuleFailed

T = TypeVar("T")


def _timed(load: Callable[[T], object], item: T) -> tuple[object, ModuleFailed | None, float]:
    t0 = time.perf_counter()
    try:
        return load(item), None, time.perf_counter() - t0
    except ModuleFailed as exc:  # this item's modules fail; anything else stops the scan
        return None, exc, time.perf_counter() - t0
    except RuntimeError as exc:  # torch: out of memory, a failed pinned copy: this module fails
        return None, ModuleFailed(f"cannot load ({exc})"), time.perf_counter() - t0


def prefetched(
    items: Iterable[T],
    load: Callable[[T], object],
    ahead: bool = True,
    init: Callable[[], None] | None = None,
) -> Generator[tuple[T, object, ModuleFailed | None, float], None, None]:
    """Yield (item, load(item), error, seconds) in order; with `ahead`, item i+1 loads during i.

    `init` runs first on the reading thread (read/device.bind_thread: its CUDA device)."""
    if not ahead:
        for item in items:
            yield (item, *_timed(load, item))
        return
    source = iter(items)
    queue: deque = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="spectrum-read", initializer=init) as pool:

        def submit_next() -> None:
            for item in source:
                queue.append((item, pool.submit(_timed, load, item)))
                return

        submit_next()
        while queue:
            item, future = queue.popleft()
            submit_next()  # the next read starts before the caller works on this item
            yield (item, *future.result())
