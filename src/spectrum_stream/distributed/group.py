"""Talking between ranks without ever hanging on a dead one.

Short collectives (the finished set, the split, the final gather) run on the process group,
whose `timeout` bounds each of them. The long wait, for every rank to finish its share, is on
the rendezvous store instead: each rank beats a heartbeat key every few seconds and sets a done
(or failed) key at the end; a rank that waits gives up on a peer whose heartbeat stops for
`timeout` seconds. torchrun also stops every rank when one dies; this covers the case it cannot
see (a node gone silent) and a rank that fails with an error of its own.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import AlreadyReported, SpectrumError
from .env import Ranks

T = TypeVar("T")
POLL_S = 0.5


class Group:
    """The process group of a torchrun job, plus its store, with failures agreed on by all."""

    def __init__(self, ranks: Ranks, timeout: float, store):
        self.ranks, self.timeout, self.store = ranks, timeout, store
        self.rank, self.world = ranks.rank, ranks.world
        self._store_lock = threading.Lock()
        self._stop = threading.Event()
        self._beats = 0
        self._beat = threading.Thread(target=self._heartbeat, name="rank-heartbeat", daemon=True)

    @classmethod
    def start(cls, ranks: Ranks, device: str, timeout: float) -> Group:
        """Join the job: NCCL for GPUs (each rank on its own), gloo on CPU."""
        delta = datetime.timedelta(seconds=timeout)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        try:
            dist.init_process_group(backend, timeout=delta)
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=delta,
            )
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise SpectrumError(f"rank {ranks.rank}: cannot join the other ranks ({exc})") from None
        prefix = (
            f"spectrum_stream/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
            f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        )
        group = cls(ranks, timeout, dist.PrefixStore(prefix, store))
        group._beat.start()
        return group

    # -- the store -------------------------------------------------------------------------
    def _set(self, key: str, value: str) -> None:
        with self._store_lock:
            self.store.set(key, value)

    def _get(self, key: str) -> str | None:
        with self._store_lock:
            if not self.store.check([key]):
                return None
            return self.store.get(key).decode()

    def _heartbeat(self) -> None:
        while True:
            self._beats += 1
            try:
                self._set(f"beat/{self.rank}", str(self._beats))
            except Exception:  # the store is gone: the job is over, the waiters will see
                return
            if self._stop.wait(min(5.0, self.timeout / 10)):
                return

    def mark_failed(self, message: str) -> None:
        """Tell the other ranks this one stopped with an error (it reports that itself)."""
        try:
            self._set("failed", message)
        except Exception:
            pass

    def peer_failure(self) -> str | None:
        try:
            return self._get("failed")
        except Exception:
            return None

    def wait_for_peers(self) -> None:
        """Say this rank is done and wait for all others; a failed or silent peer ends the wait."""
        self._set(f"done/{self.rank}", "1")
        waiting = [r for r in range(self.world) if r != self.rank]
        last: dict[int, tuple[str | None, float]] = {}
        pause = threading.Event()
        while waiting:
            if self.peer_failure() is not None:
                raise AlreadyReported()
            now = time.monotonic()
            for r in list(waiting):
                if self._get(f"done/{r}") is not None:
                    waiting.remove(r)
                    continue
                beat = self._get(f"beat/{r}")
                seen, since = last.get(r, (None, now))
                if beat != seen:
                    last[r] = (beat, now)
                elif now - since > self.timeout:
                    raise SpectrumError(
                        f"rank {r} gave no sign of life for {self.timeout:.0f} s (--peer-timeout); "
                        "every rank's finished modules are journaled, run the same command again "
                        "to resume"
                    )
            if waiting:
                pause.wait(POLL_S)

    # -- collectives -----------------------------------------------------------------------
    def all_gather(self, obj) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj) -> list | None:
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def agree(self, step: Callable[[], T], *, only: bool = True) -> T:
        """Run `step` (when `only`) on this rank, then stop every rank if it failed on any.

        Rank 0 prints the first failure (naming its rank when not rank 0); the others exit
        quietly, so a setup error is one line however many ranks hit it.
        """
        value, error = None, None
        if only:
            try:
                value = step()
            except SpectrumError as exc:
                error = str(exc)
            except OSError as exc:
                error = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
        errors = self.all_gather(error)
        first = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
        if first is not None:
            r, message = first
            if self.rank == 0:
                raise SpectrumError(
                    message
                    if r == 0 or all(e == message for e in errors)
                    else f"rank {r}: {message}"
                )
            raise AlreadyReported()
        return value

    def close(self) -> None:
        self._stop.set()
        self._beat.join(timeout=10)
        if dist.is_initialized():
            dist.destroy_process_group()
