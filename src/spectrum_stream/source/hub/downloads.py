"""The shard source of a Hub scan: shards downloaded one at a time into the Hugging Face cache,
one ahead of the scan, deleted once journaled when asked, within a disk budget.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ...errors import SpectrumError
from ...units import human_bytes
from ..checkpoint import Checkpoint
from ..header import read_header
from .errors import HubDownloadError, explain
from .repo import HubRepo

log = logging.getLogger(__name__)


class HubSource:
    """ShardSource that downloads shards one at a time, one ahead of the scan, within a budget.

    States: queued -> downloading -> ready -> released (deleted from the cache if asked), or failed.
    A shard the scan asks for (`path`) jumps the queue; any other shard is prefetched only while no
    prefetched shard is waiting unasked. `max_disk` counts shards from the start of their download
    until their deletion; it is exceeded only when the scan itself needs more shards at once.
    """

    def __init__(
        self,
        repo: HubRepo,
        ckpt: Checkpoint,
        needed: list[str] | None = None,
        delete: bool = False,
        max_disk: int | None = None,
    ):
        self.repo, self.ckpt = repo, ckpt
        self.needed = None if needed is None else set(needed)
        self.delete, self.max_disk = delete, max_disk
        self.state: dict[str, str] = {}
        self.paths: dict[str, Path] = {}
        self.errors: dict[str, HubDownloadError] = {}
        self.held: dict[str, int] = {}  # shard -> bytes counted against max_disk
        self.asked: dict[str, int] = {}  # shard the scan waits for -> the asking thread
        self._releaser: int | None = None  # the thread that calls prepare() and release()
        self.queue: list[str] = []
        self.downloads: list[str] = []  # every shard fetched, in order (for callers and tests)
        self.peak_held = 0
        self._cond = threading.Condition()
        self._stop = False
        self._warned = False
        self._thread: threading.Thread | None = None

    # -- ShardSource --------------------------------------------------------------------------
    def prepare(self, shards: list[str]) -> None:
        with self._cond:
            self._releaser = threading.get_ident()
            for shard in shards:
                if (self.needed is None or shard in self.needed) and shard not in self.state:
                    self.state[shard] = "queued"
                    self.queue.append(shard)
            self._start()
            self._cond.notify_all()

    def path(self, shard: str) -> Path:
        with self._cond:
            self.asked[shard] = threading.get_ident()
            if self.state.get(shard) in (None, "released"):
                self.state[shard] = "queued"
                self.queue.append(shard)
                self._start()
            self._cond.notify_all()
            while self.state[shard] not in ("ready", "failed"):
                if self._stop and self.state[shard] == "queued":  # nobody will fetch it now
                    raise HubDownloadError(
                        shard, "downloads stopped after an earlier failure; run again to resume"
                    )
                self._cond.wait(0.5)  # a timeout keeps Ctrl-C responsive
            if self.state[shard] == "failed":
                raise self.errors[shard]
            return self.paths[shard]

    def release(self, shard: str) -> None:
        with self._cond:
            self._releaser = threading.get_ident()
            state = self.state.get(shard)
            self.state[shard] = "released"
            self.asked.pop(shard, None)
            if state == "queued":
                self.queue.remove(shard)
            elif state == "ready":
                self._drop(shard)
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop downloading; keep shards not yet released (a rerun will want them)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- internals (called with the lock held) ------------------------------------------------
    def _start(self) -> None:
        if self._thread is None and not self._stop:
            self._thread = threading.Thread(target=self._run, name="hub-downloads", daemon=True)
            self._thread.start()

    def _drop(self, shard: str) -> None:
        """Forget a released shard; delete it from the cache (link and blob) if asked to."""
        if self.delete:
            link = self.paths.get(shard)
            if link is not None:
                delete_cached(link)
            self.held.pop(shard, None)
            self.paths.pop(shard, None)

    def _next(self) -> str | None:
        """The shard to fetch now, or None to wait."""
        sizes = {s: self.ckpt.shards[s].size for s in self.queue}
        shard, over = pick_next(
            self.queue, self.state, self.asked, self.held, sizes, self.max_disk, self._releaser
        )
        if over and not self._warned and shard is not None and self.max_disk is not None:
            # The thread that releases shards is blocked on this one: waiting would hang.
            # The Hub scan refuses budgets below what it needs at once, so this is rare.
            self._warned = True
            log.warning(
                f"--max-disk {human_bytes(self.max_disk)}: the scan needs "
                f"{', '.join(sorted({*self.held, shard}))} at once; going over the budget"
            )
        return shard

    def _run(self) -> None:
        while True:
            with self._cond:
                shard: str | None = None
                while not self._stop and (shard := self._next()) is None:
                    self._cond.wait(0.5)
                if self._stop or shard is None:
                    return
                self.queue.remove(shard)
                self.state[shard] = "downloading"
                self.held[shard] = self.ckpt.shards[shard].size
                self.peak_held = max(self.peak_held, sum(self.held.values()))
                self.downloads.append(shard)
            t0 = time.perf_counter()
            try:
                path = fetch_checked(self.repo, self.ckpt, shard)
            except BaseException as exc:  # whatever it was, the scan waiting on it must hear
                if not isinstance(exc, HubDownloadError):
                    exc = HubDownloadError(shard, f"download failed ({type(exc).__name__}: {exc})")
                with self._cond:
                    self.state[shard] = "failed"
                    self.errors[shard] = exc
                    self.held.pop(shard, None)
                    self._stop = True  # the scan stops at this shard; fetch nothing more
                    self._cond.notify_all()
                return
            with self._cond:
                self.paths[shard] = path
                if self.state[shard] == "released":  # released while downloading
                    self._drop(shard)
                else:
                    self.state[shard] = "ready"
                self._cond.notify_all()
            log.info(
                "downloaded %s (%s in %.1f s)",
                shard,
                human_bytes(self.ckpt.shards[shard].size),
                time.perf_counter() - t0,
            )


def pick_next(
    queue: list[str],
    state: dict[str, str],
    asked: dict[str, int],
    held: dict[str, int],
    sizes: dict[str, int],
    max_disk: int | None,
    releaser: int | None,
) -> tuple[str | None, bool]:
    """The queued shard to fetch now (None: wait), and whether it goes over `max_disk`.

    A shard the scan waits for comes first; otherwise one shard ahead is enough. Over the budget a
    prefetch waits for a release, unless the thread that releases shards is the one waiting.
    """
    if not queue:
        return None, False
    wanted = [s for s in queue if s in asked]
    if wanted:
        shard = wanted[0]
    else:
        if any(st == "ready" and s not in asked for s, st in state.items()):
            return None, False
        shard = queue[0]
    if max_disk is None or sum(held.values()) + sizes[shard] <= max_disk:
        return shard, False
    asker = asked.get(shard)
    if asker is None or asker != releaser:
        return None, False
    return shard, True


def delete_cached(link: Path) -> None:
    """Delete a cached shard: the snapshot's link and the blob it points to."""
    blob = link.resolve()
    for path in (link, blob):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(f"could not delete {path} ({exc.strerror or exc})")


def fetch_checked(repo: HubRepo, ckpt: Checkpoint, shard: str) -> Path:
    """Download (or find in the cache) one shard and check it is the one that was planned."""
    try:
        path = repo.download(shard)
    except Exception as exc:
        raise HubDownloadError(
            shard, explain(exc, repo.repo_id, shard, repo.revision, repo.endpoint)
        ) from None
    planned = ckpt.shards[shard]
    try:
        got = read_header(path)
    except SpectrumError as exc:
        raise HubDownloadError(
            shard, f"the downloaded file is not the planned shard ({exc})"
        ) from exc
    if (got.size, got.header_sha256) != (planned.size, planned.header_sha256):
        raise HubDownloadError(
            shard, "the downloaded file differs from the header read when planning; run again"
        )
    return path
