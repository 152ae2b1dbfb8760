"""One rank's part of a Hub scan under torchrun: its own whole shards, downloaded into the node's
cache (shared by the node's ranks, never the same shard twice), within its part of --max-disk.

The CLI calls this instead of `hub_scan.scan_hub`, whose public signature knows no group.
"""

from __future__ import annotations

import dataclasses
import logging

from ..driver import prepare_scan
from ..hub_scan import HubRequest, check_disk, hub_needs, needs_lines, quiet_library_logs
from ..layout.specs import TensorJob
from ..options import ScanOptions, ScanReport
from ..source.hub.downloads import HubSource
from ..units import human_bytes
from .env import node_share
from .group import Group
from .ranked import scan_ranked

log = logging.getLogger(__name__)


def scan_hub_ranked(hub: HubRequest, opts: ScanOptions, group: Group) -> ScanReport:
    """This rank's share of whole shards (the split never cuts one), only those downloaded;
    `max_disk` is per node, split evenly between its ranks (`node_share`)."""
    delete, max_disk = hub.delete, hub.max_disk
    with quiet_library_logs():
        ckpt, repo = group.agree(hub.open)
        p = group.agree(lambda: prepare_scan(ckpt, opts))
        budget = node_share(max_disk, group.ranks)
        what = (
            f" (this rank's part of --max-disk {human_bytes(max_disk)} for "
            f"{group.ranks.local_world} ranks on a node)"
            if max_disk is not None
            else ""
        )
        sources: list[HubSource] = []

        def source_for(jobs: list[TensorJob], finished: set[str]) -> HubSource:
            hp = hub_needs(dataclasses.replace(p, jobs=jobs, finished=finished), repo)
            check_disk(hp, ckpt, budget, what)
            if group.rank == 0:
                for line in needs_lines(hp, repo, ckpt, "rank 0", None, delete, budget):
                    log.info("%s", line)  # the CLI's log lines say whose (rank 0's share)
                if max_disk is not None and budget is not None:
                    log.info(
                        "--max-disk %s is per node: each of its %d ranks keeps within %s",
                        human_bytes(max_disk),
                        group.ranks.local_world,
                        human_bytes(budget),
                    )
            sources.append(HubSource(repo, ckpt, hp.needed, delete, budget))
            return sources[-1]

        try:
            return scan_ranked(p, group, opts, source_for, allow_split=False)
        finally:
            for source in sources:
                source.close()
