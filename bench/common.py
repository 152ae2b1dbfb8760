"""Helpers shared by the benchmarks: run a step in a child process, measure wall time and peak RSS."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def machine() -> str:
    """One line naming the machine a figure came from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"{mem:.0f} GiB RAM{gpu}; Python {platform.python_version()}, torch {torch.__version__}"
    )


def run_child(args: list[str], env: dict | None = None) -> dict:
    """Run `python ARGS` in a child; return its wall seconds, its own peak RSS (MiB), its stdout
    and the last JSON object it printed there."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "peak.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"peak_rss')]
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return {
        "wall_s": wall,
        "peak_rss_mib": peak[-1]["peak_rss_kib"] / 1024 if peak else float("nan"),
        "out": json.loads(last[-1]) if last else {},
        "stdout": proc.stdout,
    }


def variant_args(variant: str) -> tuple[str, list[str]]:
    """'gram+workers=1' -> ('gram', ['--workers', '1']); 'exact+prefetch' -> ('exact', ['--prefetch'])."""
    method, _, extra = variant.partition("+")
    flag, _, value = extra.partition("=")
    return method, ([f"--{flag}", *([value] if value else [])] if extra else [])


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table from dict rows."""
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join(" --- " for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(key, "")) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
