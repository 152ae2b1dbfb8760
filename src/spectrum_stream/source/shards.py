"""Where shard files come from while a scan runs: a local folder, or the Hub one download at a time.

The scan loop only ever asks a source for a shard's local path and tells it when a shard is no
longer needed, so the same loop serves local folders and Hub repos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ShardSource(Protocol):
    """The scan's view of where shards come from."""

    def prepare(self, shards: list[str]) -> None: ...  # shards the scan will ask for, in order
    def path(self, shard: str) -> Path: ...  # blocks until the shard is on local disk
    def release(self, shard: str) -> None: ...  # every tensor of this shard is journaled


class LocalSource:
    """Shards that are already in a local folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def prepare(self, shards: list[str]) -> None:
        pass

    def path(self, shard: str) -> Path:
        return self.folder / shard

    def release(self, shard: str) -> None:
        pass
