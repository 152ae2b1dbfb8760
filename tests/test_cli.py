"""The command line end to end: scan, select and demo, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from click.testing import CliRunner

from spectrum_stream.cli import main


def test_scan_then_select(llama_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "model_snr_results"
    r = runner.invoke(
        main, ["scan", str(llama_dir), "--out-dir", str(out), "--device", "cpu", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert "Scanned tiny-llama on cpu: 23 modules this run" in r.stdout
    results = out / "snr_results_tiny-llama.json"
    assert len(json.loads(results.read_text())) == 23

    r = runner.invoke(main, ["select", str(results), "--top-percent", "34"])
    assert r.exit_code == 0, r.output
    params = yaml.safe_load(r.stdout)["unfrozen_parameters"]
    assert params[:2] == ["^model.embed_tokens.weight$", "^lm_head.weight$"] or params[:2] == [
        "^lm_head.weight$",
        "^model.embed_tokens.weight$",
    ]
    assert len(params) == 2 + 7 * 1  # 3 layers * 34% -> 1 per type

    target = tmp_path / "p.json"
    r = runner.invoke(
        main,
        ["select", str(results), "--top-percent", "100", "--format", "json", "-o", str(target)],
    )
    assert r.exit_code == 0 and len(json.loads(target.read_text())) == 2 + 21


def test_bad_input_is_one_line_without_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "spectrum_stream", "scan", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "no such file or folder" in r.stderr


def test_demo_finds_the_planted_modules(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "spectrum_stream", "demo", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Planted-signal check: 7 of 7 types" in r.stdout
    page = tmp_path / "model_snr_results" / "report" / "index.html"
    assert (
        f"Report: {page.relative_to(tmp_path)}" in r.stdout and page.resolve().as_uri() in r.stdout
    )
    assert page.is_file() and "<figure class=alpha>" in page.read_text()
    assert (
        tmp_path / "model_snr_results" / "snr_results_spectrum-stream-demo-llama.json"
    ).is_file()
