"""`metrics`, `report` and `compare` through the command line, on real scans of tiny checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from report_page import check_page, figures

from spectrum_stream.cli import main
from spectrum_stream.metrics import compute as compute_mod
from spectrum_stream.metrics import read_spectra, spectra_path, spectral_metrics
from spectrum_stream.results.select import select

# fixture, scan flags: dense; per-expert MoE keys (one tensor per expert, checkpoint names, one
# type per expert); fused MoE (3-D expert tensors, trainer keys `...gate_up_proj(?#gate)$[N]`, pooled)
SCANS = {
    "llama_dir": [],
    "mixtral_dir": ["--names", "checkpoint", "--expert-grouping", "per-expert"],
    "fused_qwen2_moe_dir": [],
    "qwen2_moe_dir": [],
    "dbrx_dir": [],
}


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def scanned(request, tmp_path_factory):
    """Scan each fixture once: {fixture name: results JSON path}."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            folder = request.getfixturevalue(name)
            out = tmp_path_factory.mktemp("scan") / "model_snr_results"
            r = invoke("scan", folder, "--out-dir", out, "--device", "cpu", "--quiet", *SCANS[name])
            assert r.exit_code == 0, r.output
            (done[name],) = out.glob("snr_results_*[!d].json")  # not *_sorted.json
        return done[name]

    return get


def _one_error_line(r, *needles: str) -> str:
    assert r.exit_code != 0
    assert (
        "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    )
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---- metrics -----------------------------------------------------------------------------------


def test_metrics_rows_match_results_and_stored_spectra(scanned, tmp_path):
    path = scanned("llama_dir")
    results = json.loads(path.read_text())
    spectra, shapes = read_spectra(spectra_path(path))
    table = tmp_path / "m.csv"
    r = invoke("metrics", path, "-o", table, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"wrote {table}: {len(results)} rows, {len(results)} with metrics" in r.stdout
    rows = list(csv.DictReader(table.open()))
    assert [row["key"] for row in rows] == list(results)
    for row in rows:
        key = row["key"]
        assert row["type"] == results[key]["type"]
        assert float(row["snr"]) == results[key]["snr"]
        want = spectral_metrics(spectra[key], *shapes[key])["alpha"]
        assert float(row["alpha"]) == want or (math.isnan(want) and row["alpha"] == "")

    as_json = tmp_path / "m.json"
    assert invoke("metrics", path, "-o", as_json, "--quiet").exit_code == 0
    doc = json.loads(as_json.read_text())
    assert [d["key"] for d in doc] == list(results)
    assert all(d["snr"] == results[d["key"]]["snr"] for d in doc)


def test_metrics_pool_gives_the_same_rows(scanned, monkeypatch):
    path = scanned("mixtral_dir")
    results = json.loads(path.read_text())
    spectra, shapes = read_spectra(spectra_path(path))
    alone = compute_mod.compute_rows(results, spectra, shapes, progress=False, workers=1)
    monkeypatch.setattr(compute_mod, "POOL_MIN_VALUES", 0)  # force the pool on a tiny scan
    monkeypatch.setattr(compute_mod, "CHUNK_VALUES", 100)
    pooled = compute_mod.compute_rows(results, spectra, shapes, progress=False, workers=2)
    assert json.dumps(pooled) == json.dumps(alone)


def test_metrics_without_spectra_says_why_and_what_to_do(scanned, tmp_path):
    path = tmp_path / "snr_results_old-scan.json"  # a results file from before spectra were kept
    shutil.copy(scanned("llama_dir"), path)
    r = invoke("metrics", path, "-o", tmp_path / "m.csv")
    _one_error_line(
        r,
        "snr_results_old-scan_spectra.safetensors",
        "kept no singular values",
        "scan the checkpoint again",
        "`rebuild` cannot",
    )
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-o", "m.txt"], "must end in .csv or .json"),
        (["-o", "m.csv"], "cannot read"),  # RESULTS does not exist
    ],
)
def test_metrics_bad_input_is_one_line(tmp_path, args, needle):
    r = invoke(
        "metrics",
        tmp_path / "snr_results_none.json",
        *[tmp_path / a if a.startswith("m.") else a for a in args],
    )
    _one_error_line(r, needle)


# ---- report ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture, expert_figures",
    [
        ("llama_dir", 0),
        ("mixtral_dir", 3),
        ("fused_qwen2_moe_dir", 3),
        ("qwen2_moe_dir", 3),
        ("dbrx_dir", 3),
    ],
)
def test_report_of_a_real_scan(scanned, tmp_path, fixture, expert_figures):
    path = scanned(fixture)
    out = tmp_path / "report"
    r = invoke("report", path, "-o", out, "--top-percent", "40", "--quiet")
    assert r.exit_code == 0, r.output
    page = out / "index.html"
    assert f"wrote {page}" in r.stdout and page.resolve().as_uri() in r.stdout
    selected = invoke("select", path, "--top-percent", "40", "--format", "json")
    html = check_page(page, json.loads(selected.stdout))
    assert figures(html).get("experts", 0) == expert_figures
    assert figures(html)["alpha"] and figures(html)["spectra"]
    assert "No spectra" not in html
    assert f"spectrum-stream select {path} --top-percent 40 -o unfrozen.yaml" in html
    assert "journal last written" in html and "headers&#x27; sha256" in html
    assert "parameters in the scanned matrices" in html


def test_report_reads_a_metrics_table_and_pooled_grouping(scanned, tmp_path):
    path = scanned("mixtral_dir")  # per-expert types in the file; rank pooled instead
    results = json.loads(path.read_text())
    table = tmp_path / "m.json"
    assert invoke("metrics", path, "-o", table, "--quiet").exit_code == 0
    r = invoke(
        "report",
        path,
        "-o",
        tmp_path / "r",
        "--metrics",
        table,
        "--expert-grouping",
        "pooled",
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    chosen = {k for keys in select(results, 25, "pooled").values() for k in keys}
    assert chosen != {k for keys in select(results, 25).values() for k in keys}
    selected = invoke("select", path, "--expert-grouping", "pooled", "--format", "json")
    html = check_page(tmp_path / "r" / "index.html", json.loads(selected.stdout))
    assert figures(html)["alpha"] and "--expert-grouping pooled" in html
    assert "(no fit)" in html


def test_report_without_spectra_still_draws_the_snr(scanned, tmp_path):
    path = tmp_path / "snr_results_old-scan.json"
    shutil.copy(scanned("llama_dir"), path)
    r = invoke("report", path, "-o", tmp_path / "r", "--quiet")
    assert r.exit_code == 0, r.output
    selected = invoke("select", path, "--format", "json")
    html = check_page(tmp_path / "r" / "index.html", json.loads(selected.stdout))
    assert figures(html)["rank"] and "spectra" not in figures(html)
    assert "alpha" not in figures(html)
    assert "No spectra or alpha" in html and "kept no singular values" in html


def test_every_command_reads_the_original_tools_non_finite_snrs(scanned, tmp_path, monkeypatch):
    """A results file as Python's json writes it (bare NaN, Infinity; null too): select, report,
    compare and metrics read it, skip those modules, and say how many and where they are listed."""
    path = tmp_path / "snr_results_published.json"
    results = json.loads(scanned("llama_dir").read_text())
    keys = list(results)
    for key, value in zip(keys[:3], (math.nan, math.inf, None)):
        results[key]["snr"] = value
    path.write_text(json.dumps(results))
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()
    clean = {k: v for k, v in results.items() if k not in keys[:3]}
    package_log = logging.getLogger("spectrum_stream")
    shipped = [h for h in package_log.handlers if isinstance(h, logging.NullHandler)]
    monkeypatch.setattr(package_log, "handlers", shipped)  # as in a fresh process: no CLI handler
    r = invoke("select", path, "--format", "json")
    assert r.exit_code == 0, r.output
    assert "3 modules have no finite SNR" in r.stderr
    from spectrum_stream.results.select import unfrozen_parameters

    assert json.loads(r.stdout) == unfrozen_parameters(clean, 25)
    r = invoke("select", path)
    assert r.exit_code == 0 and "listed as comments at the end" in r.stderr
    assert all(json.dumps(k) in r.stdout.split("# skipped")[1] for k in keys[:3])
    r = invoke("report", path, "-o", tmp_path / "r", "--quiet")
    assert r.exit_code == 0 and "listed on the report page" in r.stderr
    html = check_page(tmp_path / "r" / "index.html", unfrozen_parameters(clean, 25))
    assert "Skipped: 3 modules without a finite SNR" in html
    r = invoke("compare", path, scanned("llama_dir"), "--format", "json")
    assert r.exit_code == 0 and "3 modules have no finite SNR" in r.stderr
    assert sorted(_strict_json(r.stdout)["skipped_a"]) == sorted(keys[:3])


def test_report_refuses_a_bad_metrics_table(scanned, tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("key,alpha\nmodel.layers.0.mlp.up_proj,abc\n")
    r = invoke("report", scanned("llama_dir"), "-o", tmp_path / "r", "--metrics", bad, "--quiet")
    _one_error_line(r, "m.csv", "alpha must be a number")


# ---- compare -----------------------------------------------------------------------------------


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_compare_identical_and_reversed_scans(scanned, tmp_path):
    path = scanned("mixtral_dir")
    results = json.loads(path.read_text())
    r = invoke("compare", path, path, "--format", "json")
    assert r.exit_code == 0, r.output
    tiny = _strict_json(r.stdout)  # 25% of each tiny per-expert type selects nothing: no overlap
    assert tiny["top_overlap"] is None and tiny["empty_types"]
    r = invoke("compare", path, path, "--format", "json", "--top-percent", "50")
    same = _strict_json(r.stdout)
    assert same["spearman"] == pytest.approx(1.0) and same["top_overlap"] == 1.0
    per_type = [row["spearman"] for row in same["types"].values() if row["n_common"] >= 2]
    assert per_type and all(s == pytest.approx(1.0) for s in per_type)

    reversed_ = tmp_path / "snr_results_reversed.json"
    reversed_.write_text(
        json.dumps({k: {"snr": 1.0 / v["snr"], "type": v["type"]} for k, v in results.items()})
    )
    r = invoke("compare", path, reversed_, "--format", "json", "--top-percent", "50")
    assert r.exit_code == 0, r.output
    doc = _strict_json(r.stdout)
    assert doc["spearman"] == pytest.approx(-1.0)
    for t, row in doc["types"].items():
        if row["n_common"] >= 2:
            assert row["spearman"] == pytest.approx(-1.0), t
            assert row["top_overlap"] == 0.0

    r = invoke("compare", path, reversed_)
    assert (
        r.exit_code == 0 and "Spearman rank correlation of SNR" in r.stdout and "-1.000" in r.stdout
    )


def test_compare_reads_a_published_file_with_nan_and_null(tmp_path):
    a = {
        f"model.layers.{i}.mlp.down_proj": {"snr": float(i + 1), "type": "mlp.down_proj"}
        for i in range(4)
    }
    published = tmp_path / "published.json"
    published.write_text(
        json.dumps(a)[:-1] + ', "model.layers.4.mlp.down_proj": '
        '{"snr": NaN, "type": "mlp.down_proj"}, "lm_head": {"snr": null, "type": "lm_head"}}'
    )
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(a))
    r = invoke("compare", ours, published, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = _strict_json(r.stdout)
    assert doc["spearman"] == pytest.approx(1.0)
    assert doc["skipped_b"] == ["model.layers.4.mlp.down_proj", "lm_head"]
    assert doc["types"]["mlp.down_proj"]["spearman"] == pytest.approx(1.0)


def test_compare_bad_input_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _one_error_line(invoke("compare", deep, deep), "invalid JSON")
    _one_error_line(invoke("compare", tmp_path / "none.json", deep), "cannot read")
    ok = tmp_path / "ok.json"
    ok.write_text("{}")
    _one_error_line(invoke("compare", ok, ok, "--top-percent", "140"), "--top-percent")


def test_report_refuses_a_spectrum_longer_than_any_matrix(tmp_path):
    """The fit's cost is bounded: a kept spectrum past any real matrix's k is refused, one line."""
    from spectrum_stream.results.spectra import write_spectra

    path = tmp_path / "snr_results_huge.json"
    path.write_text(json.dumps({"model.layers.0.w": {"snr": 1.0, "type": "w"}}))
    values = np.linspace(2.0, 1.0, 70_000, dtype=np.float32)
    write_spectra(
        spectra_path(path), {"model.layers.0.w": values}, {"model.layers.0.w": (10**6,) * 2}
    )
    r = invoke("report", path, "-o", tmp_path / "r", "--quiet")
    _one_error_line(r, "model.layers.0.w", "70000 singular values")
