"""Every input file mutated, end to end through the command line (docs/robustness.md).

Index, config.json, shard headers, the journal and results files of small checkpoints are mutated
(random JSON, JSON bombs, byte flips, hostile shard names, bad config values) and handed to
`scan`, `rebuild` and `select`. Every run either gives the right results or exits non-zero with
one `error:` line naming the file; never a traceback, never a hang (each run has a deadline), and
never a lost journal line.

CI runs a fixed, derandomized set of 40 examples per family (about 20 s in all, most of it the
two real processes). For a
longer local run with fresh random examples:

    SPECTRUM_FUZZ_EXAMPLES=500 PYTHONPATH=src python -m pytest tests/test_fuzz_e2e.py
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_snr
from safetensors import safe_open
from safetensors.torch import save_file
from test_bad_input import SHARDS, make_checkpoint

from spectrum_stream.cli import main
from spectrum_stream.results.key_grammar import is_key

LONG = os.environ.get("SPECTRUM_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(LONG or 40),
    deadline=None,
    derandomize=LONG is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
DEADLINE_S = 120  # a run past this is a hang: the test fails instead of CI waiting forever
INDEX = "model.safetensors.index.json"
NAME = "fuzz"


class Hung(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int = DEADLINE_S):
    def ring(signum, frame):
        raise Hung(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run(args: list[str], *names: str):
    """Run the CLI in-process; a failure must be exactly one `error:` line naming one of `names`."""
    with deadline():
        r = CliRunner().invoke(main, args)
    assert not isinstance(r.exception, Hung), args
    assert "Traceback" not in r.output and "Traceback" not in r.stderr, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert any(name in lines[0] for name in names), (names, lines[0])
    return r


def scan_args(folder: Path, out: Path) -> list[str]:
    return [
        "scan",
        str(folder),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--name",
        NAME,
    ]


def results_of(out: Path) -> dict:
    return json.loads((out / f"snr_results_{NAME}.json").read_text())


@contextlib.contextmanager
def copy_of(folder: Path):
    with tempfile.TemporaryDirectory() as d:
        work = Path(d) / folder.name
        shutil.copytree(folder, work, symlinks=True)
        yield work, Path(d) / "out"


# -- mutations ------------------------------------------------------------------------------------


def _containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    _containers,
    max_leaves=10,
)


def bomb(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = draw(
                st.binary(min_size=1, max_size=6)
                | st.sampled_from([b"[", b"{", b"\n", b"\x00", b'"', b"NaN", b"1e999"])
            )
        elif op == "delete":
            del raw[i : i + draw(st.integers(1, 6))]
        elif op == "cut":
            del raw[i:]
    return bytes(raw)


def json_file(valid: bytes):
    """A JSON file: byte-mutated, replaced by random JSON, or a bomb just past orjson's limit."""
    return st.one_of(
        byte_mutation(valid),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.builds(bomb, st.sampled_from([1025, 5000, 200_000]), st.sampled_from(["[", '{"a":'])),
    )


# -- the checkpoints and what a scan of them must give ---------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A two-shard checkpoint scanned once: its folder, reference SNRs, and a finished journal."""
    root = tmp_path_factory.mktemp("fuzz")
    folder = make_checkpoint(root / "ckpt")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    ref = {}
    for shard in SHARDS:
        with safe_open(str(folder / shard), "np") as f:
            for name in f.keys():
                ref[name.removesuffix(".weight")] = reference_snr(f.get_tensor(name))
    out = root / "out"
    r = run(scan_args(folder, out))
    assert r.exit_code == 0
    journal = out / f"snr_results_{NAME}.journal.jsonl"
    return folder, ref, journal.read_bytes()


def tensor_snrs(folder: Path) -> dict[str, float]:
    """SNRs computed independently (safetensors + float64 numpy) from the files as they are now;
    a tensor without a finite one (NaN values after a dtype change) is left out."""
    found = {}
    for shard in SHARDS:
        with safe_open(str(folder / shard), "pt") as f:
            for name in f.keys():
                w = f.get_tensor(name).double().numpy()
                if w.ndim < 2 or w.size == 0 or not np.isfinite(w).all() or not w.any():
                    continue
                found[name.removesuffix(".weight")] = reference_snr(w.reshape(w.shape[0], -1))
    return found


def same(got: dict, want: dict[str, float]) -> None:
    assert set(got) <= set(want), set(got) - set(want)
    for key, rec in got.items():
        assert rec["snr"] == pytest.approx(want[key], rel=1e-4, abs=1e-9), key


@FUZZ
@given(data=st.data())
def test_mutated_index(base, data):
    folder, ref, _ = base
    valid = (folder / INDEX).read_bytes()
    hostile = st.sampled_from(
        [
            "../outside/x.safetensors",
            "/etc/passwd",
            "a\\b.safetensors",
            "",
            "x\x00y",
            "./" + SHARDS[0],
            SHARDS[0],
            SHARDS[1],
            "missing",
        ]
    )
    doc = json.loads(valid)
    renamed = data.draw(
        st.dictionaries(st.sampled_from(sorted(doc["weight_map"])), hostile, max_size=2)
    )
    doc["weight_map"].update(renamed)
    raw = data.draw(json_file(valid) | st.just(json.dumps(doc).encode()))
    with copy_of(folder) as (work, out):
        (work / INDEX).write_bytes(raw)
        outside = work.parent / "outside"
        outside.mkdir()
        shutil.copy(work / SHARDS[1], outside / "x.safetensors")  # there, but never to be read
        r = run(scan_args(work, out), str(work), f"{NAME}: no weight matrices")
        if r.exit_code == 0:
            same(results_of(out), ref)
        else:
            assert not out.exists()


def dbrx_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(11)
    save_file(
        {"transformer.blocks.0.ffn.experts.mlp.w1": torch.randn(24, 8, generator=gen)},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "dbrx", "ffn_config": {"moe_num_experts": 4, "ffn_hidden_size": 6}}
        )
    )
    return folder


@pytest.fixture(scope="module")
def dbrx(tmp_path_factory):
    return dbrx_checkpoint(tmp_path_factory.mktemp("dbrx") / "dbrx")


def expected_split(raw: bytes, rows: int = 24) -> tuple[int, int] | None:
    """(experts, rows each) the config gives, worked out independently; None: must be refused."""
    try:
        cfg = json.loads(raw)
        orjson.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(cfg, dict):
        return None
    ffn = cfg.get("ffn_config")
    given = {
        k: ffn[k]
        for k in ("moe_num_experts", "ffn_hidden_size")
        if isinstance(ffn, dict) and k in ffn
    }
    if not given or any(type(v) is not int or v <= 0 for v in given.values()):
        return None
    e, f = given.get("moe_num_experts"), given.get("ffn_hidden_size")
    if e and f:
        return (e, f) if e * f == rows else None
    one = e or f
    if rows % one:
        return None
    return (e, rows // e) if e else (rows // f, f)


VALUES = st.one_of(st.integers(-3, 30), st.sampled_from([True, False, None, 4.0, "4", [4], 2**70]))


@FUZZ
@given(data=st.data())
def test_mutated_config(dbrx, data):
    valid = (dbrx / "config.json").read_bytes()
    ffn = {
        k: data.draw(VALUES)
        for k in data.draw(st.sets(st.sampled_from(["moe_num_experts", "ffn_hidden_size"])))
    }
    raw = data.draw(
        json_file(valid) | st.just(json.dumps({"model_type": "dbrx", "ffn_config": ffn}).encode())
    )
    split = expected_split(raw)
    with copy_of(dbrx) as (work, out):
        (work / "config.json").write_bytes(raw)
        r = run(scan_args(work, out), str(work / "config.json"))
        assert (r.exit_code == 0) == (split is not None), (raw[:200], r.stderr)
        if split is None:
            assert not out.exists()
            return
        e, f = split
        with safe_open(str(work / "model.safetensors"), "np") as fh:
            w = fh.get_tensor("transformer.blocks.0.ffn.experts.mlp.w1")
        want = {
            f"transformer.blocks.0.ffn.experts.mlp.w1$[{i * f}:{(i + 1) * f}]": reference_snr(
                w[i * f : (i + 1) * f]
            )
            for i in range(e)
        }
        got = results_of(out)
        assert set(got) == set(want)
        same(got, want)


@FUZZ
@given(data=st.data())
def test_mutated_shard_header(base, data):
    folder, _, _ = base
    blob = (folder / SHARDS[0]).read_bytes()
    n = int.from_bytes(blob[:8], "little")
    head = data.draw(byte_mutation(blob[8 : 8 + n]))
    prefix = data.draw(st.just(len(head)) | st.integers(0, 2**64 - 1))
    with copy_of(folder) as (work, out):
        (work / SHARDS[0]).write_bytes(prefix.to_bytes(8, "little") + head + blob[8 + n :])
        r = run(scan_args(work, out), str(work))
        if r.exit_code == 0:  # the mutated header is still a valid file: scanned as it says
            same(results_of(out), tensor_snrs(work))


JOURNAL_JUNK = st.sampled_from(
    [
        b"[" * 5000,
        b"{}",
        b'{"key": 1}',
        b"\x00\xff",
        b"NaN",
        b"",
        b'{"key": "model.layers.0.mlp.up_proj", "status": "ok"}',
        b'{"key": "x", "status": "ok", "snr": "1", "type": "t"}',
    ]
)


@FUZZ
@given(data=st.data())
def test_mutated_journal_then_rebuild_and_resume(base, data):
    folder, ref, finished = base
    lines = finished.split(b"\n")[:-1]
    how = data.draw(st.sampled_from(["insert", "replace", "bytes", "torn"]))
    if how == "insert":
        lines.insert(data.draw(st.integers(0, len(lines))), data.draw(JOURNAL_JUNK))
        raw = b"\n".join(lines) + b"\n"
    elif how == "replace":
        lines[data.draw(st.integers(0, len(lines) - 1))] = data.draw(JOURNAL_JUNK)
        raw = b"\n".join(lines) + b"\n"
    elif how == "bytes":
        raw = data.draw(byte_mutation(finished))
    else:
        raw = finished[: data.draw(st.integers(0, len(finished)))]
    with copy_of(folder) as (work, out):
        out.mkdir()
        journal = out / f"snr_results_{NAME}.journal.jsonl"
        journal.write_bytes(raw)
        run(["rebuild", str(journal)], str(journal))
        assert journal.read_bytes() == raw  # rebuild only reads it
        r = run(scan_args(work, out), str(journal))
        after = journal.read_bytes()
        if r.exit_code != 0:
            assert after == raw  # refused: not touched
            return
        assert after.startswith(raw[: raw.rfind(b"\n") + 1])  # every whole line kept
        written = [
            json.loads(x)
            for x in raw.split(b"\n")[1:]
            if x.startswith(b"{") and _loads(x) is not None
        ]
        got = results_of(out)
        assert set(got) == set(ref)  # resumed to the end
        for key, rec in got.items():  # from the reference, or as a surviving line said
            assert rec["snr"] == pytest.approx(ref[key], rel=1e-4) or any(
                w.get("key") == key and w.get("snr") == rec["snr"]
                for w in written
                if isinstance(w, dict)
            ), key


def _loads(line: bytes):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def valid_results(doc) -> bool:
    """What `select` may accept, judged with the standard library (and the key grammar)."""
    return isinstance(doc, dict) and all(
        is_key(k)
        and isinstance(v, dict)
        and isinstance(v.get("type"), str)
        and isinstance(v.get("snr"), (int, float))
        and not isinstance(v.get("snr"), bool)
        and math.isfinite(v["snr"])
        for k, v in doc.items()
    )


RESULTS = st.dictionaries(
    st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12),
        st.from_regex(r"[a-z_]{1,6}(\.[0-9]{1,2}|\.[a-z_]{1,6}){0,4}", fullmatch=True),
    ),
    st.fixed_dictionaries(
        {
            "snr": st.floats(allow_nan=False, allow_infinity=False),
            "type": st.sampled_from(["mlp.up_proj", "lm_head", "self_attn.q_proj"]),
        }
    ),
    max_size=6,
)


@FUZZ
@given(data=st.data())
def test_mutated_results_file_for_select(data):
    valid = json.dumps(data.draw(RESULTS)).encode()
    raw = data.draw(st.just(valid) | json_file(valid))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "snr_results_x.json"
        path.write_bytes(raw)
        r = run(["select", str(path), "--format", "json", "--top-percent", "50"], str(path))
        doc = _loads(raw)
        if r.exit_code == 0:
            assert valid_results(doc) and isinstance(json.loads(r.stdout), list)
        elif raw == valid and valid_results(doc):
            raise AssertionError(f"refused a valid results file: {r.stderr}")


# -- a few in a real process ----------------------------------------------------------------------


def test_hostile_inputs_in_a_real_process(base, tmp_path):
    folder, _, _ = base
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cases = [
        (
            INDEX,
            json.dumps({"weight_map": {"x.weight": "../../etc/passwd"}}).encode(),
            "inside the checkpoint folder",
        ),
        ("config.json", bomb(200_000, '{"a":'), "depth limit"),
    ]
    for i, (victim, raw, says) in enumerate(cases):
        work = tmp_path / f"case{i}"
        shutil.copytree(folder, work)
        (work / victim).write_bytes(raw)
        cmd = [sys.executable, "-m", "spectrum_stream", *scan_args(work, tmp_path / f"out{i}")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
        assert str(work / victim) in lines[0]
