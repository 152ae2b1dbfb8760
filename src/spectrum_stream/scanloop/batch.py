"""Same-shape matrices waiting to be decomposed together, as values rather than tuples."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..layout.specs import MatrixSpec, TensorJob


def batch_bytes(shape: tuple[int, ...]) -> int:
    """Memory a matrix takes in a batch: its float32 copy and its slot in the stacked batch."""
    return math.prod(shape) * 4 * 2


@dataclass
class Pending:
    """One matrix waiting for its batch: what it is, its values, and its share of the read time."""

    spec: MatrixSpec
    mat: torch.Tensor
    job: TensorJob
    read_s: float


@dataclass
class Batch:
    """The pending same-shape matrices, all on one device, and the host bytes they take."""

    items: list[Pending] = field(default_factory=list)
    nbytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.items[0].mat.shape)

    @property
    def device(self) -> torch.device:
        return self.items[0].mat.device

    def add(self, item: Pending) -> None:
        self.items.append(item)
        self.nbytes += batch_bytes(item.mat.shape)

    def take(self) -> list[Pending]:
        """The pending matrices, leaving the batch empty."""
        items, self.items, self.nbytes = self.items, [], 0
        return items
