"""Scanning straight from the Hugging Face Hub, shard by shard, within a disk budget.

1. `open_hub` resolves the revision to a commit, reads the index and every shard's header with
   HTTP range requests (or from the cache) and checks them like local headers: no weights move yet.
2. `scan_hub` prints the plan (matrices, bytes, shards, an estimated time on the device).
3. `HubSource` feeds the usual scan loop: one background thread downloads the shards one at a time
   into the normal Hugging Face cache, one shard ahead of the scan, and with `delete_shards` removes
   each shard once the scan has journaled every tensor that needs it. `max_disk` bounds the bytes
   of shards this scan keeps on disk at once.

A failed download stops the scan with one line; what was journaled is kept and a rerun resumes,
fetching only shards that still hold unscanned modules.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import logging
import math
import os
import re
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from tqdm.auto import tqdm

from .checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint, assemble, load_index, read_config
from .errors import CheckpointError, SpectrumError
from .header import MAX_HEADER_BYTES, ShardHeader, parse_header, read_header
from .journal import read_journal
from .layout import TensorJob, plan
from .results import results_paths
from .scan import ScanOptions, ScanReport, scan_checkpoint

FIRST_READ = 100_000  # bytes asked for first: holds the whole header of almost every shard
HEADER_TIMEOUT = 30.0  # seconds per header request
HEADER_THREADS = 8

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def is_hub_id(text: str) -> bool:
    """True for `ORG/NAME` that is not an existing local path (a local path always wins)."""
    return (bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text
            and not text.endswith((".", "-")) and not os.path.exists(text))


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(text: str) -> int:
    """`40GB`, `1.5TB`, `500MiB` or a plain byte count -> bytes (K/M/G/T are powers of 1000)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m and _UNITS.get(m.group(2).lower())
    if not unit or int(float(m.group(1)) * unit) <= 0:
        raise SpectrumError(
            f"--max-disk {text!r}: expected a size such as 40GB, 500MiB or 2000000000")
    return int(float(m.group(1)) * unit)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # unreachable


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{max(s, 1):.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


# ---------------------------------------------------------------------------------------------
# Errors: every huggingface_hub / network failure becomes one line.

class HubDownloadError(Exception):
    """A shard download failed mid-scan. Deliberately not a SpectrumError, so that the scan loop
    does not record the shard's modules as failed: the scan stops and the journal keeps its work."""

    def __init__(self, shard: str, reason: str):
        super().__init__(f"{shard}: {reason}")
        self.shard, self.reason = shard, reason


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP library this huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _hf():
    """huggingface_hub's pieces, imported on first use (the local scan never needs them)."""
    import huggingface_hub
    from huggingface_hub import constants, errors, utils
    return huggingface_hub, constants, errors, utils


def offline() -> bool:
    _, constants, _, _ = _hf()
    return bool(constants.HF_HUB_OFFLINE)


def explain(exc: BaseException, repo_id: str, what: str, revision: str | None = None,
            endpoint: str = "the Hub") -> str:
    """One line for a failure while fetching `what` (a file name, or 'the revision')."""
    _, _, errors, _ = _hf()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    code = f"HTTP {status}" if status else type(exc).__name__
    if isinstance(exc, errors.GatedRepoError) or (status in (401, 403) and not isinstance(
            exc, errors.RepositoryNotFoundError)):
        return (f"{repo_id}: access denied ({code}); the repo is gated or private: accept its "
                "terms on the Hub and pass --token (or set HF_TOKEN) for an account with access")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (f"{repo_id}: no such model repo on {endpoint} ({code}), and no local folder of "
                "that name; if it is private, pass --token or set HF_TOKEN")
    if isinstance(exc, getattr(errors, "DisabledRepoError", ())):
        return f"{repo_id}: access to this repo is disabled on the Hub ({code})"
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{repo_id}: no revision {revision or 'main'!r} (expected a branch, tag or commit)"
    if isinstance(exc, errors.OfflineModeIsEnabled) or (
            offline() and isinstance(exc, (errors.LocalEntryNotFoundError, FileNotFoundError))):
        return (f"{repo_id}: HF_HUB_OFFLINE=1 and {what} is not in the Hugging Face cache; "
                "unset HF_HUB_OFFLINE to download it")
    if isinstance(exc, errors.HfHubHTTPError):
        return f"{repo_id}: {endpoint} answered {code} for {what}"
    if isinstance(exc, _network_errors()) or isinstance(exc, errors.LocalEntryNotFoundError):
        cause = exc.__cause__ or exc
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return f"{repo_id}: connection to {endpoint} failed while fetching {what} ({detail})"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"{repo_id}: the disk is full while downloading {what}; free some space, or "
                "scan with --delete-shards / --max-disk")
    if isinstance(exc, OSError) and "consistency check" in str(exc).lower():
        return (f"{repo_id}: the download of {what} ended early (the connection dropped); "
                "run again to resume")
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{repo_id}: fetching {what} failed ({type(exc).__name__}: {first_line})"


# ---------------------------------------------------------------------------------------------
# The repo and its headers.

@dataclass
class HubRepo:
    """A Hub model repo pinned to one commit, and where its files land locally."""

    repo_id: str
    revision: str  # as asked (branch, tag or commit)
    commit: str  # what it resolved to
    endpoint: str
    cache_dir: str
    token: str | bool | None = None

    def url(self, filename: str) -> str:
        return (f"{self.endpoint}/{self.repo_id}/resolve/{quote(self.commit, safe='')}/"
                f"{quote(filename)}")

    def cached(self, filename: str) -> Path | None:
        hf, _, _, _ = _hf()
        found = hf.try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir,
                                          revision=self.commit)
        return Path(found) if isinstance(found, str) and os.path.isfile(found) else None

    def download(self, filename: str, quiet: bool = True) -> Path:
        """The file in the HF cache (downloaded unless already there); raises hf's errors."""
        hf, _, _, _ = _hf()
        return Path(hf.hf_hub_download(
            self.repo_id, filename, revision=self.commit, cache_dir=self.cache_dir,
            token=self.token, endpoint=self.endpoint, tqdm_class=_Silent if quiet else None))

    def fail(self, exc: BaseException, what: str) -> SpectrumError:
        return SpectrumError(explain(exc, self.repo_id, what, self.revision, self.endpoint))


class _Silent(tqdm):
    """huggingface_hub's per-file bars would tangle with the scan's own bar."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def resolve(repo_id: str, revision: str | None = None, token: str | None = None,
            endpoint: str | None = None, cache_dir: str | Path | None = None) -> HubRepo:
    """Pin `revision` to a commit: ask the Hub, or read the cache's refs when offline."""
    hf, constants, errors, _ = _hf()
    from huggingface_hub.file_download import repo_folder_name

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    cache_dir = str(Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve())
    asked = revision or "main"
    refs = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / asked
    if re.fullmatch(r"[0-9a-f]{40}", asked):
        return HubRepo(repo_id, asked, asked, endpoint, cache_dir, token)
    if offline():
        if refs.is_file():
            return HubRepo(repo_id, asked, refs.read_text().strip(), endpoint, cache_dir, token)
        raise SpectrumError(
            f"{repo_id}: HF_HUB_OFFLINE=1 and revision {asked!r} of this repo is not in the "
            f"Hugging Face cache ({cache_dir}); unset HF_HUB_OFFLINE to download it")
    api = hf.HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision, timeout=HEADER_TIMEOUT)
    except Exception as exc:
        if isinstance(exc, _network_errors()) and not isinstance(exc, errors.HfHubHTTPError) \
                and refs.is_file():  # Hub unreachable: the cache still knows the revision
            return HubRepo(repo_id, asked, refs.read_text().strip(), endpoint, cache_dir, token)
        raise SpectrumError(explain(exc, repo_id, "the revision", revision, endpoint)) from None
    if not info.sha:
        raise SpectrumError(f"{repo_id}: {endpoint} did not say which commit {asked!r} is")
    try:  # remember it, as huggingface_hub does, so that offline runs find it
        refs.parent.mkdir(parents=True, exist_ok=True)
        if not refs.is_file() or refs.read_text().strip() != info.sha:
            refs.write_text(info.sha)
    except OSError:
        pass
    return HubRepo(repo_id, asked, info.sha, endpoint, cache_dir, token)


def _label(repo: HubRepo, filename: str) -> Path:
    return Path(f"{repo.repo_id}@{repo.revision}") / filename


def _content_total(response) -> int | None:
    """The file size a (range) response reports."""
    m = re.fullmatch(r"\s*bytes\s+\d+-\d+/(\d+)\s*", response.headers.get("Content-Range", ""))
    if m:
        return int(m.group(1))
    length = response.headers.get("Content-Length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


def remote_header(repo: HubRepo, filename: str) -> ShardHeader:
    """Read and check a shard's header with range requests; no weight bytes are fetched."""
    _, _, _, utils = _hf()
    where = str(_label(repo, filename))
    headers = {**utils.build_hf_headers(token=repo.token), "Accept-Encoding": "identity"}

    def get(first: int, last: int) -> tuple[int | None, bytes]:
        """(file size, bytes first..last); reads no more even from a server ignoring Range."""
        with utils.get_session().stream(
                "GET", repo.url(filename), timeout=HEADER_TIMEOUT,
                headers={**headers, "Range": f"bytes={first}-{last}"}) as response:
            if response.status_code >= 400:
                response.read()  # small; the error helper wants the body
            utils.hf_raise_for_status(response)
            want, skip = last - first + 1, first if response.status_code == 200 else 0
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= skip + want:
                    break
            return _content_total(response), bytes(data[skip:skip + want])

    size, head = get(0, FIRST_READ - 1)
    if size is None:
        raise CheckpointError(f"{where}: the server did not say how big the file is")
    if len(head) < 8 or size < 8:
        raise CheckpointError(f"{where}: file is {size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{where}: header length {n} is absurd (cap 100 MB)")
    if 8 + n > size:
        raise CheckpointError(
            f"{where}: header length {n} runs past the end of the {size}-byte file")
    raw = head[8:8 + n] if len(head) >= 8 + n else get(8, 8 + n - 1)[1]
    if len(raw) != n:
        raise CheckpointError(f"{where}: the server sent {len(raw)} of the {n} header bytes")
    entries, metadata = parse_header(raw, size - 8 - n, 8 + n, where)
    return ShardHeader(_label(repo, filename), size, hashlib.sha256(raw).hexdigest(), entries,
                       metadata)


def _shard_header(repo: HubRepo, filename: str, if_missing: str | None = None) -> ShardHeader:
    """From the cache when the shard is there (same bytes, same fingerprint), else remotely;
    `if_missing` is the message for a file the repo does not have."""
    local = repo.cached(filename)
    if local is not None:
        return read_header(local)
    if offline():
        raise SpectrumError(
            f"{repo.repo_id}: HF_HUB_OFFLINE=1 and shard {filename} is not in the Hugging Face "
            "cache; unset HF_HUB_OFFLINE to download it")
    try:
        return remote_header(repo, filename)
    except SpectrumError:
        raise
    except Exception as exc:  # huggingface_hub / network errors
        _, _, errors, _ = _hf()
        if if_missing and isinstance(exc, errors.EntryNotFoundError):
            raise SpectrumError(if_missing) from None
        raise repo.fail(exc, filename) from None


def open_hub(repo_id: str, revision: str | None = None, token: str | None = None,
             endpoint: str | None = None, cache_dir: str | Path | None = None
             ) -> tuple[Checkpoint, HubRepo]:
    """The checkpoint of a Hub repo, from its index, config and shard headers only."""
    _, _, errors, _ = _hf()
    missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    repo = resolve(repo_id, revision, token, endpoint, cache_dir)
    try:
        index = repo.download(INDEX_NAME)
    except missing:
        index = None  # maybe one model.safetensors
    except Exception as exc:
        if not (offline() and repo.cached(SINGLE_NAME) is not None):
            raise repo.fail(exc, INDEX_NAME) from None
        index = None
    try:
        config = read_config(repo.download("config.json").parent)
    except CheckpointError:
        raise
    except Exception:  # optional: a repo without config.json still scans
        config = {}
    if index is None:
        header = _shard_header(repo, SINGLE_NAME, if_missing=(
            f"{repo_id}: not a safetensors model (neither {INDEX_NAME} nor {SINGLE_NAME} at "
            f"revision {repo.revision!r})"))
        return assemble(repo_id, {SINGLE_NAME: header}, None, config), repo
    weight_map = load_index(index)
    shards = sorted(set(weight_map.values()))
    with ThreadPoolExecutor(min(HEADER_THREADS, len(shards) or 1)) as pool:
        headers = dict(zip(shards, pool.map(lambda s: _shard_header(repo, s), shards)))
    return assemble(repo_id, headers, weight_map, config), repo


# ---------------------------------------------------------------------------------------------
# The plan.

@dataclass
class HubPlan:
    """What a Hub scan will do, computed before any weight moves."""

    jobs: list[TensorJob]
    matrices: int
    done: int  # modules already in the journal
    weight_bytes: int
    shard_bytes: int  # all shards of the checkpoint
    needed: list[str]  # shards still holding unscanned modules, in scan order
    cached: list[str]  # of those, already in the HF cache
    download_bytes: int
    need_at_once: int  # bytes of shards the scan must hold at once, with deletion
    need_shards: list[str]  # the shards that make need_at_once
    flops: float  # m*n*k summed over the matrices left


def _finished(journal: Path, fresh: bool) -> set[str]:
    """Modules the scan will skip (the runner refuses a mismatched journal before any download)."""
    if fresh or not journal.is_file():
        return set()
    try:
        _, records, _ = read_journal(journal)
    except SpectrumError:
        return set()
    return {k for k, r in records.items() if r.get("status") == "ok"}


def make_plan(ckpt: Checkpoint, repo: HubRepo, opts: ScanOptions) -> HubPlan:
    jobs = plan(ckpt, opts.include, opts.exclude)
    paths = results_paths(Path(opts.out_dir), opts.name or ckpt.name)
    done = _finished(paths["journal"], opts.fresh)
    todo = [any(s.key not in done for s in j.matrices) for j in jobs]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, (job, needed) in enumerate(zip(jobs, todo)):
        for shard in job.shards:
            last[shard] = i  # the scan releases a shard after the last job that uses it
            if needed:
                first.setdefault(shard, i)
    needed = sorted(first, key=first.get)
    sizes = {s: h.size for s, h in ckpt.shards.items()}
    # A needed shard is on disk from its first needed job to the last job using it: sweep.
    delta = [0] * (len(jobs) + 1)
    for shard in needed:
        delta[first[shard]] += sizes[shard]
        delta[last[shard] + 1] -= sizes[shard]
    need_at_once, at, running = 0, 0, 0
    for i, change in enumerate(delta[:-1]):
        running += change
        if running > need_at_once:
            need_at_once, at = running, i
    need_shards = [s for s in needed if first[s] <= at <= last[s]]
    flops = sum(float(m * n * min(m, n)) for job, t in zip(jobs, todo) if t
                for spec in job.matrices if spec.key not in done for m, n in [spec.shape])
    cached = [s for s in needed if repo.cached(s) is not None]
    return HubPlan(
        jobs=jobs, matrices=sum(len(j.matrices) for j in jobs),
        done=sum(1 for j in jobs for s in j.matrices if s.key in done),
        weight_bytes=sum(j.nbytes for j in jobs), shard_bytes=sum(sizes.values()),
        needed=needed, cached=cached,
        download_bytes=sum(sizes[s] for s in needed if s not in cached),
        need_at_once=need_at_once, need_shards=need_shards, flops=flops)


def svd_rate(device, size: int = 1024) -> float:
    """m*n*k per second of torch.linalg.svdvals on `device`, measured on one size x size matrix."""
    import torch

    a = torch.randn(size, size, device=device)
    torch.linalg.svdvals(a[: size // 4, : size // 4])  # warm up the library
    best = math.inf
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.linalg.svdvals(a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return size**3 / max(best, 1e-6)


def plan_lines(p: HubPlan, repo: HubRepo, ckpt: Checkpoint, device, rate: float | None,
               delete: bool, max_disk: int | None) -> list[str]:
    n_shards = len(ckpt.shards)
    lines = [
        f"Hub: {repo.repo_id} at {repo.revision} (commit {repo.commit[:12]}), index and "
        f"{n_shards} shard header{'s' if n_shards != 1 else ''} read, no weights downloaded yet",
        f"Plan: {p.matrices} matrices, {human_bytes(p.weight_bytes)} of weights in {n_shards} "
        f"shard{'s' if n_shards != 1 else ''} ({human_bytes(p.shard_bytes)})"
        + (f"; {p.done} modules already in the journal" if p.done else ""),
    ]
    if not p.needed:
        lines.append("Downloads: none, every module is already in the journal")
        return lines
    fetch = len(p.needed) - len(p.cached)
    what = f"{fetch} shard{'s' if fetch != 1 else ''}, {human_bytes(p.download_bytes)}"
    if p.cached:
        what += f" ({len(p.cached)} more already in the cache)"
    disk = f"one at a time into {repo.cache_dir}"
    if delete:  # what the scan holds, plus one shard downloading ahead, within the budget
        ahead = p.need_at_once + max(ckpt.shards[s].size for s in p.needed)
        disk += (f", each deleted once scanned: at most about "
                 f"{human_bytes(min(ahead, max_disk or ahead))} of shards on disk at once")
    lines.append(f"Downloads: {what}, {disk}")
    if rate:
        lines.append(
            f"Estimate on {device}: about {human_seconds(p.flops / rate)} of SVD for "
            f"{p.matrices - p.done} matrices (calibrated here); downloads run alongside")
    return lines


# ---------------------------------------------------------------------------------------------
# The shard source.

class HubSource:
    """ShardSource that downloads shards one at a time, one ahead of the scan, within a budget.

    States: queued -> downloading -> ready -> released (deleted from the cache if asked), or failed.
    A shard the scan asks for (`path`) jumps the queue; any other shard is prefetched only while no
    prefetched shard is waiting unasked. `max_disk` counts shards from the start of their download
    until their deletion; it is exceeded only when the scan itself needs more shards at once.
    """

    def __init__(self, repo: HubRepo, ckpt: Checkpoint, needed: list[str] | None = None,
                 delete: bool = False, max_disk: int | None = None,
                 say: Callable[[str], None] | None = None, chatty: bool = False):
        self.repo, self.ckpt = repo, ckpt
        self.needed = None if needed is None else set(needed)
        self.delete, self.max_disk = delete, max_disk
        self.say = say or (lambda line: None)  # warnings; with `chatty` also each download
        self.chatty = chatty
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
        """Delete a released shard from the cache (snapshot link and blob) if asked to."""
        if self.delete:
            link = self.paths.get(shard)
            if link is not None:
                blob = link.resolve()
                for path in (link, blob):
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        self.say(f"warning: could not delete {path} ({exc.strerror or exc})")
            self.held.pop(shard, None)
            self.paths.pop(shard, None)

    def _next(self) -> str | None:
        """The shard to fetch now, or None to wait."""
        if not self.queue:
            return None
        wanted = [s for s in self.queue if s in self.asked]
        if wanted:
            shard = wanted[0]
        else:
            if any(st == "ready" and s not in self.asked for s, st in self.state.items()):
                return None  # one shard ahead is enough
            shard = self.queue[0]
        size = self.ckpt.shards[shard].size
        if self.max_disk is not None and sum(self.held.values()) + size > self.max_disk:
            asker = self.asked.get(shard)
            if asker is None or asker != self._releaser:
                return None  # a prefetch (ours, or the scan's read-ahead) waits for a release
            # The thread that releases shards is blocked on this one: waiting would hang.
            # make_plan refuses budgets below what the scan needs at once, so this is rare.
            if not self._warned:
                self._warned = True
                self.say(f"warning: --max-disk {human_bytes(self.max_disk)}: the scan needs "
                         f"{', '.join(sorted({*self.held, shard}))} at once; going over the budget")
        return shard

    def _run(self) -> None:
        while True:
            with self._cond:
                shard = None
                while not self._stop and (shard := self._next()) is None:
                    self._cond.wait(0.5)
                if self._stop:
                    return
                self.queue.remove(shard)
                self.state[shard] = "downloading"
                self.held[shard] = self.ckpt.shards[shard].size
                self.peak_held = max(self.peak_held, sum(self.held.values()))
                self.downloads.append(shard)
            t0 = time.perf_counter()
            try:
                path = self._fetch(shard)
            except HubDownloadError as exc:
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
            if self.chatty:
                self.say(f"downloaded {shard} ({human_bytes(self.ckpt.shards[shard].size)} in "
                         f"{time.perf_counter() - t0:.1f} s)")

    def _fetch(self, shard: str) -> Path:
        """Download (or find in the cache) one shard and check it is the one that was planned."""
        try:
            path = self.repo.download(shard)
        except Exception as exc:
            raise HubDownloadError(shard, explain(exc, self.repo.repo_id, shard,
                                                  self.repo.revision, self.repo.endpoint)) from None
        planned = self.ckpt.shards[shard]
        try:
            got = read_header(path)
        except SpectrumError as exc:
            raise HubDownloadError(shard, f"the downloaded file is not the planned shard ({exc})")
        if (got.size, got.header_sha256) != (planned.size, planned.header_sha256):
            raise HubDownloadError(shard, "the downloaded file differs from the header read when "
                                   "planning; run again")
        return path


# ---------------------------------------------------------------------------------------------
# The whole Hub scan.

@contextmanager
def _quiet_library_logs():
    """huggingface_hub logs retries and warnings itself; this tool reports failures in one line."""
    from huggingface_hub.utils import logging as hf_logging  # its import sets the level

    logger = hf_logging.get_logger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def scan_hub(repo_id: str, opts: ScanOptions | None = None, *, revision: str | None = None,
             token: str | None = None, delete_shards: bool = False, max_disk: int | None = None,
             endpoint: str | None = None, cache_dir: str | Path | None = None,
             say: Callable[[str], None] = _stderr, estimate: bool = True) -> ScanReport:
    """Scan a Hub model repo shard by shard; resumes from the journal like a local scan.

    `max_disk` (bytes) implies `delete_shards`. `endpoint` and `cache_dir` default to
    huggingface_hub's (HF_ENDPOINT, HF_HOME / HF_HUB_CACHE); `token` to HF_TOKEN or the saved login.
    """
    from .device import resolve_device

    opts = opts or ScanOptions()
    delete = delete_shards or max_disk is not None
    with _quiet_library_logs():
        device = resolve_device(opts.device)
        ckpt, repo = open_hub(repo_id, revision, token, endpoint, cache_dir)
        p = make_plan(ckpt, repo, opts)
        if max_disk is not None and p.needed:
            biggest = max(p.needed, key=lambda s: ckpt.shards[s].size)
            if ckpt.shards[biggest].size > max_disk:
                raise SpectrumError(
                    f"--max-disk {human_bytes(max_disk)} is smaller than shard {biggest} "
                    f"({human_bytes(ckpt.shards[biggest].size)}); raise it to at least that")
            if p.need_at_once > max_disk:
                raise SpectrumError(
                    f"--max-disk {human_bytes(max_disk)} is too small: the scan needs shards "
                    f"{', '.join(p.need_shards)} on disk at once ({human_bytes(p.need_at_once)})")
        rate = None
        if estimate and p.flops:
            rate = svd_rate(device, int(min(1024, max(64, max(
                min(s.shape) for j in p.jobs for s in j.matrices)))))
        for line in plan_lines(p, repo, ckpt, device, rate, delete, max_disk):
            say(line)
        source = HubSource(repo, ckpt, p.needed, delete, max_disk, say=say, chatty=opts.progress)
        try:
            return scan_checkpoint(ckpt, source, opts)
        except HubDownloadError as exc:
            paths = results_paths(Path(opts.out_dir), opts.name or ckpt.name)
            kept = len(_finished(paths["journal"], False))
            raise SpectrumError(
                f"{exc.reason}; {kept} modules are kept in {os.path.relpath(paths['journal'])} "
                "(results written); run the same command again to resume") from None
        finally:
            source.close()
