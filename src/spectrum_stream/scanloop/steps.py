"""The steps the loop hands out, as one value passed in: a test wraps a step by passing its own
`Steps` (dataclasses.replace(STEPS, decode=...)) instead of patching module globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..kernel.route import Decomposed, decompose_each, streamed_gram
from ..read.decode import decode
from ..read.device import bind_thread


@dataclass(frozen=True)
class Steps:
    """decode(job, path_of, device) -> float32 tensor; decompose_each(mats, method, driver);
    streamed_gram(path, entry, shape, device, block_bytes, whole, driver); bind_thread(device)
    on every reading thread."""

    decode: Callable[..., torch.Tensor] = decode
    decompose_each: Callable[..., list] = decompose_each
    streamed_gram: Callable[..., Decomposed] = streamed_gram
    bind_thread: Callable[[torch.device], None] = bind_thread


STEPS = Steps()
