"""Scanning straight from the Hugging Face Hub, shard by shard, within a disk budget.

1. `open_hub` (source/hub/headers.py) resolves the revision to a commit, reads the index and every shard's
   header with HTTP range requests (or from the cache) and checks them like local headers: no
   weights move yet.
2. `scan_hub` (here) makes the scan's plan once and logs what it means for the Hub (matrices, bytes, shards, an estimated time on the device).
3. `HubSource` (source/hub/downloads.py) feeds the usual scan loop: one background thread downloads the
   shards one at a time into the normal Hugging Face cache, one shard ahead of the scan, and with
   `delete_shards` removes each shard once the scan has journaled every tensor that needs it.
   `max_disk` bounds the bytes of shards this scan keeps on disk at once.

A failed download stops the scan with one line; what was journaled is kept and a rerun resumes,
fetching only shards that still hold unscanned modules.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .driver import ScanSetup, prepare_scan, run_setup
from .errors import SpectrumError
from .journal.ranks import finished_everywhere
from .kernel.calibrate import calibration_size, svd_rate
from .layout.cost import job_cost
from .options import ScanOptions, ScanReport
from .read.device import resolve_device
from .source.checkpoint import Checkpoint
from .source.hub.downloads import HubSource
from .source.hub.errors import HubDownloadError
from .source.hub.headers import open_hub
from .source.hub.repo import HubRepo
from .units import human_bytes, human_seconds

if TYPE_CHECKING:
    from .distributed.group import Group

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The plan.


@dataclass
class HubNeeds:
    """What a scan's plan means for the Hub, computed before any weight moves."""

    scan: ScanSetup
    done: int  # modules already in the journal
    weight_bytes: int
    shard_bytes: int  # all shards of the checkpoint
    needed: list[str]  # shards still holding unscanned modules, in scan order
    cached: list[str]  # of those, already in the HF cache
    download_bytes: int
    need_at_once: int  # bytes of shards the scan must hold at once, with deletion
    need_shards: list[str]  # the shards that make need_at_once
    flops: float  # m*n*k summed over the matrices left


def hub_needs(p: ScanSetup, repo: HubRepo) -> HubNeeds:
    jobs, done, ckpt = p.jobs, p.finished, p.ckpt
    todo = [any(s.key not in done for s in j.matrices) for j in jobs]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, (job, wanted) in enumerate(zip(jobs, todo)):
        for shard in job.shards:
            last[shard] = i  # the scan releases a shard after the last job that uses it
            if wanted:
                first.setdefault(shard, i)
    needed = sorted(first, key=first.__getitem__)
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
    flops = sum(job_cost(job, done) for job in jobs)
    cached = [s for s in needed if repo.cached(s) is not None]
    return HubNeeds(
        scan=p,
        done=sum(1 for j in jobs for s in j.matrices if s.key in done),
        weight_bytes=sum(j.nbytes for j in jobs),
        shard_bytes=sum(sizes.values()),
        needed=needed,
        cached=cached,
        download_bytes=sum(sizes[s] for s in needed if s not in cached),
        need_at_once=need_at_once,
        need_shards=need_shards,
        flops=flops,
    )


def needs_lines(
    p: HubNeeds,
    repo: HubRepo,
    ckpt: Checkpoint,
    device,
    rate: float | None,
    delete: bool,
    max_disk: int | None,
) -> list[str]:
    n_shards = len(ckpt.shards)
    lines = [
        f"Hub: {repo.repo_id} at {repo.revision} (commit {repo.commit[:12]}), index and "
        f"{n_shards} shard header{'s' if n_shards != 1 else ''} read, no weights downloaded yet",
        f"Plan: {p.scan.matrices} matrices, {human_bytes(p.weight_bytes)} of weights in {n_shards} "
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
        disk += (
            f", each deleted once scanned: at most about "
            f"{human_bytes(min(ahead, max_disk or ahead))} of shards on disk at once"
        )
    lines.append(f"Downloads: {what}, {disk}")
    if rate:
        lines.append(
            f"Estimate on {device}: about {human_seconds(p.flops / rate)} of decomposition for "
            f"{p.scan.matrices - p.done} matrices (calibrated here); downloads run alongside"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# The whole Hub scan.


@contextmanager
def quiet_library_logs():
    """huggingface_hub logs retries and warnings itself; this tool reports failures in one line."""
    from huggingface_hub.utils import logging as hf_logging  # its import sets the level

    logger = hf_logging.get_logger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def scan_hub(
    repo_id: str,
    opts: ScanOptions | None = None,
    *,
    revision: str | None = None,
    token: str | None = None,
    delete_shards: bool = False,
    max_disk: int | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    estimate: bool = True,
    **overrides: Any,
) -> ScanReport:
    """Scan a Hub model repo shard by shard; resumes from the journal like a local scan.

    `max_disk` (bytes) implies `delete_shards`. `endpoint` and `cache_dir` default to
    huggingface_hub's (HF_ENDPOINT, HF_HOME / HF_HUB_CACHE); `token` to HF_TOKEN or the saved login.
    The plan is logged at INFO level (logger `spectrum_stream`), warnings at WARNING.
    Other keyword arguments override fields of `opts`, as in `scan`: `scan_hub(r, opts, device="cpu")`.
    """
    hub = HubRequest(repo_id, revision, token, delete_shards, max_disk, endpoint, cache_dir)
    return scan_hub_group(
        hub, dataclasses.replace(opts or ScanOptions(), **overrides), None, estimate
    )


@dataclass(frozen=True)
class HubRequest:
    """Which Hub repo to scan and how to keep its shards: what `scan_hub`'s keywords say, as one
    value for the plain scan and a torchrun rank's (distributed/hub.py)."""

    repo_id: str
    revision: str | None = None
    token: str | None = None
    delete_shards: bool = False
    max_disk: int | None = None  # bytes; implies delete_shards
    endpoint: str | None = None
    cache_dir: str | Path | None = None

    @property
    def delete(self) -> bool:
        return self.delete_shards or self.max_disk is not None

    def open(self) -> tuple[Checkpoint, HubRepo]:
        return open_hub(self.repo_id, self.revision, self.token, self.endpoint, self.cache_dir)


def scan_hub_group(
    hub: HubRequest, opts: ScanOptions, group: Group | None, estimate: bool = True
) -> ScanReport:
    """`scan_hub` for one rank of a torchrun job (the CLI's): with `group`, this rank scans its
    share of whole shards, downloading only those (distributed/hub.py); `max_disk` is then per
    node, split evenly between its ranks. Without one, the plain scan."""
    if group is not None:
        from .distributed.hub import scan_hub_ranked

        return scan_hub_ranked(hub, opts, group)
    delete, max_disk = hub.delete, hub.max_disk
    with quiet_library_logs():
        device = resolve_device(opts.device)
        ckpt, repo = hub.open()
        p = hub_needs(prepare_scan(ckpt, opts), repo)
        check_disk(p, ckpt, max_disk)
        rate = None
        if estimate and p.flops:
            rate = svd_rate(device, calibration_size(p.scan.jobs), opts.method)
        for line in needs_lines(p, repo, ckpt, device, rate, delete, max_disk):
            log.info(line)
        source = HubSource(repo, ckpt, p.needed, delete, max_disk)
        try:
            return run_setup(p.scan, source, opts)
        except HubDownloadError as exc:
            kept = len(finished_everywhere(p.scan.paths.journal))
            raise SpectrumError(
                f"{exc.reason}; {kept} modules are kept in {os.path.relpath(p.scan.paths.journal)} "
                "(results written); run the same command again to resume"
            ) from None
        finally:
            source.close()


def check_disk(p: HubNeeds, ckpt: Checkpoint, max_disk: int | None, what: str = "") -> None:
    """Refuse a --max-disk budget the scan cannot keep (`what` says whose budget it is)."""
    if max_disk is None or not p.needed:
        return
    biggest = max(p.needed, key=lambda s: ckpt.shards[s].size)
    if ckpt.shards[biggest].size > max_disk:
        raise SpectrumError(
            f"--max-disk {human_bytes(max_disk)}{what} is smaller than shard {biggest} "
            f"({human_bytes(ckpt.shards[biggest].size)}); raise it to at least that"
        )
    if p.need_at_once > max_disk:
        raise SpectrumError(
            f"--max-disk {human_bytes(max_disk)}{what} is too small: the scan needs shards "
            f"{', '.join(p.need_shards)} on disk at once ({human_bytes(p.need_at_once)})"
        )
