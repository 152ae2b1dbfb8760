"""A Hub model repo for scanning: repo ids, the revision pinned to a commit, one-line errors, and
the index and every shard header read with HTTP range requests (or from the cache), checked like
local headers. No weight bytes move here.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tqdm.auto import tqdm

from .checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint, assemble, load_index, read_config
from .errors import CheckpointError, SpectrumError
from .header import MAX_HEADER_BYTES, ShardHeader, parse_header, read_header

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
