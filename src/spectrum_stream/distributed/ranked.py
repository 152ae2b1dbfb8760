"""The scan of one rank under torchrun: agree on what is done, take a share, journal it in the
rank's own journal, then gather every record to rank 0, which writes the results once.

1. Each rank reads every journal it can see (the main one and all rank journals, any world
   size); the finished sets are gathered, so out-dirs need not be shared between nodes.
2. Every rank computes the same cost-balanced split (split.py) of the work left.
3. Rank R of W appends to `<base>.rank<R>-of-<W>.journal.jsonl` under its own lock; rank 0 also
   holds the main lock, so a one-process scan of the same results refuses meanwhile.
4. When all ranks are done, rank 0 gathers the records over torch.distributed, appends those the
   main journal lacks to it (one write, one fsync) and writes the results files; then rank
   journals whose records are all in the main journal are removed.
A failure anywhere stops every rank (group.py); what each rank journaled stays, a rerun resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

import numpy as np

from ..driver import ScanSetup, in_job_order, prepare_scan
from ..errors import (
    AlreadyReported,
    HubDownloadError,
    PeerFailed,
    RanksInterrupted,
    ScanInterrupted,
    SpectrumError,
)
from ..journal.journal import Journal, finished_keys
from ..journal.lock import ScanLock
from ..journal.ranks import (
    merge_records,
    missing_from,
    rank_journal,
    rank_journals,
    rank_lock,
    read_all,
    remove_journal,
)
from ..journal.spectra_log import SpectraLog, relocate, spectrum_of
from ..layout.specs import TensorJob
from ..options import ScanOptions, ScanReport
from ..read.device import resolve_device
from ..results.files import write_results
from ..scanloop import run_jobs
from ..source.checkpoint import open_local
from ..source.shards import LocalSource, ShardSource
from ..units import human_bytes
from .group import Group
from .split import share_lines, split

log = logging.getLogger(__name__)

SourceFor = Callable[[list[TensorJob], set[str]], ShardSource]


def _stopped_by(group: Group, failure: str) -> None:
    """This rank stops because another failed (that rank printed its own line): rank 0 says
    which and why, in its log; every rank exits 1."""
    if group.rank == 0:
        log.warning(
            "stopped: %s; every rank's finished modules are journaled, run the same command "
            "again to resume",
            failure if failure.startswith("rank ") else f"a rank failed: {failure}",
        )
    raise AlreadyReported(code=1)


def _remove_journals(main) -> None:
    for path in [main, *rank_journals(main)]:
        remove_journal(path)


def _remove_gathered(paths: list) -> None:
    """Remove rank journals whose records rank 0 has gathered into its main journal (best
    effort): those this node read at the start, whose headers all matched this scan."""
    for path in paths:
        with contextlib.suppress(OSError):
            remove_journal(path)


def scan_ranked(
    p: ScanSetup, group: Group, opts: ScanOptions, source_for: SourceFor, allow_split: bool = True
) -> ScanReport:
    """This rank's part of the scan of plan `p`; rank 0's report holds every rank's totals."""
    r, w = group.rank, group.world
    started = time.perf_counter()
    device = group.agree(lambda: resolve_device(opts.device))
    group.agree(lambda: opts.check(device.type))
    with contextlib.ExitStack() as stack:

        def lock():
            stack.enter_context(ScanLock(rank_lock(p.paths.lock, r, w)))
            if r == 0:
                stack.enter_context(ScanLock(p.paths.lock))

        group.agree(lock)
        if opts.fresh:  # every node's first rank clears the journals it sees, before any opens one
            group.agree(lambda: _remove_journals(p.paths.journal), only=group.ranks.local_rank == 0)
        earlier = rank_journals(p.paths.journal)  # read below: every record in them is sent
        seen = group.agree(lambda: read_all(p.paths.journal, p.header))
        everyone = group.all_gather(sorted(finished_keys(seen)))
        finished = set().union(*map(set, everyone))
        owner = {}
        for rank, keys in reversed(list(enumerate(everyone))):
            owner.update(dict.fromkeys(keys, rank))  # the lowest rank that saw a key sends it
        shares = split(p.jobs, w, finished, allow_split=allow_split)
        if r == 0:
            for line in share_lines(shares, human_bytes):
                log.info(line)
        jobs = [p.jobs[i] for i in shares[r].jobs]
        source = group.agree(lambda: source_for(jobs, finished))
        journal = group.agree(lambda: Journal.open(rank_journal(p.paths.journal, r, w), p.header))
        report = ScanReport(p.name, p.paths, str(device))
        try:
            run_jobs(
                p.name,
                jobs,
                journal,
                finished,
                source,
                device,
                opts,
                report,
                desc=f"scan {p.name} [rank {r} of {w}]",
            )
            group.wait_for_peers()
        except (ScanInterrupted, KeyboardInterrupt):  # the loop's, or Ctrl-C while waiting
            failure = group.peer_failure()
            if failure is not None:  # torchrun stopped this rank because a peer failed
                _stopped_by(group, failure)
            if r != 0:
                raise AlreadyReported(code=130) from None
            raise RanksInterrupted(
                report,
                (
                    f"interrupted: every rank's finished modules are kept in its journal beside "
                    f"{os.path.relpath(p.paths.journal)} ({os.path.basename(journal.path)} and "
                    f"{w - 1} more); run the same command again to resume"
                ),
            ) from None
        except PeerFailed as exc:
            _stopped_by(group, exc.message)
        except AlreadyReported:
            raise
        except Exception as exc:
            if not isinstance(exc, (SpectrumError, HubDownloadError, OSError)):
                group.mark_failed(f"rank {r}: {type(exc).__name__}: {exc}")
                raise
            what = getattr(exc, "reason", None) or str(exc)
            group.mark_failed(f"rank {r}: {what}")
            if "run the same command again" not in what:
                what += (
                    "; every rank's finished modules are journaled, run the same command "
                    "again to resume"
                )
            raise SpectrumError(f"rank {r}: {what}") from None
        finally:
            journal.close()
        mine = dict(journal.records)
        merge_records(mine, {k: seen[k] for k in seen if owner.get(k) == r})
        folder = p.paths.journal.parent
        values = {}  # singular values travel with their records: out-dirs need not be shared
        for rec in mine.values():
            found = spectrum_of(folder, rec)
            if found is not None:
                values[rec["key"]] = found.tobytes()
        gathered = group.gather(
            {
                "records": list(mine.values()),
                "scanned": report.scanned,
                "failed": report.failed,
                "device": str(device),
                "values": values,
            }
        )
        result = None
        if r == 0:

            def write():
                records: dict[str, dict] = {}
                for part in gathered:
                    merge_records(records, {rec["key"]: rec for rec in part["records"]})
                values: dict[str, bytes] = {}  # from the part whose record won, for each key
                for part in gathered:
                    for rec in part["records"]:
                        if records.get(rec["key"]) is rec and rec["key"] in part["values"]:
                            values[rec["key"]] = part["values"][rec["key"]]
                ordered = in_job_order(records, p.jobs)
                with contextlib.ExitStack() as stack:
                    main = Journal.open(p.paths.journal, p.header)
                    stack.callback(main.close)
                    log = SpectraLog(p.paths.spectra_log)
                    stack.callback(log.close)
                    missing = missing_from(main, ordered)
                    main.extend(
                        relocate(
                            missing,
                            lambda rec: (
                                np.frombuffer(values[rec["key"]], dtype=np.float32)
                                if rec["key"] in values
                                else None
                            ),
                            log,
                        )
                    )
                return write_results(
                    in_job_order(main.records, p.jobs), p.paths, opts.names, opts.grouping
                )

            result = write
        results = group.agree(result or (lambda: None))
        # rank 0's main journal now holds every record sent: this rank's journal and those this
        # node read at the start can go, also on a node whose out-dir rank 0 does not see
        _remove_gathered([journal.path])
        if group.ranks.local_rank == 0:
            _remove_gathered(earlier)
    if r != 0:
        return report
    assert gathered is not None  # rank 0 gathers
    devices = sorted({part["device"] for part in gathered})
    total = ScanReport(p.name, p.paths, f"{w} ranks ({', '.join(devices)})")
    total.planned = p.matrices
    total.skipped = sum(1 for j in p.jobs for s in j.matrices if s.key in finished)
    total.scanned = sum(part["scanned"] for part in gathered)
    total.failed = [
        (key, f"{reason} (rank {rank})")
        for rank, part in enumerate(gathered)
        for key, reason in part["failed"]
    ]
    total.results = results
    total.seconds = time.perf_counter() - started
    return total


def scan_local_ranked(path, opts: ScanOptions, group: Group) -> ScanReport:
    """This rank's part of the scan of a local checkpoint (every node sees it at `path`)."""
    ckpt, folder = group.agree(lambda: open_local(path))
    p = group.agree(lambda: prepare_scan(ckpt, opts))
    return scan_ranked(p, group, opts, lambda jobs, finished: LocalSource(folder))
