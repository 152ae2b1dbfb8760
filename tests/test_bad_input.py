"""Bad input through the command line: one clear line on stderr and a non-zero exit, never a
traceback; a single bad module is a warning and a count while the scan goes on; nothing already
journaled is lost.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from spectrum_stream.cli import main

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
BAD = "model.layers.1.mlp.down_proj.weight"  # the tensor the cases break (second in shard 2)


def tensors_of(shard: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(shard)
    return {
        f"model.layers.{shard}.mlp.up_proj.weight": rng.standard_normal((12, 8), np.float32),
        f"model.layers.{shard}.mlp.down_proj.weight": rng.standard_normal((8, 12), np.float32),
    }


def header_of(arrays: dict[str, np.ndarray]) -> tuple[dict, bytes]:
    header, data = {}, b""
    for name, a in arrays.items():
        header[name] = {
            "dtype": "F32",
            "shape": list(a.shape),
            "data_offsets": [len(data), len(data) + a.nbytes],
        }
        data += a.tobytes()
    return header, data


def write_shard(path: Path, header: dict | bytes, data: bytes, n: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)


def make_checkpoint(folder: Path) -> Path:
    """Two hand-written shards and an index; each case below breaks one rule in the second."""
    folder.mkdir(parents=True)
    weight_map = {}
    for i, shard in enumerate(SHARDS):
        header, data = header_of(tensors_of(i))
        write_shard(folder / shard, header, data)
        weight_map.update({name: shard for name in header})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def break_second_shard(folder: Path, case: str) -> None:
    path = folder / SHARDS[1]
    header, data = header_of(tensors_of(1))
    entry = header[BAD]
    if case == "truncated shard":
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "header length past the end":
        write_shard(path, header, data, n=10_000)
    elif case == "file too short":
        path.write_bytes(b"\x10\x00")
    elif case == "header not JSON":
        write_shard(path, b'{"model.layers.1.mlp.up_proj.weight": {"dtype": "F32",', data)
    elif case == "duplicate names":
        raw = json.dumps(header)[:-1] + f', "{BAD}": ' + json.dumps(entry) + "}"
        write_shard(path, raw.encode(), data)
    elif case == "overlapping offsets":
        entry["data_offsets"] = [o - 8 for o in entry["data_offsets"]]
        write_shard(path, header, data[:-8])
    elif case == "gapped offsets":
        entry["data_offsets"] = [o + 8 for o in entry["data_offsets"]]
        write_shard(path, header, data + bytes(8))
    elif case == "wrong byte length":
        entry["shape"] = [8, 11]
        write_shard(path, header, data)
    elif case == "unsupported dtype":
        entry["dtype"] = "Q4_K"
        write_shard(path, header, data)
    elif case == "index names a missing shard":
        path.unlink()
    elif case == "index names a tensor the shard lacks":
        del header[BAD]
        write_shard(
            path, header, data[: header["model.layers.1.mlp.up_proj.weight"]["data_offsets"][1]]
        )
    elif case == "index is not JSON":
        (folder / "model.safetensors.index.json").write_text("{'weight_map': ")
    elif case == "config.json is not JSON":
        (folder / "config.json").write_text("{")
    else:
        raise AssertionError(case)


# case -> (the file the message must name, whether it must name the tensor, words it must say)
CASES = {
    "truncated shard": (
        SHARDS[1],
        True,
        "its data ends 40 bytes past the end of the file (truncated file)",
    ),
    "header length past the end": (
        SHARDS[1],
        False,
        "header length 10000 runs past the end of the",
    ),
    "file too short": (SHARDS[1], False, "file is 2 bytes, too short for a header"),
    "header not JSON": (SHARDS[1], False, "header is not valid UTF-8 JSON"),
    "duplicate names": (SHARDS[1], True, "duplicate tensor name"),
    "overlapping offsets": (SHARDS[1], True, "data overlaps the tensor before it"),
    "gapped offsets": (SHARDS[1], True, "gap of 8 bytes before its data"),
    "wrong byte length": (SHARDS[1], True, "384 bytes for F32 [8, 11], expected 352"),
    "unsupported dtype": (SHARDS[1], True, "unsupported dtype 'Q4_K'"),
    "index names a missing shard": (
        "model.safetensors.index.json",
        False,
        f"names shard {SHARDS[1]!r}, which is missing",
    ),
    "index names a tensor the shard lacks": (SHARDS[1], True, "does not hold it"),
    "index is not JSON": ("model.safetensors.index.json", False, "not a safetensors index"),
    "config.json is not JSON": ("config.json", False, "not a model config: invalid JSON"),
}


def run_cli(args: list[str]):
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_line_error(result, *words: str) -> str:
    assert result.exit_code not in (0, None)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def scan_args(folder: Path, out: Path, *more: str) -> list[str]:
    return ["scan", str(folder), "--out-dir", str(out), "--device", "cpu", *more]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_is_one_line_naming_file_and_tensor(tmp_path, case):
    folder = make_checkpoint(tmp_path / "ckpt")
    break_second_shard(folder, case)
    out = tmp_path / "out"
    file_name, names_tensor, says = CASES[case]
    result = run_cli(scan_args(folder, out))  # progress bar on: it must not add lines either
    line = assert_one_line_error(result, str(folder / file_name), says)
    if names_tensor:
        assert repr(BAD) in line
    assert not out.exists()  # refused before anything was written


def test_a_bad_single_file_is_named_too(tmp_path):
    path = tmp_path / "model.safetensors"
    header, data = header_of(tensors_of(0))
    write_shard(path, header, data[:-4])
    assert_one_line_error(
        run_cli(scan_args(path, tmp_path / "out")),
        str(path),
        "its data ends 4 bytes past the end of the file (truncated file)",
    )


def scanned_once(tmp_path):
    """A checkpoint scanned to the end: (folder, out dir, journal path, journal bytes)."""
    folder = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert run_cli(scan_args(folder, out, "--quiet")).exit_code == 0
    journal = out / "snr_results_ckpt.journal.jsonl"
    return folder, out, journal, journal.read_bytes()


def test_bad_input_never_loses_journaled_work(tmp_path):
    """A scan that finished once, then the checkpoint is damaged: refused, journal untouched."""
    folder, out, journal, before = scanned_once(tmp_path)
    results = (out / "snr_results_ckpt.json").read_bytes()
    break_second_shard(folder, "truncated shard")
    assert_one_line_error(run_cli(scan_args(folder, out)), SHARDS[1])
    assert journal.read_bytes() == before
    assert (out / "snr_results_ckpt.json").read_bytes() == results


def test_a_journal_of_another_checkpoint_is_refused_not_overwritten(tmp_path):
    folder, out, journal, before = scanned_once(tmp_path)
    r = run_cli(scan_args(folder, out, "--include", "up_proj"))
    assert_one_line_error(r, "--include was not set, now 'up_proj'", "--fresh")
    arrays = tensors_of(1)
    arrays["extra.weight"] = np.ones((2, 2), np.float32)  # the model was re-saved with one more
    header, data = header_of(arrays)
    write_shard(folder / SHARDS[1], header, data)
    line = assert_one_line_error(
        run_cli(scan_args(folder, out)),
        str(journal),
        f"shard {SHARDS[1]} was 978 bytes, now 1073",
        "--fresh",
    )
    assert "cannot resume" in line and journal.read_bytes() == before
    r = run_cli(scan_args(folder, out, "--quiet", "--fresh", "--include", "up_proj"))
    assert r.exit_code == 0 and "2 modules this run, 0 resumed" in r.stdout


def test_a_foreign_file_at_the_journal_path_is_refused(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "snr_results_ckpt.journal.jsonl").write_text("my notes\n")
    assert_one_line_error(run_cli(scan_args(folder, out)), "not a spectrum-stream journal")
    assert (out / "snr_results_ckpt.journal.jsonl").read_text() == "my notes\n"


def make_checkpoint_with_bad_modules(folder: Path) -> Path:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(3)
    t = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 12, generator=gen) for i in range(4)
    }
    t["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    t["model.layers.2.mlp.up_proj.weight"][0, 0] = float("inf")
    t["model.layers.4.mlp.up_proj.weight"] = torch.zeros(0, 12)
    t["model.layers.5.mlp.up_proj.weight"] = torch.zeros(16, 12)
    save_file(t, str(folder / "model.safetensors"))
    return folder


BAD_MODULES = {
    "model.layers.1.mlp.up_proj": "NaN or Inf",
    "model.layers.2.mlp.up_proj": "NaN or Inf",
    "model.layers.4.mlp.up_proj": "empty tensor",
    "model.layers.5.mlp.up_proj": "all-zero",
}


def check_bad_module_run(stdout: str, stderr: str, out: Path, runs: int) -> None:
    assert "Traceback" not in stdout + stderr
    assert "4 failed" in stdout and "6 planned" in stdout
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4
    for key, reason in BAD_MODULES.items():
        assert sum(key in w and reason in w and "model.safetensors" in w for w in warnings) == 1
        assert f"failed: {key}: " in stdout
    results = json.loads((out / "snr_results_bad-modules.json").read_text())
    assert sorted(results) == ["model.layers.0.mlp.up_proj", "model.layers.3.mlp.up_proj"]
    records = [json.loads(x) for x in (out / "snr_results_bad-modules.journal.jsonl").open()][1:]
    failed = [r for r in records if r["status"] == "failed"]
    # retried on every run (a failure may have been transient), but an empty tensor stays empty:
    # journaled once, never redone
    assert len(failed) == 3 * runs + 1
    for r in failed:
        assert BAD_MODULES[r["key"]] in r["reason"] and "snr" not in r


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_bad_modules_are_warnings_and_a_count_while_the_scan_goes_on(tmp_path, method):
    folder = make_checkpoint_with_bad_modules(tmp_path / "bad-modules")
    out = tmp_path / "out"
    r = run_cli(scan_args(folder, out, "--quiet", "--method", method))
    assert r.exit_code == 0, r.output
    check_bad_module_run(r.stdout, r.stderr, out, runs=1)
    r = run_cli(
        scan_args(folder, out, "--quiet", "--method", method)
    )  # resume: good ones kept, bad ones tried again
    assert r.exit_code == 0 and "0 modules this run, 2 resumed" in r.stdout
    check_bad_module_run(r.stdout, r.stderr, out, runs=2)


def test_in_a_real_process_too(tmp_path):
    """The same promises from `python -m spectrum_stream`, not just inside click's test runner."""
    folder = make_checkpoint_with_bad_modules(tmp_path / "bad-modules")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "spectrum_stream",
        "scan",
        str(folder),
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    ]
    r = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    check_bad_module_run(r.stdout, r.stderr, out, runs=1)

    arrays = {"model.layers.0.mlp.up_proj.weight": np.ones((4, 4), np.float32)}
    header, data = header_of(arrays)
    write_shard(folder / "model.safetensors", header, data[:-1])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder / "model.safetensors") in lines[0]
    assert "'model.layers.0.mlp.up_proj.weight'" in lines[0]
    assert "its data ends 1 bytes past the end of the file (truncated file)" in lines[0]


@pytest.mark.parametrize("given", ["folder", "file"])
def test_a_pickle_checkpoint_is_refused_saying_why_and_how_to_convert(tmp_path, given):
    folder = tmp_path / "old-model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not unpickled, never opened")
    target = folder if given == "folder" else folder / "pytorch_model.bin"
    out = tmp_path / "out"
    result = run_cli(scan_args(target, out))
    assert result.exit_code == 1
    line = assert_one_line_error(
        result, str(target), "pickle", "convert it to safetensors", "save_pretrained"
    )
    assert line.startswith(f"error: {target}: ")
    assert not out.exists()
