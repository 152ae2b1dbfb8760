"""Resuming: killed scans (SIGKILL at random points, SIGTERM, Ctrl-C, a full disk) end with the same
results as an uninterrupted scan; --fresh starts over; a second scan of the same results refuses.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spectrum_stream.cli import main
from spectrum_stream.driver import scan
from spectrum_stream.journal import journal as journal_mod
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.journal.lock import ScanLock
from spectrum_stream.options import ScanOptions
from spectrum_stream.results.spectra import read_spectra

NAME = "planted"
JOURNAL = f"snr_results_{NAME}.journal.jsonl"
RESULTS = f"snr_results_{NAME}.json"
SORTED = f"snr_results_{NAME}_sorted.json"
SPECTRA = f"snr_results_{NAME}_spectra.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread here and in every scan subprocess: the last bits of an SVD depend on the
    thread count, and "identical results" means identical floats. (Also kinder to a busy CPU.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(planted_dir) -> Path:
    """conftest's planted checkpoint: 44 small matrices over 3 shards, enough modules for kills
    to land mid-scan."""
    assert planted_dir.name == NAME and len(list(planted_dir.glob("*.safetensors"))) == 3
    return planted_dir


@pytest.fixture(scope="module")
def reference(one_thread, ckpt, tmp_path_factory) -> dict:
    """An uninterrupted scan: its results, sorted results, and journal records."""
    out = tmp_path_factory.mktemp("reference")
    report = scan(ckpt, ScanOptions(out_dir=out, progress=False, device="cpu"))
    _, records, _ = read_journal(report.paths.journal)
    return {
        "out": out,
        "results": json.loads(report.paths.results.read_text()),
        "sorted": json.loads(report.paths.sorted.read_text()),
        "spectra": read_spectra(report.paths.spectra),
        "records": records,
        "planned": report.planned,
    }


def cli(ckpt: Path, out: Path, *more: str) -> list[str]:
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
        *more,
    ]


def journal_lines(out: Path) -> int:
    try:
        return (out / JOURNAL).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_and_stop(
    cmd: list[str], out: Path, lines: int, sig: int, delay: float = 0.0, cwd: Path | None = None
) -> subprocess.CompletedProcess | None:
    """Run `cmd`; once the journal holds `lines` lines (and `delay` more seconds), send `sig`.

    Returns None if the scan finished before the signal could land.
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=ENV
    )
    deadline = time.monotonic() + 120
    while journal_lines(out) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if delay:
        time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    return None if proc.returncode == 0 else result


def assert_same_spectra(out: Path, reference: dict, keys=None) -> None:
    """Every kept module's singular values, once each, equal to the uninterrupted scan's."""
    spectra, shapes = read_spectra(out / SPECTRA)
    ref_spectra, ref_shapes = reference["spectra"]
    keys = set(ref_spectra) if keys is None else set(keys)
    assert set(spectra) == keys
    for key in keys:
        assert shapes[key] == ref_shapes[key]
        assert np.array_equal(spectra[key], ref_spectra[key]), key


def assert_same_results(out: Path, reference: dict) -> None:
    assert json.loads((out / RESULTS).read_text()) == reference["results"]
    assert json.loads((out / SORTED).read_text()) == reference["sorted"]
    assert_same_spectra(out, reference)


def test_sigkill_at_random_points_then_resume_gives_identical_results(ckpt, reference, tmp_path):
    rng = random.Random(20240611)
    out = tmp_path / "model_snr_results"
    planned = reference["planned"]
    kills = 0
    # each kill lands at a random journal length (1: just the header) plus a random few ms,
    # leaving at least half of what remains, so that the scan cannot finish before the kill
    for _ in range(3):
        done = journal_lines(out)
        if done >= planned:
            break
        target = rng.randrange(done + 1, done + max(1, (planned + 1 - done) // 2) + 1)
        stopped = start_and_stop(
            cli(ckpt, out, "--quiet"), out, target, signal.SIGKILL, delay=rng.uniform(0, 0.005)
        )
        if stopped is None:
            break
        assert stopped.returncode == -signal.SIGKILL
        kills += 1
        # what a kill leaves behind is readable, and everything in it matches the reference
        header, records, good = read_journal(out / JOURNAL)
        assert header is not None and good == (out / JOURNAL).stat().st_size
        for key, rec in records.items():
            assert rec["snr"] == reference["records"][key]["snr"]
        # the results can be brought up to date from the journal alone, without scanning
        r = CliRunner().invoke(main, ["rebuild", str(out / JOURNAL)])
        assert r.exit_code == 0 and f"{len(records)} modules, 0 failed" in r.stdout
        assert json.loads((out / RESULTS).read_text()) == {
            k: v for k, v in reference["results"].items() if k in records
        }
        assert_same_spectra(out, reference, keys=records)
    assert kills >= 3, "the scan was too fast for the kills to land mid-scan"
    kept_keys = set(read_journal(out / JOURNAL)[1])
    kept = len(kept_keys)
    assert 0 < kept < planned and kept == journal_lines(out) - 1

    final = subprocess.run(cli(ckpt, out), capture_output=True, text=True, timeout=120, env=ENV)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    assert (
        f"{planned - kept} modules this run, {kept} resumed from the journal, 0 failed"
        in final.stdout
    )
    # the progress bar starts where the killed scans stopped
    size = lambda rec: 2 * rec["shape"][0] * rec["shape"][1]
    every = reference["records"].values()
    percent = 100 * sum(size(r) for r in every if r["key"] in kept_keys) / sum(map(size, every))
    first = re.search(r"(\d+)%\|", final.stderr)
    assert first and int(first.group(1)) == round(percent), (first, percent)
    assert_same_results(out, reference)
    _, records, _ = read_journal(out / JOURNAL)
    assert len(records) == planned and journal_lines(out) == planned + 1  # no module twice


def test_progress_bar_starts_where_it_stopped(ckpt, reference, tmp_path):
    """A journal cut after k modules: the bar's first frame shows the bytes of those k done."""
    lines = (reference["out"] / JOURNAL).read_bytes().split(b"\n")
    k = 20
    out = tmp_path / "cut"
    out.mkdir()
    (out / JOURNAL).write_bytes(b"\n".join(lines[: 1 + k]) + b"\n" + lines[1 + k][:15])  # + torn
    log = f"snr_results_{NAME}.spectra.bin"  # the values the first k lines point to, and more
    shutil.copy(reference["out"] / log, out / log)
    done = [json.loads(x) for x in lines[1 : 1 + k]]
    every = [json.loads(x) for x in lines[1:-1]]
    size = lambda rec: 2 * rec["shape"][0] * rec["shape"][1]
    percent = 100 * sum(map(size, done)) / sum(map(size, every))
    r = CliRunner().invoke(main, ["scan", str(ckpt), "--out-dir", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"{reference['planned'] - k} modules this run, {k} resumed from the journal" in r.stdout
    first = re.search(r"(\d+)%\|", r.stderr)
    assert first and int(first.group(1)) == round(percent), (first, percent)
    assert_same_results(out, reference)
    assert journal_lines(out) == reference["planned"] + 1  # the torn line was dropped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_cleanly_and_say_how_to_resume(ckpt, reference, tmp_path, sig):
    out = tmp_path / "model_snr_results"
    stopped = start_and_stop(cli(ckpt, out, "--quiet"), out, 8, sig, cwd=tmp_path)
    assert stopped is not None, "the scan finished before the signal"
    assert stopped.returncode == 130
    assert "Traceback" not in stopped.stderr + stopped.stdout
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1, stopped.stderr
    m = re.fullmatch(
        r"interrupted: (\d+) of (\d+) modules are kept in (.+); run the same command "
        r"again to resume",
        lines[0],
    )
    assert m and int(m.group(2)) == reference["planned"]
    kept = int(m.group(1))
    assert (tmp_path / m.group(3)).resolve() == (out / JOURNAL).resolve()
    _, records, good = read_journal(out / JOURNAL)
    assert len(records) == kept and good == (out / JOURNAL).stat().st_size
    # what finished is in the results files already, written on the way out
    assert json.loads((out / RESULTS).read_text()) == {
        k: v for k, v in reference["results"].items() if k in records
    }
    report = scan(ckpt, ScanOptions(out_dir=out, progress=False, device="cpu"))  # resume
    assert report.skipped == kept and report.scanned == reference["planned"] - kept
    assert_same_results(out, reference)


def test_ctrl_c_with_two_gram_workers_keeps_what_finished(ckpt, tmp_path):
    """Two matrices in flight when Ctrl-C lands: what is journaled is whole and in plan order, and
    the resumed scan ends with the same results."""
    ref = scan(
        ckpt,
        ScanOptions(
            out_dir=tmp_path / "ref", progress=False, device="cpu", method="gram", workers=2
        ),
    )
    out = tmp_path / "out"
    args = ("--quiet", "--method", "gram", "--workers", "2")
    stopped = start_and_stop(cli(ckpt, out, *args), out, 8, signal.SIGINT)
    assert stopped is not None, "the scan finished before the signal"
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr + stopped.stdout
    _, records, good = read_journal(out / JOURNAL)
    assert len(records) < ref.planned and good == (out / JOURNAL).stat().st_size
    report = scan(
        ckpt, ScanOptions(out_dir=out, progress=False, device="cpu", method="gram", workers=2)
    )
    assert report.skipped == len(records) and report.skipped + report.scanned == ref.planned
    # same modules in the same order; floats to 1e-9 (the torch route's last bits can move with
    # the thread a matrix ran on, e.g. the buffer's alignment)
    got, want = json.loads((out / RESULTS).read_text()), json.loads(ref.paths.results.read_text())
    assert list(got) == list(want)
    for key, info in want.items():
        assert got[key]["type"] == info["type"]
        assert got[key]["snr"] == pytest.approx(info["snr"], rel=1e-9), key


def test_a_full_disk_stops_with_one_line_and_resumes(ckpt, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = journal_mod.write_all
    calls = []

    def fills_up(fd, data):
        calls.append(1)
        if len(calls) == 6:  # header + 4 modules fit, the 5th finds the disk full half-way
            real(fd, data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(journal_mod, "write_all", fills_up)
    r = CliRunner().invoke(
        main, ["scan", str(ckpt), "--out-dir", str(out), "--device", "cpu", "--quiet"]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out / JOURNAL) in lines[0]
    assert "the disk is full" in lines[0] and "run the same command again" in lines[0]
    data = (out / JOURNAL).read_bytes()
    assert data.endswith(b"\n") and all(json.loads(x) for x in data.split(b"\n")[:-1])
    _, records, _ = read_journal(out / JOURNAL)
    assert len(records) == 4
    monkeypatch.setattr(journal_mod, "write_all", real)  # space freed
    r = CliRunner().invoke(
        main, ["scan", str(ckpt), "--out-dir", str(out), "--device", "cpu", "--quiet"]
    )
    assert r.exit_code == 0 and "4 resumed from the journal" in r.stdout
    assert_same_results(out, reference)


def test_rerun_after_success_skips_everything_and_fresh_starts_over(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    args = ["scan", str(ckpt), "--out-dir", str(out), "--device", "cpu", "--quiet"]
    planned = reference["planned"]
    out.mkdir()
    for name in (JOURNAL, f"snr_results_{NAME}.spectra.bin"):  # a finished scan, results lost
        shutil.copy(reference["out"] / name, out / name)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and f"0 modules this run, {planned} resumed" in r.stdout
    assert_same_results(out, reference)
    r = CliRunner().invoke(main, [*args, "--fresh"])
    assert r.exit_code == 0 and f"{planned} modules this run, 0 resumed" in r.stdout
    assert journal_lines(out) == planned + 1
    assert_same_results(out, reference)


def test_a_second_scan_of_the_same_results_refuses(ckpt, tmp_path):
    out = tmp_path / "out"
    args = ["scan", str(ckpt), "--out-dir", str(out), "--device", "cpu", "--quiet"]
    with ScanLock(out / f"snr_results_{NAME}.lock"):  # a scan is running
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and "Traceback" not in r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "another scan" in lines[0] and f"pid {os.getpid()}" in lines[0]
        assert not (out / JOURNAL).exists()  # it touched nothing
    r = CliRunner().invoke(
        main, [*args, "--out-dir", str(tmp_path / "elsewhere"), "--include", "q_proj"]
    )
    assert r.exit_code == 0  # other results, other lock


def test_a_dead_scan_leaves_no_stuck_lock(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / f"snr_results_{NAME}.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\ntime.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = [
            "scan",
            str(ckpt),
            "--out-dir",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--include",
            "q_proj",
        ]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and f"another scan (pid {holder.pid})" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()  # the file stays; the lock died with its process
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output


def test_results_are_rebuilt_through_the_cli_while_a_scan_is_stopped(ckpt, tmp_path):
    out = tmp_path / "out"
    scan(ckpt, ScanOptions(out_dir=out, progress=False, device="cpu", include="k_proj"))
    before = json.loads((out / RESULTS).read_text())
    for p in (out / RESULTS, out / SORTED):
        p.unlink()
    shutil.copy(out / JOURNAL, tmp_path / "copy.journal.jsonl")
    r = CliRunner().invoke(main, ["rebuild", str(out / JOURNAL)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / RESULTS).read_text()) == before and (out / SORTED).is_file()
    r = CliRunner().invoke(main, ["rebuild", str(tmp_path / "nope.journal.jsonl")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "no such journal" in r.stderr
