"""Turning `--device` into a torch device, with a clear error when CUDA is not there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import SpectrumError


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` (the GPU when there is one), `cpu`, `cuda` or `cuda:N`."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SpectrumError(
                f"--device {spec}: CUDA is not available (torch {torch.__version__}); "
                "use --device cpu"
            )
        device = torch.device("cuda:0" if spec == "cuda" else spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpectrumError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return device
    raise SpectrumError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def is_cuda(device: torch.device) -> bool:
    """The one test for a CUDA device: device memory, streams and cuSOLVER apply only there."""
    return device.type == "cuda"


def bind_thread(device: torch.device) -> None:
    """Make `device` the calling thread's current CUDA device (each thread has its own, GPU 0
    by default): without it a thread's pinned allocations, streams and solver handles land on
    GPU 0 even when the scan runs on cuda:1. Every thread that touches CUDA calls this first."""
    if is_cuda(device):
        torch.cuda.set_device(device)


@contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """bind_thread for the caller's own thread, restoring its current device afterwards
    (torch.cuda.device restores without creating a context on the previous GPU)."""
    if not is_cuda(device):
        yield
        return
    with torch.cuda.device(device):
        yield
