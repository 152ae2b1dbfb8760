"""Every huggingface_hub or network failure as one line a user can act on."""

from __future__ import annotations

import errno
import importlib

from ...errors import HubDownloadError  # noqa: F401  (raised by downloads.py)


def network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP library this huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "RequestException"),
    ):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def hf():
    """huggingface_hub's pieces, imported on first use (the local scan never needs them)."""
    import huggingface_hub
    from huggingface_hub import constants, errors, utils

    return huggingface_hub, constants, errors, utils


def offline() -> bool:
    _, constants, _, _ = hf()
    return bool(constants.HF_HUB_OFFLINE)


def explain(
    exc: BaseException,
    repo_id: str,
    what: str,
    revision: str | None = None,
    endpoint: str = "the Hub",
) -> str:
    """One line for a failure while fetching `what` (a file name, or 'the revision')."""
    _, _, errors, _ = hf()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    code = f"HTTP {status}" if status else type(exc).__name__
    if isinstance(exc, errors.GatedRepoError) or (
        status in (401, 403) and not isinstance(exc, errors.RepositoryNotFoundError)
    ):
        return (
            f"{repo_id}: access denied ({code}); the repo is gated or private: accept its "
            "terms on the Hub and pass --token (or set HF_TOKEN) for an account with access"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"{repo_id}: no such model repo on {endpoint} ({code}), and no local folder of "
            "that name; if it is private, pass --token or set HF_TOKEN"
        )
    if isinstance(exc, getattr(errors, "DisabledRepoError", ())):
        return f"{repo_id}: access to this repo is disabled on the Hub ({code})"
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{repo_id}: no revision {revision or 'main'!r} (expected a branch, tag or commit)"
    if isinstance(exc, errors.OfflineModeIsEnabled) or (
        offline() and isinstance(exc, (errors.LocalEntryNotFoundError, FileNotFoundError))
    ):
        return (
            f"{repo_id}: HF_HUB_OFFLINE=1 and {what} is not in the Hugging Face cache; "
            "unset HF_HUB_OFFLINE to download it"
        )
    if isinstance(exc, errors.HfHubHTTPError):
        return f"{repo_id}: {endpoint} answered {code} for {what}"
    if isinstance(exc, network_errors()) or isinstance(exc, errors.LocalEntryNotFoundError):
        cause = exc.__cause__ or exc
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return f"{repo_id}: connection to {endpoint} failed while fetching {what} ({detail})"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (
            f"{repo_id}: the disk is full while downloading {what}; free some space, or "
            "scan with --delete-shards / --max-disk"
        )
    if isinstance(exc, OSError) and "consistency check" in str(exc).lower():
        return (
            f"{repo_id}: the download of {what} ended early (the connection dropped); "
            "run again to resume"
        )
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{repo_id}: fetching {what} failed ({type(exc).__name__}: {first_line})"
