"""Talking between ranks without ever hanging on a dead one, and a group whose life cannot leak.

Short collectives (the finished set, the split, the final gather) run on the process group,
whose `timeout` bounds each of them. The long wait, for every rank to finish its share, is on
the rendezvous store instead: each rank beats a heartbeat key every few seconds and sets a done
(or failed) key at the end; a rank that waits gives up on a peer whose heartbeat stops for
`timeout` seconds. torchrun also stops every rank when one dies; this covers the case it cannot
see (a node gone silent) and a rank that fails with an error of its own.

Why the group's life is guarded (`joined`): a thread inside a torch store call, or a gloo process
group, still alive when the interpreter shuts down aborts the process in C++ ("terminate called
without an active exception", exit 134). So the group is built inside the `try` whose `finally`
tears it down; teardown holds SIGINT/SIGTERM off, stops and joins the heartbeat (whose own store
client gives up within BEAT_STORE_TIMEOUT_S) and always destroys the process group; and what
is still alive after that is reported by `lingering()`, for the CLI to leave through `os._exit`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from ..errors import AlreadyReported, PeerFailed, SpectrumError
from .env import Ranks

T = TypeVar("T")
POLL_S = 0.5
BEAT_STORE_TIMEOUT_S = 5.0  # a heartbeat store call gives up after this; teardown joins it
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Signals:
    """SIGINT/SIGTERM under torchrun: the first one raises KeyboardInterrupt (the scan journals
    what is finished and stops); any later one, and any during teardown, is only counted.

    torchrun forwards the signal it gets to every rank, on top of the one the terminal sent:
    a second KeyboardInterrupt landing in the CLI's handler would kill the rank by SIGINT (-2)
    instead of exit 130, and one landing in teardown would skip destroying the process group.
    """

    def __init__(self) -> None:
        self.seen = 0
        self.raising = True

    def handle(self, signum: int, frame: Any) -> None:
        self.seen += 1
        if self.raising:
            self.raising = False
            raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                signal.signal(sig, self.handle)

    def hold(self) -> None:
        """From now on a signal is counted, never raised (teardown, then the exit)."""
        self.raising = False
        self.install()


def _store(timeout: float) -> dist.Store:
    """A client of the job's store (torchrun's MASTER_ADDR:MASTER_PORT), under this run's prefix."""
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=timeout),
    )
    prefix = (
        f"spectrum_stream/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    )
    return dist.PrefixStore(prefix, store)


_LIVE: list[Group] = []  # groups not yet torn down, for lingering()
_JOINED: list[Group] = []  # groups this process has joined: only then can torch linger


def lingering() -> list[str]:
    """What of torch (or any thread) is still alive in a process that joined a group: if
    anything, it leaves through `os._exit` (a process that never joined one exits normally)."""
    if not _JOINED:
        return []
    alive = [f"group of rank {g.rank}" for g in _LIVE]
    if dist.is_initialized():
        alive.append("process group")
    alive += [
        f"thread {t.name}"
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive()
    ]
    return alive


@contextlib.contextmanager
def joined(ranks: Ranks, device: str, timeout: float) -> Iterator[Group]:
    """The group of this torchrun job for the time of the `with`: built, used and torn down
    inside one try/finally, so no failure or signal, in construction or after, skips teardown.
    A signal during teardown is held off; once torn down, one received then counts as Ctrl-C."""
    group = Group(ranks, timeout)
    failed = False
    try:
        group.join(device)
        yield group
    except BaseException:
        failed = True
        raise
    finally:
        group.close()
        if group.signals.seen and not failed:
            raise KeyboardInterrupt


class Group:
    """The process group of a torchrun job, plus its store, with failures agreed on by all.

    Use it through `joined`: `join` builds it, `close` tears it down, whatever `join` got to.
    """

    def __init__(self, ranks: Ranks, timeout: float):
        self.ranks, self.timeout = ranks, timeout
        self.rank, self.world = ranks.rank, ranks.world
        self.store: dist.Store | None = None  # the main thread's client
        self._beat_store: dist.Store | None = None  # the heartbeat's own client
        self._stop = threading.Event()
        self._beats = 0
        self._beat: threading.Thread | None = None
        self.signals = _Signals()
        self.closed = False
        _LIVE.append(self)

    def join(self, device: str) -> None:
        """Join the job: NCCL for GPUs (each rank on its own), gloo on CPU; then the store
        clients and the heartbeat. A failure leaves what was built for `close`."""
        self.signals.install()
        _JOINED.append(self)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        try:
            if backend == "nccl":
                torch.cuda.set_device(torch.device(device))
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=self.timeout))
            self.store = _store(self.timeout)
            self._beat_store = _store(min(self.timeout, BEAT_STORE_TIMEOUT_S))
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise SpectrumError(f"rank {self.rank}: cannot join the other ranks ({exc})") from None
        self._beat = threading.Thread(target=self._heartbeat, name="rank-heartbeat", daemon=True)
        self._beat.start()

    def close(self) -> None:
        """Tear down, signals held off: stop and join the heartbeat (its store calls time out
        within BEAT_STORE_TIMEOUT_S, so the join ends), then destroy the process group."""
        if self.closed:
            return
        self.signals.hold()
        self._stop.set()
        if self._beat is not None and self._beat.is_alive():
            self._beat.join()
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # nothing left to tell the peers; lingering() decides how to exit
            pass
        self.store = self._beat_store = None
        self.closed = True
        if self in _LIVE:
            _LIVE.remove(self)

    # -- the store -------------------------------------------------------------------------
    def _set(self, key: str, value: str) -> None:
        if self.store is None:
            raise SpectrumError("the ranks' group is closed")
        self.store.set(key, value)

    def _get(self, key: str) -> str | None:
        if self.store is None:
            raise SpectrumError("the ranks' group is closed")
        if not self.store.check([key]):
            return None
        return self.store.get(key).decode()

    def _heartbeat(self) -> None:
        """Beat through the heartbeat's own store client (the main thread's is never shared)."""
        store = self._beat_store
        while store is not None and not self._stop.is_set():
            self._beats += 1
            try:
                store.set(f"beat/{self.rank}", str(self._beats))
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
            failure = self.peer_failure()
            if failure is not None:
                raise PeerFailed(failure)
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
        return cast(T, value)
