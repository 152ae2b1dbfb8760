"""Where this process sits in a torchrun job: its rank, the world, its node's ranks, its device."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SpectrumError


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(environ=os.environ) -> Ranks | None:
    """The ranks torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or None for a
    plain process or a world of one: then the scan is the one-process scan, unchanged."""
    if "WORLD_SIZE" not in environ or "RANK" not in environ:
        return None
    try:
        world, rank = int(environ["WORLD_SIZE"]), int(environ["RANK"])
        local = int(environ.get("LOCAL_RANK", rank))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise SpectrumError(
            "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be whole "
            "numbers (as torchrun sets them)"
        ) from None
    if world <= 1:
        return None
    if not (0 <= rank < world and 0 <= local < local_world):
        raise SpectrumError(
            f"RANK {rank} / WORLD_SIZE {world} (LOCAL_RANK {local} / "
            f"LOCAL_WORLD_SIZE {local_world}) do not fit together"
        )
    return Ranks(rank, world, local, local_world)


def rank_device(device: str, ranks: Ranks, cuda_available: bool) -> str:
    """`cuda` (and `auto` with GPUs) means this rank's own GPU, cuda:LOCAL_RANK."""
    if device == "cuda" or (device == "auto" and cuda_available):
        return f"cuda:{ranks.local_rank}"
    return "cpu" if device == "auto" else device


def node_share(max_disk: int | None, ranks: Ranks | None) -> int | None:
    """--max-disk is per node: each of the node's ranks keeps within its part of it."""
    if max_disk is None or ranks is None:
        return max_disk
    return max_disk // ranks.local_world
