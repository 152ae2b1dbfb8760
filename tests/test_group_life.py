"""The life of a torchrun rank's group (distributed/group.py `joined`), one process each: a
failure while it is built tears down what was built, a signal during teardown waits for it,
and nothing of torch's is left alive after. Run in subprocesses: a process group is global."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).parent.parent / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_name, None)

PRELUDE = """
import os, signal, time
import torch.distributed as dist
from spectrum_stream.distributed.env import Ranks
from spectrum_stream.distributed.group import joined, lingering
from spectrum_stream.errors import SpectrumError

ONE = Ranks(rank=0, world=1, local_rank=0, local_world=1)
"""


def run_script(body: str) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV
    )


def test_a_store_that_fails_after_the_process_group_tears_the_group_down():
    # MASTER_PORT 0: init_process_group binds a free port for its own store, then the group's
    # store clients, which connect to MASTER_PORT, cannot
    r = run_script(
        """
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0", RANK="0", WORLD_SIZE="1")
        try:
            with joined(ONE, "cpu", 5) as group:
                print("joined")
        except SpectrumError as exc:
            print("error:", exc)
        print("initialized", dist.is_initialized(), "lingering", lingering())
        """
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "joined" not in lines
    assert lines[0].startswith("error: rank 0: cannot join the other ranks"), r.stdout
    assert lines[1] == "initialized False lingering []", r.stdout


def test_a_signal_during_teardown_waits_for_it_then_counts_as_an_interrupt():
    r = run_script(
        """
        server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(server.port), RANK="0", WORLD_SIZE="1",
            TORCHELASTIC_USE_AGENT_STORE="True",
        )
        real = dist.destroy_process_group

        def interrupted_destroy(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's, then torchrun's forward
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("destroying")
            real(*args, **kwargs)

        dist.destroy_process_group = interrupted_destroy
        try:
            with joined(ONE, "cpu", 5) as group:
                print("beating", group._beat.is_alive(), group.store is not None)
        except KeyboardInterrupt:
            print("interrupted after teardown")
        print("initialized", dist.is_initialized(), "lingering", lingering())
        print("signals", group.signals.seen)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "beating True True",
        "destroying",
        "interrupted after teardown",
        "initialized False lingering []",
        "signals 2",
    ], r.stdout + r.stderr


def test_an_interrupt_inside_the_group_tears_down_and_the_next_signal_only_counts():
    r = run_script(
        """
        server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(server.port), RANK="0", WORLD_SIZE="1",
            TORCHELASTIC_USE_AGENT_STORE="True",
        )
        try:
            with joined(ONE, "cpu", 5) as group:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
                print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        os.kill(os.getpid(), signal.SIGINT)  # a second one, as torchrun forwards: counted only
        time.sleep(0.1)
        print("initialized", dist.is_initialized(), "lingering", lingering())
        print("signals", group.signals.seen)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "interrupted",
        "initialized False lingering []",
        "signals 2",
    ], r.stdout + r.stderr
