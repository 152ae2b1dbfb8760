"""Hostile and malformed inputs around the shard headers (docs/robustness.md): JSON bombs, index
paths leaving the checkpoint folder, config.json values that do not fit the tensors, and matrices
too big for the machine. Each is one `error:` line naming the file (or a failed module), never a
traceback, and never a file read outside the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_bad_input import (
    SHARDS,
    assert_one_line_error,
    make_checkpoint,
    run_cli,
    scan_args,
    scanned_once,
)

from spectrum_stream.kernel import host_memory as memory
from spectrum_stream.kernel.host_memory import decomposition_bytes
from spectrum_stream.source.jsonfile import (
    JsonFileError,
    integer,
    list_of,
    mapping,
    number,
    obj,
    parse_json,
    read_json,
    string,
)

INDEX = "model.safetensors.index.json"
BOMB = "[" * 200_000 + "]" * 200_000


# -- the reader -----------------------------------------------------------------------------------


def test_reader_refuses_depth_size_and_names_the_key(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(BOMB)
    with pytest.raises(JsonFileError, match=r"x\.json: not a thing: invalid JSON \(depth limit"):
        read_json(path, "a thing")
    path.write_text("[" * 1024 + "]" * 1024)  # orjson's own limit: still read
    assert read_json(path, "a thing") is not None
    path.write_text('{"a": [1, 2, 3]}')
    with pytest.raises(JsonFileError, match=r"more than the 10 this tool reads"):
        read_json(path, "a thing", max_bytes=10)
    schema = obj({"a": list_of(integer(minimum=2))})
    with pytest.raises(JsonFileError, match=r'\["a"\]\[0\] must be at least 2, not 1'):
        read_json(path, "a thing", schema)
    with pytest.raises(JsonFileError, match=r'\["w"\]\["t.x"\] must be a string, not an integer'):
        parse_json(b'{"w": {"t.x": 3}}', "f", "an index", obj({"w": mapping(string)}))
    with pytest.raises(JsonFileError, match=r'\["b"\] is missing'):
        parse_json(b'{"a": 1}', "f", "x", obj({"b": number}))
    for bad in (b"NaN", b"1e999", b"\xff", b"{'a': 1}"):
        with pytest.raises(JsonFileError, match="invalid JSON"):
            parse_json(bad, "f", "x")
    with pytest.raises(JsonFileError, match="cannot read a thing"):
        read_json(tmp_path / "missing.json", "a thing")


@pytest.mark.parametrize("victim", [INDEX, "config.json"])
def test_a_json_bomb_in_index_or_config_is_one_line(tmp_path, victim):
    folder = make_checkpoint(tmp_path / "ckpt")
    (folder / victim).write_text(BOMB)
    r = run_cli(scan_args(folder, tmp_path / "out"))
    assert_one_line_error(r, str(folder / victim), "depth limit exceeded")
    assert not (tmp_path / "out").exists()


def test_select_and_rebuild_on_bombs_and_bad_values(tmp_path):
    bad = tmp_path / "snr_results_x.json"
    for text, says in (
        (BOMB, "depth limit exceeded"),
        ('{"m": {"snr": "1", "type": "t"}}', '["m"]["snr"] must be a finite number'),
        ('{"m": {"snr": 1e999, "type": "t"}}', "invalid JSON"),
        ('{"m": {"snr": 1.0}}', '["m"]["type"] is missing'),
        ("[1]", "the top level must be an object"),
    ):
        bad.write_text(text)
        assert_one_line_error(run_cli(["select", str(bad)]), str(bad), says)
    journal = tmp_path / "snr_results_x.journal.jsonl"
    journal.write_text(BOMB + "\n")
    assert_one_line_error(
        run_cli(["rebuild", str(journal)]),
        str(journal),
        "not a spectrum-stream journal",
        "depth limit",
    )
    journal.write_text('{"journal": 1, "checkpoint": "x"}\n')
    assert_one_line_error(run_cli(["rebuild", str(journal)]), '["checkpoint"] must be a list')


def test_garbled_journal_lines_are_skipped_not_trusted(tmp_path):
    folder, out, journal, written = scanned_once(tmp_path)
    lines = written.splitlines(keepends=True)
    first = json.loads(lines[1])
    wrong = dict(first, snr="high")  # an ok line whose SNR is not a number: redone, not used
    journal.write_bytes(
        lines[0] + BOMB.encode() + b"\n" + json.dumps(wrong).encode() + b"\n" + b"".join(lines[2:])
    )
    before = journal.read_bytes()
    r = run_cli(scan_args(folder, out, "--quiet"))
    assert r.exit_code == 0 and "1 modules this run, 3 resumed" in r.stdout, r.output
    after = journal.read_bytes()
    assert after.startswith(before)  # nothing lost, the garbage included
    assert json.loads(after.splitlines()[-1])["key"] == first["key"]


# -- index paths ----------------------------------------------------------------------------------

HOSTILE_NAMES = {
    "../outside/x.safetensors": "not a plain relative file",
    "ABSOLUTE": "an absolute path",
    "sub\\x.safetensors": "backslash",
    "": "empty file name",
    "x\x00.safetensors": "control character",
    "./x.safetensors": "not a plain relative file",
    "C:x.safetensors": "an absolute path",
}


def point_index_at(folder: Path, shard: str) -> None:
    doc = json.loads((folder / INDEX).read_text())
    doc["weight_map"] = {k: (shard if v == SHARDS[1] else v) for k, v in doc["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(doc))


@pytest.mark.parametrize("name", sorted(HOSTILE_NAMES))
def test_index_may_only_name_files_inside_the_folder(tmp_path, name):
    folder = make_checkpoint(tmp_path / "ckpt")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / SHARDS[1], outside / "x.safetensors")  # a valid file it must not read
    if name == "ABSOLUTE":
        name = str(outside / "x.safetensors")
    point_index_at(folder, name)
    r = run_cli(scan_args(folder, tmp_path / "out"))
    assert_one_line_error(
        r,
        str(folder / INDEX),
        HOSTILE_NAMES.get(name, "an absolute path"),
        "inside the checkpoint folder",
    )
    assert not (tmp_path / "out").exists()


def test_a_symlink_out_of_the_folder_is_refused_but_subfolders_are_fine(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / SHARDS[1]).rename(outside / SHARDS[1])
    (folder / SHARDS[1]).symlink_to(outside / SHARDS[1])
    r = run_cli(scan_args(folder, tmp_path / "out"))
    assert_one_line_error(r, "is a symlink to", "outside the checkpoint folder")
    # a link inside the folder, and a shard in a subfolder, are plain relative files
    (folder / SHARDS[1]).unlink()
    (folder / "sub").mkdir()
    (outside / SHARDS[1]).rename(folder / "sub" / "b.safetensors")
    (folder / "b.safetensors").symlink_to(folder / "sub" / "b.safetensors")
    point_index_at(folder, "b.safetensors")
    assert run_cli(scan_args(folder, tmp_path / "out", "--quiet")).exit_code == 0
    point_index_at(folder, "sub/b.safetensors")
    assert run_cli(scan_args(folder, tmp_path / "out2", "--quiet")).exit_code == 0


def test_hf_cache_snapshots_may_link_to_their_blobs(tmp_path):
    """A scan of ~/.cache/huggingface/hub/models--o--n/snapshots/<rev>: files link to ../../blobs."""
    src = make_checkpoint(tmp_path / "ckpt")
    repo = tmp_path / "hub" / "models--o--n"
    snap = repo / "snapshots" / "abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (f).rename(repo / "blobs" / f.name)
        (snap / f.name).symlink_to(Path("../../blobs") / f.name)
    assert run_cli(scan_args(snap, tmp_path / "out", "--quiet")).exit_code == 0


# -- config.json ----------------------------------------------------------------------------------


def dbrx_checkpoint(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(5)
    save_file(
        {
            "transformer.blocks.0.ffn.experts.mlp.w1": torch.randn(24, 8, generator=gen),
            "transformer.blocks.0.norm_1.weight": torch.ones(8),
        },
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


DBRX_CONFIGS = {  # ffn_config -> the words the error must say (None: scans)
    "zero experts": (
        {"moe_num_experts": 0, "ffn_hidden_size": 6},
        "ffn_config.moe_num_experts is 0; it must be a positive integer",
    ),
    "bool": ({"moe_num_experts": True, "ffn_hidden_size": 6}, "moe_num_experts is True"),
    "string": ({"moe_num_experts": "4"}, "moe_num_experts is '4'"),
    "float": ({"moe_num_experts": 4.0}, "moe_num_experts is 4.0"),
    "negative": ({"ffn_hidden_size": -6}, "ffn_hidden_size is -6"),
    "disagree": ({"moe_num_experts": 3, "ffn_hidden_size": 6}, "is 18 rows, but"),
    "not dividing": ({"moe_num_experts": 5}, "(5) does not divide the 24 rows"),
    "missing": ({}, "ffn_config.moe_num_experts is missing"),
    "fine": ({"moe_num_experts": 4, "ffn_hidden_size": 6}, None),
    "one is enough": ({"ffn_hidden_size": 6}, None),
}


@pytest.mark.parametrize("case", sorted(DBRX_CONFIGS))
def test_dbrx_config_values_are_checked_before_any_work(tmp_path, case):
    ffn_config, says = DBRX_CONFIGS[case]
    folder = dbrx_checkpoint(tmp_path / "dbrx", {"model_type": "dbrx", "ffn_config": ffn_config})
    r = run_cli(scan_args(folder, tmp_path / "out", "--quiet"))
    if says is None:
        assert r.exit_code == 0, r.output
        assert "4 planned" in r.stdout
    else:
        assert_one_line_error(r, str(folder / "config.json"), says)
        assert not (tmp_path / "out").exists()


def test_expert_counts_and_fp8_blocks_must_agree_with_the_tensors(tmp_path):
    folder = tmp_path / "fused"
    folder.mkdir()
    save_file(
        {"model.layers.0.mlp.experts.down_proj": torch.randn(4, 8, 6)},
        str(folder / "model.safetensors"),
    )
    for cfg, says in (
        ({"num_experts": 3}, "num_experts is 3, but the fused expert tensor"),
        ({"text_config": {"num_local_experts": 0}}, "text_config.num_local_experts is 0"),
        ({"num_local_experts": 4, "num_experts": 0}, "num_experts is 0"),
        ({"num_experts": 4}, None),
    ):
        (folder / "config.json").write_text(json.dumps(cfg))
        r = run_cli(scan_args(folder, tmp_path / "out", "--quiet", "--fresh"))
        if says is None:
            assert r.exit_code == 0, r.output
        else:
            assert_one_line_error(r, str(folder / "config.json"), says)
    per_expert = tmp_path / "per-expert"
    per_expert.mkdir()
    save_file(
        {f"model.layers.0.mlp.experts.{e}.up_proj.weight": torch.randn(6, 4) for e in range(3)},
        str(per_expert / "model.safetensors"),
    )
    (per_expert / "config.json").write_text(json.dumps({"num_local_experts": 2}))
    assert_one_line_error(
        run_cli(scan_args(per_expert, tmp_path / "o2")),
        "num_local_experts is 2, but tensor",
        "is expert 2",
    )
    fp8 = tmp_path / "fp8"
    fp8.mkdir()
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4).to(torch.float8_e4m3fn),
            "model.layers.0.mlp.up_proj.weight_scale_inv": torch.ones(1, 1),
        },
        str(fp8 / "model.safetensors"),
    )
    (fp8 / "config.json").write_text(
        json.dumps({"quantization_config": {"weight_block_size": [64, 64]}})
    )
    assert_one_line_error(
        run_cli(scan_args(fp8, tmp_path / "o3")),
        "quantization_config.weight_block_size is [64, 64]",
        "[128, 128] only",
    )


# -- memory ---------------------------------------------------------------------------------------


def test_decomposition_bytes_by_hand():
    # exact, [1000, 300]: k=300, l=1000; two float32 copies 2*4*300000 = 2,400,000;
    # workspace 4*(900 + max(1000, 2100) + 64*1300) = 4*86,200 = 344,800; iwork 4*8*300 = 9,600;
    # values 4*300 = 1,200: total 2,755,600
    assert decomposition_bytes((1000, 300), "exact") == 2_755_600
    assert decomposition_bytes((300, 1000), "exact") == 2_755_600
    # gram, [1000, 300] held whole: copy 1,200,000 + block min(2,400,000, 1 MiB) = 1,048,576
    # + two Gram matrices 2*8*90,000 = 1,440,000 + eigensolver 8*601 = 4,808 + values 2,400
    assert decomposition_bytes((1000, 300), "gram", block_bytes=1024**2) == 3_695_784
    # streamed from the file: no float32 copy
    assert decomposition_bytes((1000, 300), "gram", True, 1024**2) == 2_495_784
    # Qwen1.5-110B's embedding [152064, 8192] exactly: about 10 GB
    assert 9.9e9 < decomposition_bytes((152064, 8192), "exact") < 10.1e9
    with pytest.raises(ValueError):
        decomposition_bytes((2, 2), "qr")
    assert memory.available_bytes() is None or memory.available_bytes() > 0


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_a_matrix_too_big_for_memory_fails_alone(tmp_path, monkeypatch, method):
    folder = tmp_path / "big"
    folder.mkdir()
    gen = torch.Generator().manual_seed(7)
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": torch.randn(8, 6, generator=gen),
            "model.layers.0.mlp.down_proj.weight": torch.randn(64, 48, generator=gen),
        },
        str(folder / "model.safetensors"),
    )
    streamed = method == "gram"  # on CPU the gram route reads blocks from the file: no copy
    limit = decomposition_bytes((64, 48), method, streamed) - 1  # the big one cannot fit
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: limit)
    r = run_cli(scan_args(folder, tmp_path / "out", "--quiet", "--method", method))
    assert r.exit_code == 0, r.output
    assert "1 failed" in r.stdout
    warning = [x for x in r.stderr.splitlines() if x.startswith("warning: ")]
    assert len(warning) == 1 and "model.layers.0.mlp.down_proj" in warning[0]
    assert "of memory to decompose" in warning[0] and f"--method {method}" in warning[0]
    results = json.loads((out := tmp_path / "out" / "snr_results_big.json").read_text())
    assert list(results) == ["model.layers.0.mlp.up_proj"], out


# -- a real process -------------------------------------------------------------------------------


def test_bombs_in_a_real_process(tmp_path):
    folder = make_checkpoint(tmp_path / "ckpt")
    (folder / INDEX).write_text(BOMB)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for args in (
        ["scan", str(folder), "--device", "cpu", "--out-dir", str(tmp_path / "o")],
        ["select", str(folder / INDEX)],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "spectrum_stream", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 1 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "depth limit" in lines[0]
