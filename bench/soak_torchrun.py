"""Soak the torchrun scan: start it, kill it at a random point, rerun, compare with one process.

    python3 bench/soak_torchrun.py --cycles 50 [--ranks 2] [--seed 0] [--timeout 180]

Each cycle scans a small planted-signal checkpoint under `torchrun --standalone` (gloo, CPU) into
a fresh folder and stops it at a random point (one cycle in five during start-up, after a random
delay; the others once the rank journals hold a random number of modules) in one of these ways,
then runs the same command again until it ends (at most three reruns):

    kill-rank      SIGKILL one rank (chosen at random); torchrun stops the others
    kill-job       SIGKILL torchrun and every rank
    sigterm-job    SIGTERM torchrun (as a batch system does); it forwards SIGTERM to the ranks
    sigint-twice   SIGINT every rank twice (the terminal's, then torchrun's forward)

It counts per cycle: aborts (a rank's "terminate called" from torch's C++, or exit 134 / -6 in
torchrun's report), hangs (a run past --timeout), mismatches (a journaled value that differs
from the one-process scan, or final results files that differ byte for byte, or spectra that
differ), reruns that fail, and (apart) cycles whose interrupted run journaled a module twice. Prints one line per cycle and a table at the end; exit 1 if any
count is not 0. Results go in bench/RESULTS.md with the machine line this prints.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from spectrum_stream.examples.synthetic import write_planted_llama  # noqa: E402
from spectrum_stream.journal.journal import read_journal  # noqa: E402
from spectrum_stream.results.spectra import read_spectra  # noqa: E402

NAME = "planted"
BASE = f"snr_results_{NAME}"
MODES = ("kill-rank", "kill-job", "sigterm-job", "sigint-twice")
ABORT = re.compile(r"terminate called|exitcode\s+:\s+(134|-6)\b")
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT / "src"),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "GLOO_SOCKET_IFNAME": "lo",
}


@dataclass
class Counts:
    cycles: int = 0
    aborts: int = 0
    hangs: int = 0
    mismatches: int = 0
    failed_reruns: int = 0
    duplicates: int = 0  # cycles where a module was journaled twice (harmless: keyed; counted)
    seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def scan_cmd(ckpt: Path, out: Path, ranks: int) -> list[str]:
    cli = ["-m", "spectrum_stream", "scan", str(ckpt), "--out-dir", str(out), "--device", "cpu"]
    cli += ["--quiet", "--peer-timeout", "30"]
    if ranks == 1:
        return [sys.executable, *cli]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(ranks), *cli]


def descendants(pid: int) -> list[int]:
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


def is_rank(pid: int) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(b"RANK=") for e in env)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """Wait for the run; None as the code when it hung (it is then killed)."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        signal_all([*descendants(proc.pid), proc.pid], signal.SIGKILL)
        _, stderr = proc.communicate()
        return None, stderr


def journaled_lines(out: Path) -> int:
    return sum(
        max(0, p.read_bytes().count(b"\n") - 1) for p in out.glob(f"{BASE}.rank*.journal.jsonl")
    )


def interrupted_run(
    cmd: list[str],
    out: Path,
    mode: str,
    point: tuple[str, float],
    rng: random.Random,
    timeout: float,
):
    """Run `cmd` and stop it at `point`: ("delay", seconds) or ("modules", count journaled)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    kind, value = point
    deadline = time.monotonic() + (value if kind == "delay" else timeout)
    while time.monotonic() < deadline and proc.poll() is None:
        if kind == "modules" and journaled_lines(out) >= value:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        ranks = [p for p in descendants(proc.pid) if is_rank(p)]
        if mode == "kill-rank" and ranks:
            signal_all([rng.choice(ranks)], signal.SIGKILL)
        elif mode == "kill-job":
            signal_all([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
        elif mode == "sigterm-job":
            signal_all([proc.pid], signal.SIGTERM)
        elif mode == "sigint-twice":
            for _ in range(2):
                signal_all(ranks, signal.SIGINT)
                time.sleep(rng.uniform(0, 0.05))
    return finish(proc, timeout)


def duplicate_lines(out: Path) -> int:
    """Journal lines, over every journal in `out`, whose module another line already holds."""
    keys: list[str] = []
    for path in out.glob(f"{BASE}*.journal.jsonl"):
        for line in path.read_bytes().split(b"\n")[1:]:
            try:
                keys.append(json.loads(line)["key"])
            except (ValueError, KeyError):
                continue  # a torn last line
    return len(keys) - len(set(keys))


def journal_values(out: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for path in out.glob(f"{BASE}*.journal.jsonl"):
        try:
            _, records, _ = read_journal(path)
        except Exception as exc:  # a journal a kill left unreadable is a finding too
            raise RuntimeError(f"{path.name}: {exc}") from exc
        values.update({k: r["snr"] for k, r in records.items() if r.get("status") == "ok"})
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=180.0, help="a run past this is a hang")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="soak-torchrun-"))
    print(f"machine: {machine()}", flush=True)
    ckpt = work / NAME
    write_planted_llama(ckpt, layers=6, hidden=192, intermediate=384, vocab=384, shards=3)
    ref_out = work / "reference"
    done = subprocess.run(scan_cmd(ckpt, ref_out, 1), capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        print(done.stderr)
        return 1
    ref_files = {s: (ref_out / f"{BASE}{s}").read_bytes() for s in (".json", "_sorted.json")}
    ref_values = journal_values(ref_out)
    ref_spectra, _ = read_spectra(ref_out / f"{BASE}_spectra.safetensors")
    t0 = time.perf_counter()
    full = subprocess.run(
        scan_cmd(ckpt, work / "timing", args.ranks), capture_output=True, text=True, env=ENV
    )
    full_s = time.perf_counter() - t0
    if full.returncode != 0:
        print(full.stderr)
        return 1
    print(f"one uninterrupted {args.ranks}-rank run: {full_s:.1f} s", flush=True)

    c = Counts()
    for cycle in range(1, args.cycles + 1):
        started = time.perf_counter()
        out = work / f"cycle{cycle}"
        mode = rng.choice(MODES)
        if rng.random() < 0.2:  # during start-up: imports, joining the group, the split
            point = ("delay", round(rng.uniform(0.5, 0.6 * full_s), 1))
        else:
            point = ("modules", rng.randrange(len(ref_values)))
        cmd = scan_cmd(ckpt, out, args.ranks)
        code, stderr = interrupted_run(cmd, out, mode, point, rng, args.timeout)
        runs = [(code, stderr)]
        cycle_notes = []
        twice = duplicate_lines(out)
        if twice:
            c.duplicates += 1
            cycle_notes.append(f"{twice} module(s) journaled twice")
        try:
            kept = journal_values(out)
            bad = [k for k, v in kept.items() if v != ref_values.get(k)]
            if bad:
                c.mismatches += 1
                cycle_notes.append(f"journaled values differ: {bad[:3]}")
        except RuntimeError as exc:
            c.mismatches += 1
            cycle_notes.append(str(exc))
            kept = {}
        for _ in range(3):  # rerun until it ends
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
            )
            code, stderr = finish(proc, args.timeout)
            runs.append((code, stderr))
            if code == 0:
                break
        for code, stderr in runs:
            if ABORT.search(stderr):
                c.aborts += 1
                cycle_notes.append("abort: " + ABORT.search(stderr).group(0))
            if code is None:
                c.hangs += 1
                cycle_notes.append("hang")
        if runs[-1][0] != 0:
            c.failed_reruns += 1
            tail = runs[-1][1].strip().splitlines()[-3:]
            cycle_notes.append(f"rerun failed ({runs[-1][0]}): {' | '.join(tail)}")
        else:
            same = all((out / f"{BASE}{s}").read_bytes() == data for s, data in ref_files.items())
            spectra, _ = read_spectra(out / f"{BASE}_spectra.safetensors")
            same = same and set(spectra) == set(ref_spectra)
            same = same and all(np.array_equal(spectra[k], ref_spectra[k]) for k in ref_spectra)
            if not same:
                c.mismatches += 1
                cycle_notes.append("final results differ from one process")
        c.cycles += 1
        c.seconds.append(time.perf_counter() - started)
        c.notes += [f"cycle {cycle}: {n}" for n in cycle_notes]
        print(
            f"cycle {cycle:3d} {mode:12s} at {point[1]:5} {point[0]:7s}: first run exit "
            f"{runs[0][0]}, {len(kept)} modules kept, {len(runs) - 1} rerun(s), "
            f"{'; '.join(cycle_notes) or 'ok'}",
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)

    print()
    print(
        "| ranks | cycles | aborts | hangs | mismatches | failed reruns | journaled twice "
        "| s per cycle |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    mean = sum(c.seconds) / len(c.seconds) if c.seconds else 0.0
    print(
        f"| {args.ranks} | {c.cycles} | {c.aborts} | {c.hangs} | {c.mismatches} | "
        f"{c.failed_reruns} | {c.duplicates} | {mean:.1f} |"
    )
    for note in c.notes:
        print(note)
    print(json.dumps({"cycles": c.cycles, "aborts": c.aborts, "hangs": c.hangs}))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if (c.aborts or c.hangs or c.mismatches or c.failed_reruns) else 0


if __name__ == "__main__":
    sys.exit(main())
