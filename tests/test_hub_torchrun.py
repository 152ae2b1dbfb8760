"""A Hub scan under torchrun (2 CPU ranks on one node, gloo), against the local stand-in server
(tests/hubserver.py): the ranks share the node's cache, download disjoint shards within their
parts of --max-disk, a dropped connection fails its rank with one line while the other stops
cleanly, and the rerun fetches only shards with modules left."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import HubServer

from spectrum_stream.driver import scan
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.options import ScanOptions

REPO = "tiny/llama"
BASE = "snr_results_tiny-llama"
SRC = str(Path(__file__).parent.parent / "src")
TIMEOUT = 120


def shard_sizes(folder: Path) -> dict[str, int]:
    doc = json.loads((folder / "model.safetensors.index.json").read_text())
    return {s: (folder / s).stat().st_size for s in sorted(set(doc["weight_map"].values()))}


@pytest.fixture(scope="module")
def local(llama_dir, tmp_path_factory) -> dict:
    """The one-process local scan every rank's results must add up to: results, and shards."""
    out = tmp_path_factory.mktemp("local-scan")
    report = scan(llama_dir, ScanOptions(out_dir=out, device="cpu", progress=False))
    _, records, _ = read_journal(report.paths.journal)
    return {
        "results": json.loads(report.paths.results.read_text()),
        "shard_of": {k: r["shard"] for k, r in records.items()},
    }


def torchrun_env(hub: HubServer, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        PYTHONPATH=SRC,
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DOWNLOAD_TIMEOUT="10",
    )
    return env


def torchrun(out: Path, max_disk: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "spectrum_stream",
        "scan",
        REPO,
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--max-disk",
        str(max_disk),
        "--peer-timeout",
        "60",
    ]


def journaled(out: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for path in sorted(out.glob(f"{BASE}*.journal.jsonl")):
        records.update({k: r for k, r in read_journal(path)[1].items() if r.get("status") == "ok"})
    return records


def no_traceback_of_ours(text: str) -> None:
    assert "terminate called" not in text, text
    assert not [
        line
        for line in text.splitlines()
        if line.lstrip().startswith("File ") and "spectrum_stream" in line
    ], text


def test_two_ranks_share_a_cache_and_a_disk_budget_and_resume_after_a_drop(
    llama_dir, local, tmp_path
):
    sizes = shard_sizes(llama_dir)
    shards = list(sizes)
    assert len(shards) >= 4
    biggest = max(sizes.values())
    # each rank's half holds the shard being scanned and not quite two: one download at a time
    max_disk = 2 * (biggest + biggest // 2)
    home, out = tmp_path / "hf", tmp_path / "out"
    blobs = home / "hub" / "models--tiny--llama" / "blobs"
    server = HubServer()
    server.add_repo(REPO, llama_dir)
    etag_size = {server.repos[REPO].etags[s]: sizes[s] for s in shards}
    on_disk_at_download: list[int] = []

    def on_download(repo_id: str, filename: str) -> None:
        if filename.endswith(".safetensors"):  # every shard file in the cache, partial included
            asked = server.repos[REPO].etags[filename]
            held = sum(
                etag_size.get(p.name.split(".")[0], 0)
                for p in blobs.glob("*")
                if not p.name.startswith(asked)  # its .incomplete file: counted whole below
            )
            on_disk_at_download.append(held + sizes[filename])

    server.on_download = on_download
    dropped = shards[-2]
    server.faults[dropped] = "drop"
    with server:
        env = torchrun_env(server, home)
        first = subprocess.run(
            torchrun(out, max_disk), capture_output=True, text=True, timeout=TIMEOUT, env=env
        )
        assert first.returncode != 0
        no_traceback_of_ours(first.stderr + first.stdout)
        errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, first.stderr
        (failed_rank,) = re.findall(r"^error: rank (\d): ", errors[0])
        assert dropped in errors[0] and "connection" in errors[0] and "resume" in errors[0]
        if failed_rank == "1":  # rank 0 stopped cleanly, and says which rank failed and why
            (stopped,) = [
                line
                for line in first.stderr.splitlines()
                if line.startswith("[rank 0/2] warning: stopped: rank 1: ")
            ]
            assert dropped in stopped and "connection" in stopped
        # the plan and every other line of ours carries its rank
        ours = [
            line
            for line in first.stderr.splitlines()
            if line.startswith(("[rank", "Hub", "Plan", "Downloads", "warning", "--max-disk"))
        ]
        assert ours and all(re.match(r"\[rank [01]/2\] ", line) for line in ours), ours
        assert any(
            line.startswith("[rank 0/2] --max-disk") and "each of its 2 ranks" in line
            for line in ours
        )
        fetched = server.downloads(REPO)
        shard_fetches = [f for f in fetched if f.endswith(".safetensors") and f != dropped]
        assert len(shard_fetches) == len(set(shard_fetches))  # disjoint: no shard twice
        assert on_disk_at_download and max(on_disk_at_download) <= max_disk
        kept = journaled(out)
        assert kept and not {k for k in kept if local["shard_of"][k] == dropped}
        assert all(
            kept[k]["snr"] == pytest.approx(local["results"][k]["snr"], rel=1e-5)
            for k in kept
            if k in local["results"]
        )

        server.faults.clear()
        on_disk_at_download.clear()
        before = len(server.downloads(REPO))
        again = subprocess.run(
            torchrun(out, max_disk), capture_output=True, text=True, timeout=TIMEOUT, env=env
        )
        assert again.returncode == 0, again.stderr
        no_traceback_of_ours(again.stderr + again.stdout)
        left = {
            s for s in shards if not all(k in kept for k, v in local["shard_of"].items() if v == s)
        }
        refetched = [f for f in server.downloads(REPO)[before:] if f.endswith(".safetensors")]
        assert sorted(refetched) == sorted(left)  # finished shards never come again, each once
        assert max(on_disk_at_download) <= max_disk
        assert f"{len(kept)} resumed from the journal" in again.stdout
    results = json.loads((out / f"{BASE}.json").read_text())
    assert set(results) == set(local["results"])
    for key, rec in local["results"].items():
        assert results[key]["snr"] == pytest.approx(rec["snr"], rel=1e-5), key
