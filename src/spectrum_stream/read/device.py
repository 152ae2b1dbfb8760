"""Turning `--device` into a torch device, with a clear error when CUDA is not there."""

from __future__ import annotations

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
