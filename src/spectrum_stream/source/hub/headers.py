"""A Hub repo's checkpoint from its index, config and shard headers alone: headers are read with
HTTP range requests (or from the cache) and checked like local ones. No weight bytes move here."""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...errors import CheckpointError, SpectrumError
from ..checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint, assemble, load_index, read_config
from ..header import ShardHeader, header_length, parse_header, read_header
from .errors import hf, offline
from .repo import HEADER_TIMEOUT, HubRepo, resolve

FIRST_READ = 100_000  # bytes asked for first: holds the whole header of almost every shard
HEADER_THREADS = 8


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
    _, _, _, utils = hf()
    where = str(_label(repo, filename))
    headers = {**utils.build_hf_headers(token=repo.token), "Accept-Encoding": "identity"}

    def get(first: int, last: int) -> tuple[int | None, bytes]:
        """(file size, bytes first..last); reads no more even from a server ignoring Range."""
        with utils.get_session().stream(
            "GET",
            repo.url(filename),
            timeout=HEADER_TIMEOUT,
            headers={**headers, "Range": f"bytes={first}-{last}"},
        ) as response:
            if response.status_code >= 400:
                response.read()  # small; the error helper wants the body
            utils.hf_raise_for_status(response)
            want, skip = last - first + 1, first if response.status_code == 200 else 0
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= skip + want:
                    break
            return _content_total(response), bytes(data[skip : skip + want])

    size, head = get(0, FIRST_READ - 1)
    if size is None:
        raise CheckpointError(f"{where}: the server did not say how big the file is")
    n = header_length(head, size, where)
    raw = head[8 : 8 + n] if len(head) >= 8 + n else get(8, 8 + n - 1)[1]
    if len(raw) != n:
        raise CheckpointError(f"{where}: the server sent {len(raw)} of the {n} header bytes")
    entries, metadata = parse_header(raw, size - 8 - n, 8 + n, where)
    return ShardHeader(
        _label(repo, filename), size, hashlib.sha256(raw).hexdigest(), entries, metadata
    )


def _shard_header(repo: HubRepo, filename: str, if_missing: str | None = None) -> ShardHeader:
    """From the cache when the shard is there (same bytes, same fingerprint), else remotely;
    `if_missing` is the message for a file the repo does not have."""
    local = repo.cached(filename)
    if local is not None:
        return read_header(local)
    if offline():
        raise SpectrumError(
            f"{repo.repo_id}: HF_HUB_OFFLINE=1 and shard {filename} is not in the Hugging Face "
            "cache; unset HF_HUB_OFFLINE to download it"
        )
    try:
        return remote_header(repo, filename)
    except SpectrumError:
        raise
    except Exception as exc:  # huggingface_hub / network errors
        _, _, errors, _ = hf()
        if if_missing and isinstance(exc, errors.EntryNotFoundError):
            raise SpectrumError(if_missing) from None
        raise repo.fail(exc, filename) from None


def open_hub(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Checkpoint, HubRepo]:
    """The checkpoint of a Hub repo, from its index, config and shard headers only."""
    _, _, errors, _ = hf()
    missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    repo = resolve(repo_id, revision, token, endpoint, cache_dir)
    try:
        index = repo.download(INDEX_NAME, revision=repo.revision)
    except missing:
        index = None  # maybe one model.safetensors
    except Exception as exc:
        if not (offline() and repo.cached(SINGLE_NAME) is not None):
            raise repo.fail(exc, INDEX_NAME) from None
        index = None
    try:
        config = read_config(repo.download("config.json", revision=repo.revision).parent)
    except SpectrumError:  # there, but not a config (a JSON bomb, not an object): refused
        raise
    except Exception:  # optional: a repo without config.json still scans
        config = {}
    if index is None:
        header = _shard_header(
            repo,
            SINGLE_NAME,
            if_missing=(
                f"{repo_id}: not a safetensors model (neither {INDEX_NAME} nor {SINGLE_NAME} at "
                f"revision {repo.revision!r})"
            ),
        )
        ckpt = assemble(repo_id, {SINGLE_NAME: header}, None, config)
        ckpt.config_path = str(_label(repo, "config.json"))
        return ckpt, repo
    weight_map = load_index(index)  # shard names checked here, before any header is asked for
    shards = sorted(set(weight_map.values()))
    with ThreadPoolExecutor(min(HEADER_THREADS, len(shards) or 1)) as pool:
        headers = dict(zip(shards, pool.map(lambda s: _shard_header(repo, s), shards)))
    ckpt = assemble(repo_id, headers, weight_map, config)
    ckpt.config_path = str(_label(repo, "config.json"))
    return ckpt, repo
