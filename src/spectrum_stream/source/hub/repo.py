"""A Hub model repo pinned to one commit: repo ids, revision resolution and file downloads, all
through huggingface_hub's public API (its cache, its refs, its URLs)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import SpectrumError
from .errors import explain, hf, network_errors, offline

HEADER_TIMEOUT = 30.0  # seconds per request while planning

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def is_hub_id(text: str) -> bool:
    """True for `ORG/NAME` that is not an existing local path (a local path always wins)."""
    return (
        bool(_HUB_ID.match(text))
        and ".." not in text
        and "--" not in text
        and not text.endswith((".", "-"))
        and not os.path.exists(text)
    )


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
        huggingface_hub, _, _, _ = hf()
        return huggingface_hub.hf_hub_url(
            self.repo_id, filename, revision=self.commit, endpoint=self.endpoint
        )

    def cached(self, filename: str) -> Path | None:
        huggingface_hub, _, _, _ = hf()
        found = huggingface_hub.try_to_load_from_cache(
            self.repo_id, filename, cache_dir=self.cache_dir, revision=self.commit
        )
        return Path(found) if isinstance(found, str) and os.path.isfile(found) else None

    def download(self, filename: str, quiet: bool = True, revision: str | None = None) -> Path:
        """The file in the HF cache (downloaded unless already there); raises hf's errors.

        `revision` defaults to the pinned commit; planning fetches its small files by the revision
        as asked, so that huggingface_hub records which commit that branch or tag is (its refs),
        and an offline run finds it again.
        """
        huggingface_hub, _, _, _ = hf()
        return Path(
            huggingface_hub.hf_hub_download(
                self.repo_id,
                filename,
                revision=revision or self.commit,
                cache_dir=self.cache_dir,
                token=self.token,
                endpoint=self.endpoint,
                tqdm_class=_Silent if quiet else None,
            )
        )

    def fail(self, exc: BaseException, what: str) -> SpectrumError:
        return SpectrumError(explain(exc, self.repo_id, what, self.revision, self.endpoint))


class _Silent(tqdm):
    """huggingface_hub's per-file bars would tangle with the scan's own bar."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def cached_commit(repo_id: str, revision: str, cache_dir: str) -> str | None:
    """The commit the Hugging Face cache knows `revision` of this repo as (its refs), or None."""
    huggingface_hub, _, _, _ = hf()
    try:
        info = huggingface_hub.scan_cache_dir(cache_dir)
    except Exception:  # no cache yet, or an unreadable one: the cache knows nothing
        return None
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for rev in repo.revisions:
                if revision in rev.refs:
                    return rev.commit_hash
    return None


def resolve(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> HubRepo:
    """Pin `revision` to a commit: ask the Hub, or the cache's refs when offline or unreachable."""
    huggingface_hub, constants, errors, _ = hf()
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    cache_dir = str(Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve())
    asked = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", asked):
        return HubRepo(repo_id, asked, asked, endpoint, cache_dir, token)
    if offline():
        commit = cached_commit(repo_id, asked, cache_dir)
        if commit:
            return HubRepo(repo_id, asked, commit, endpoint, cache_dir, token)
        raise SpectrumError(
            f"{repo_id}: HF_HUB_OFFLINE=1 and revision {asked!r} of this repo is not in the "
            f"Hugging Face cache ({cache_dir}); unset HF_HUB_OFFLINE to download it"
        )
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision, timeout=HEADER_TIMEOUT)
    except Exception as exc:
        if isinstance(exc, network_errors()) and not isinstance(exc, errors.HfHubHTTPError):
            commit = cached_commit(repo_id, asked, cache_dir)  # unreachable: the cache may know
            if commit:
                return HubRepo(repo_id, asked, commit, endpoint, cache_dir, token)
        raise SpectrumError(explain(exc, repo_id, "the revision", revision, endpoint)) from None
    if not info.sha:
        raise SpectrumError(f"{repo_id}: {endpoint} did not say which commit {asked!r} is")
    return HubRepo(repo_id, asked, info.sha, endpoint, cache_dir, token)
