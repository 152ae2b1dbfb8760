"""`spectrum-stream plan`: the command on tiny checkpoints, against what transformers and freeze()
do with the same results, from the Hub by header range requests only, and its bad-input lines."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from click.testing import CliRunner
from hubserver import HubServer
from test_hub import hf  # noqa: F401  (fixture: huggingface_hub pointed at the local server)

import spectrum_stream
import spectrum_stream.source.hub.headers as hub_headers
from spectrum_stream.cli import main
from spectrum_stream.driver import scan
from spectrum_stream.options import ScanOptions

PERCENT = 50
FIELDS = {"weights", "grads", "optimizer", "activations", "total"}


def plan(*args: str):
    return CliRunner().invoke(main, ["plan", *args], catch_exceptions=False)


def plan_json(*args: str) -> dict:
    result = plan(*args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def only_error(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, llama_dir, mixtral_dir, qwen2_moe_dir):
    """{name: (checkpoint folder, results file)} from real scans (default --names trainer)."""
    out = {}
    for name, folder in (
        ("llama", llama_dir),
        ("mixtral", mixtral_dir),
        ("qwen2_moe", qwen2_moe_dir),
    ):
        report = scan(
            folder, ScanOptions(out_dir=tmp_path_factory.mktemp(name), device="cpu", progress=False)
        )
        out[name] = (folder, report.paths.results)
    return out


def test_text_says_how_many_gpus_first_and_json_is_the_documented_plan(llama_dir):
    result = plan(str(llama_dir), "--gpu-mem", "24GB")
    assert result.exit_code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert re.fullmatch(r"Full fine-tuning: 1 x 24 GB \(fits with .* to spare each\)", first)

    doc = plan_json(str(llama_dir), "--gpus", "2", "--optimizer", "adamw-8bit")
    assert doc["params_total"] == sum(p.numel() for p in _load(llama_dir).parameters())
    assert doc["settings"]["names"] == "trainer" and doc["settings"]["gpus"] == 2
    assert {"matrices", "seconds", "mnk"} <= set(doc["scan"])
    assert set(doc["methods"]) == {"full", "spectrum", "lora", "qlora"}
    for m in doc["methods"].values():
        assert m["gpus"] == 2 and m["trainable_params"] > 0
        assert FIELDS <= set(m["bytes_per_gpu"])
        assert m["fits"]["2"]["fits"] is True
    assert doc["methods"]["full"]["trainable_params"] == doc["params_total"]


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize("name", ["llama", "mixtral", "qwen2_moe"])
def test_spectrum_count_equals_freeze_on_the_loaded_model(scanned, name):
    folder, results = scanned[name]
    doc = plan_json(str(folder), "--results", str(results), "--top-percent", str(PERCENT))
    assert doc["settings"]["results"] == "given"
    model = _load(folder)
    summary = spectrum_stream.freeze(model, str(results), top_percent=PERCENT)
    assert summary.unmatched == []
    spectrum = doc["methods"]["spectrum"]
    assert spectrum["trainable_params"] == summary.trainable
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert spectrum["grad_params"] == grads  # whole tensors, masked rows included
    if name == "mixtral":  # one expert's rows of a fused tensor: fewer trained than allocated
        assert summary.partial and summary.trainable < grads


def test_results_written_with_the_other_names_or_model_are_one_line(scanned, tmp_path):
    folder, results = scanned["mixtral"]
    line = only_error(plan(str(folder), "--results", str(results), "--names", "checkpoint"))
    assert "--names trainer" in line and str(results) in line
    other = only_error(plan(str(folder), "--results", str(scanned["llama"][1])))
    assert "another model" in other


@pytest.mark.parametrize(
    "args, words",
    [
        (["/no/such/checkpoint"], "no such file"),
        (["{llama}", "--gpu-mem", "lots"], "--gpu-mem 'lots'"),
        (["{llama}", "--gpu-mem", "0GB"], "--gpu-mem"),
        (["{llama}", "--top-percent", "120"], "--top-percent 120"),
        (["{llama}", "--revision", "main"], "--revision only apply to a Hub repo"),
        (["{llama}", "--results", "{missing}"], "missing.json"),
    ],
)
def test_bad_input_is_one_error_line(llama_dir, tmp_path, args, words):
    args = [a.format(llama=llama_dir, missing=tmp_path / "missing.json") for a in args]
    assert words in only_error(plan(*args))


@pytest.fixture
def hub(llama_dir):
    server = HubServer()
    server.add_repo("tiny/llama", llama_dir)
    with server:
        yield server


def _header_end(path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_hub_plan_reads_headers_only(hub, hf, llama_dir, monkeypatch):  # noqa: F811
    monkeypatch.setattr(hub_headers, "FIRST_READ", 64)  # shards here are smaller than 100 kB
    doc = plan_json("tiny/llama")
    assert doc == {**plan_json(str(llama_dir)), "model": "tiny/llama"}
    assert not [f for f in hub.downloads() if f.endswith(".safetensors")]
    asked: dict[str, int] = {}
    for r in hub.log:
        if r.filename and r.filename.endswith(".safetensors"):
            assert r.method == "GET" and r.range, r
            first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", r.range).groups())
            asked[r.filename] = asked.get(r.filename, 0) + last - first + 1
    shards = {p.name: p for p in llama_dir.glob("*.safetensors")}
    assert set(asked) == set(shards)
    for name, n in asked.items():  # the 64-byte probe, then the header: no weight bytes
        assert n <= 64 + _header_end(shards[name]) < shards[name].stat().st_size
    assert not list((hf / "hub").rglob("*.safetensors"))


def test_results_keys_that_are_no_pattern_are_one_line(tmp_path):
    """A results file is outside input: a key that is not a regex, or names an empty row range,
    is one error line naming the file (it was a traceback)."""
    import json

    from click.testing import CliRunner

    from spectrum_stream.cli import main
    from spectrum_stream.examples.synthetic import write_planted_llama

    folder = tmp_path / "ckpt"
    write_planted_llama(folder, layers=1, hidden=64, intermediate=128, vocab=64, shards=1)
    for key in ("model.layers.0.(", "model.layers.0.self_attn.q_proj[5:3]"):
        bad = tmp_path / "snr_results_bad.json"
        bad.write_text(json.dumps({key: {"snr": 1.0, "type": "x"}}))
        r = CliRunner().invoke(main, ["plan", str(folder), "--results", str(bad)])
        assert r.exit_code == 1, r.output
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        assert str(bad) in r.stderr and key in r.stderr
