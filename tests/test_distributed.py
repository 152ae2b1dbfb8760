"""Scans under torchrun (gloo, 2 CPU processes): the same results and journal guarantees as one
process, resumes across world sizes, and a dying rank stops the run without losing work.
Plus the cost-balanced split, checked without processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from spectrum_stream.distributed.split import imbalance, shared_shards, split
from spectrum_stream.examples.synthetic import write_planted_llama
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.layout.cost import job_cost
from spectrum_stream.layout.specs import MatrixSpec, TensorJob, TensorRef
from spectrum_stream.results.spectra import read_spectra
from spectrum_stream.source.header import TensorEntry

NAME = "planted"
BASE = f"snr_results_{NAME}"
SRC = str(Path(__file__).parent.parent / "src")
# gloo on loopback only: the ranks never use another address
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": SRC,
    "HF_HUB_OFFLINE": "1",
    "GLOO_SOCKET_IFNAME": "lo",
}
TIMEOUT = 90


# -- the split, without processes ----------------------------------------------------------------


def _job(name: str, shard: str, shape, aux_shard: str | None = None) -> TensorJob:
    entry = TensorEntry(name, "BF16", shape, 0, 2 * shape[0] * shape[1])
    aux = (
        (TensorRef(name + "_scale", aux_shard, TensorEntry(name, "F32", (1, 1), 0, 4)),)
        if aux_shard
        else ()
    )
    return TensorJob(TensorRef(name, shard, entry), (MatrixSpec(name, "t", tuple(shape)),), aux=aux)


def test_split_balances_cost_and_keeps_shards_whole_where_it_can():
    import random

    rng = random.Random(7)
    jobs = [
        _job(f"s{s}.t{t}", f"shard{s:02d}", (rng.choice([64, 128, 256]), rng.choice([64, 512])))
        for s in range(12)
        for t in range(rng.randint(3, 9))
    ]
    total = sum(job_cost(j) for j in jobs)
    for allow in (False, True):
        shares = split(jobs, 4, allow_split=allow)
        assigned = sorted(i for s in shares for i in s.jobs)
        assert assigned == list(range(len(jobs)))  # every job once
        assert sum(s.cost for s in shares) == total
        assert all(s.jobs == sorted(s.jobs) for s in shares)  # file order within a rank
        assert split(jobs, 4, allow_split=allow)[2].jobs == shares[2].jobs  # deterministic
    whole = split(jobs, 4, allow_split=False)
    assert not shared_shards(whole)
    cut = split(jobs, 4, allow_split=True)
    assert imbalance(cut) <= max(0.02, imbalance(whole))
    # one huge shard and three small ones: only a cut can balance 2 ranks
    jobs = [_job(f"big{t}", "a", (256, 256)) for t in range(8)] + [_job("small", "b", (64, 64))]
    assert imbalance(split(jobs, 2, allow_split=False)) > 0.9
    shares = split(jobs, 2, allow_split=True)
    assert imbalance(shares) < 0.15 and shared_shards(shares) == {"a"}


def test_split_skips_finished_work_and_keeps_tied_shards_together():
    jobs = [
        _job("x", "a", (128, 128), aux_shard="b"),
        _job("y", "b", (128, 128)),
        _job("z", "c", (128, 128)),
        _job("w", "d", (128, 128)),
    ]
    shares = split(jobs, 2, {"w"}, allow_split=False)
    owner = {i: s.rank for s in shares for i in s.jobs}
    assert 3 not in owner  # nothing left to do in it
    assert owner[0] == owner[1]  # x reads b too: a and b go to one rank
    assert sum(s.cost for s in shares) == 3 * 128**3


# -- torchrun ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist") / NAME
    write_planted_llama(folder, layers=6, hidden=192, intermediate=384, vocab=384, shards=3)
    return folder


def torchrun(ckpt: Path, out: Path, *more: str, n: int = 2) -> list[str]:
    """--standalone: torchrun binds its store to a free port itself and names the run with a
    fresh id, so two copies of this suite on one machine never meet."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(n),
        "-m",
        "spectrum_stream",
        "scan",
        str(ckpt),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--peer-timeout",
        "60",
        *more,
    ]


def one_process(ckpt: Path, out: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spectrum_stream",
        "scan",
        str(ckpt),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        *more,
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one")
    r = run(one_process(ckpt, out))
    assert r.returncode == 0, r.stderr
    _, records, _ = read_journal(out / f"{BASE}.journal.jsonl")
    return {
        "out": out,
        "records": records,
        "results": (out / f"{BASE}.json").read_text(),
        "sorted": (out / f"{BASE}_sorted.json").read_text(),
        "spectra": read_spectra(out / f"{BASE}_spectra.safetensors"),
    }


def same_results(out: Path, reference: dict) -> None:
    assert (out / f"{BASE}.json").read_text() == reference["results"]  # byte for byte
    assert (out / f"{BASE}_sorted.json").read_text() == reference["sorted"]
    # every module's singular values, gathered from the ranks (or their journals), once each
    spectra, shapes = read_spectra(out / f"{BASE}_spectra.safetensors")
    ref_spectra, ref_shapes = reference["spectra"]
    assert set(spectra) == set(ref_spectra) and shapes == ref_shapes
    assert all(np.array_equal(spectra[k], ref_spectra[k]) for k in ref_spectra)


def no_traceback_of_ours(text: str) -> None:
    assert not [
        line
        for line in text.splitlines()
        if line.lstrip().startswith("File ") and "spectrum_stream" in line
    ], text


def rank_journals(out: Path) -> list[Path]:
    return sorted(out.glob(f"{BASE}.rank*-of-*.journal.jsonl"))


def journaled(out: Path) -> dict[str, dict]:
    """Every record of every journal in `out`; asserts no module is journaled as done twice."""
    records: dict[str, dict] = {}
    for path in [out / f"{BASE}.journal.jsonl", *rank_journals(out)]:
        if path.is_file():
            data = path.read_bytes()
            keys = [json.loads(x)["key"] for x in data.split(b"\n")[1:] if x.strip()]
            assert len(keys) == len(set(keys)), path
            _, recs, _ = read_journal(path)
            records.update(recs)
    return records


def test_two_ranks_give_the_one_process_results(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    r = run(torchrun(ckpt, out))
    assert r.returncode == 0, r.stderr
    planned = len(reference["records"])
    assert f"on 2 ranks (cpu): {planned} modules this run, 0 resumed" in r.stdout
    assert r.stdout.count("Scanned ") == 1  # rank 0 alone prints the summary
    shares = [line for line in r.stderr.splitlines() if line.startswith("[rank 0/2] rank ")]
    assert len(shares) == 2 and "[rank 0/2] split: heaviest rank" in r.stderr
    same_results(out, reference)
    # the main journal holds every module once; the rank journals were folded in and removed
    _, records, _ = read_journal(out / f"{BASE}.journal.jsonl")
    assert set(records) == set(reference["records"]) and not rank_journals(out)
    assert all(records[k]["snr"] == v["snr"] for k, v in reference["records"].items())


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _start_and_kill(cmd: list[str], out: Path, lines: int, which: set[int]):
    """Start torchrun; once the rank journals hold `lines` records, SIGKILL the ranks in `which`
    (and torchrun too when that is every rank). Returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + TIMEOUT
    count = lambda: sum(max(0, p.read_bytes().count(b"\n") - 1) for p in rank_journals(out))
    try:
        while count() < lines and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the scan ended before the kill"
        victims = [p for p in _descendants(proc.pid) if _rank_of(p) in which]
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        if which == {0, 1}:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr


def test_sigkill_both_ranks_then_one_process_resumes(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    planned = len(reference["records"])
    rc, _, _ = _start_and_kill(torchrun(ckpt, out), out, 6, {0, 1})
    assert rc != 0
    kept = journaled(out)
    assert 6 <= len(kept) < planned and len(rank_journals(out)) == 2
    for key, rec in kept.items():  # what a kill leaves is whole, and right
        assert rec["snr"] == reference["records"][key]["snr"]
    # results can be brought up to date from the rank journals alone
    r = run([sys.executable, "-m", "spectrum_stream", "rebuild", str(rank_journals(out)[0])])
    assert r.returncode == 0 and f"{len(kept)} modules, 0 failed" in r.stdout, r.stderr
    r = run(one_process(ckpt, out))
    assert r.returncode == 0, r.stderr
    assert (
        f"{planned - len(kept)} modules this run, {len(kept)} resumed from the journal" in r.stdout
    )
    same_results(out, reference)
    assert not rank_journals(out)  # folded into the main journal
    assert len(journaled(out)) == planned


def test_a_one_process_journal_is_resumed_by_two_ranks(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lines = (reference["out"] / f"{BASE}.journal.jsonl").read_bytes().split(b"\n")
    k = 17
    (out / f"{BASE}.journal.jsonl").write_bytes(
        b"\n".join(lines[: 1 + k]) + b"\n" + lines[1 + k][:9]
    )
    log = f"{BASE}.spectra.bin"  # the values its lines point to
    (out / log).write_bytes((reference["out"] / log).read_bytes())
    r = run(torchrun(ckpt, out))
    assert r.returncode == 0, r.stderr
    planned = len(reference["records"])
    assert f"{planned - k} modules this run, {k} resumed from the journal" in r.stdout
    same_results(out, reference)
    assert len(journaled(out)) == planned and not rank_journals(out)


def test_a_rank_that_dies_stops_the_run_and_the_rerun_resumes(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr = _start_and_kill(torchrun(ckpt, out), out, 4, {1})
    assert rc != 0
    no_traceback_of_ours(stderr + stdout)
    ours = [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(ours) <= 1, stderr  # rank 0 says how to resume (if torchrun let it)
    assert all("run the same command again" in line for line in ours)
    kept = journaled(out)
    assert kept
    r = run(torchrun(ckpt, out))
    assert "terminate called" not in r.stderr, r.stderr  # no rank aborts in torch's C++
    assert r.returncode == 0, r.stderr
    assert f"{len(kept)} resumed from the journal" in r.stdout
    same_results(out, reference)


def test_bad_input_on_one_rank_is_one_line_for_all(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # rank 1's own journal is not a journal: every rank sees it, one line says so
    (out / f"{BASE}.rank1-of-2.journal.jsonl").write_text("not a journal\n")
    r = run(torchrun(ckpt, out))
    assert r.returncode != 0
    no_traceback_of_ours(r.stderr + r.stdout)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a spectrum-stream journal" in errors[0], r.stderr
    assert not (out / f"{BASE}.json").exists()


def rank_exit_codes(torchrun_stderr: str) -> dict[int, int]:
    """Each failed rank's exit code, from torchrun's failure report."""
    found = re.findall(
        r"rank\s+: (\d+) \(local_rank: \d+\)\n\s+exitcode\s+: (-?\d+)", torchrun_stderr
    )
    return {int(rank): int(code) for rank, code in found}


def test_ctrl_c_twice_exits_130_on_every_rank(ckpt, reference, tmp_path):
    """The terminal's SIGINT, then torchrun's forwarded one: every rank exits 130 (not killed
    by SIGINT, not aborted in C++), rank 0 says how to resume, what is journaled is right.
    (That a rerun resumes from such journals, the tests above and bench/soak_torchrun.py show.)"""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        torchrun(ckpt, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + TIMEOUT
    count = lambda: sum(max(0, p.read_bytes().count(b"\n") - 1) for p in rank_journals(out))
    try:
        while count() < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the scan ended before the interrupt"
        ranks = [p for p in _descendants(proc.pid) if _rank_of(p) is not None]
        assert len(ranks) == 2
        for _ in range(2):
            for pid in ranks:
                os.kill(pid, signal.SIGINT)
            time.sleep(0.01)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
    assert "terminate called" not in stderr, stderr
    assert rank_exit_codes(stderr) == {0: 130, 1: 130}, stderr
    no_traceback_of_ours(stderr)
    ours = [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(ours) == 1 and ours[0].startswith("interrupted: every rank's"), stderr
    kept = journaled(out)
    assert kept and len(rank_journals(out)) == 2
    assert all(rec["snr"] == reference["records"][k]["snr"] for k, rec in kept.items())


# -- two nodes that share nothing but the rendezvous ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agents(nodes: list[Path], *more: str) -> list[subprocess.Popen]:
    """One torchrun agent per node folder (one rank each), c10d rendezvous on 127.0.0.1 hosted
    by the first; each node scans its own copy of the checkpoint into its own out-dir.

    The rendezvous port is picked free and released before the first agent binds it: if another
    process takes it meanwhile, the first agent fails at once and a new port is tried."""
    for _ in range(3):
        port, run_id = _free_port(), f"spectrum-test-{uuid.uuid4().hex}"
        procs = []
        for i, node in enumerate(nodes):
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(len(nodes)),
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(i),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                run_id,
                "--rdzv-conf",
                f"is_host={1 if i == 0 else 0}",
                "--local-addr",
                "127.0.0.1",
                "-m",
                "spectrum_stream",
                "scan",
                NAME,
                "--out-dir",
                "out",
                "--device",
                "cpu",
                "--quiet",
                "--peer-timeout",
                "8",
                *more,
            ]
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=node,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=ENV,
                )
            )
            if i == 0:
                time.sleep(0.5)  # the host's store first
                if procs[0].poll() is not None:
                    break
        if procs[0].poll() is None or procs[0].returncode == 0:
            return procs
        for proc in procs:
            proc.kill()
            proc.communicate()
    raise AssertionError("no free rendezvous port in three tries")


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    done = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=2 * TIMEOUT)
            done.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                for pid in _descendants(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.communicate()
    return done


def test_two_nodes_with_their_own_folders_then_killing_one_resumes(ckpt, reference, tmp_path):
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    for node in nodes:
        shutil.copytree(ckpt, node / NAME)  # each node its own copy: nothing shared on disk
    procs = _agents(nodes)
    deadline = time.monotonic() + TIMEOUT
    count = lambda: sum(
        max(0, p.read_bytes().count(b"\n") - 1)
        for node in nodes
        for p in rank_journals(node / "out")
    )
    while count() < 6 and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert all(p.poll() is None for p in procs), "the scan ended before the kill"
    victims = [*_descendants(procs[1].pid), procs[1].pid]  # the whole second node
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    (rc0, out0, err0), (rc1, _, _) = _finish(procs)
    assert rc0 != 0 and rc1 != 0
    assert "terminate called" not in err0, err0
    no_traceback_of_ours(err0 + out0)
    ours = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "gave no sign of life" in ours[0], err0
    assert "run the same command again" in ours[0]
    kept = {k for node in nodes for k in journaled(node / "out")}
    assert kept and not (nodes[0] / "out" / f"{BASE}.json").exists()

    done = _finish(_agents(nodes))
    assert [rc for rc, _, _ in done] == [0, 0], [err for _, _, err in done]
    (main,) = [i for i, (_, stdout, _) in enumerate(done) if "Scanned " in stdout]  # rank 0
    stdout = done[main][1]
    assert f"{len(kept)} resumed from the journal" in stdout, stdout
    same_results(nodes[main] / "out", reference)  # every record and value came over the wire
    assert not [p for node in nodes for p in rank_journals(node / "out")]  # all gathered
    assert not (nodes[1 - main] / "out" / f"{BASE}.json").exists()
    for _, _, stderr in done:
        assert "terminate called" not in stderr
