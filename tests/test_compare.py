"""compare_results and spearman: identical and reversed scans, ties, keys in one scan only, published files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from spectrum_stream.errors import SpectrumError
from spectrum_stream.metrics import (
    compare_results,
    format_compare_text,
    load_published_results,
    spearman,
)
from spectrum_stream.results.select import read_results


def _scan(seed: int, layers: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    results = {}
    for i in range(layers):
        for proj in ("self_attn.q_proj", "mlp.down_proj"):
            results[f"model.layers.{i}.{proj}"] = {"snr": float(rng.random()), "type": proj}
        for e in range(4):
            results[f"model.layers.{i}.block_sparse_moe.experts.{e}.w1"] = {
                "snr": float(rng.random()),
                "type": f"block_sparse_moe.experts.{e}.w1",
            }
    results["lm_head"] = {"snr": 0.3, "type": "lm_head"}
    return results


def test_identical_scans_agree_fully():
    a = _scan(0)
    report = compare_results(a, json.loads(json.dumps(a)))
    assert report["spearman"] == pytest.approx(1.0)
    assert report["top_overlap"] == 1.0
    assert report["only_in_a"] == report["only_in_b"] == [] == report["skipped_a"]
    for t, row in report["types"].items():
        assert row["entered"] == row["left"] == []
        # lm_head: one module, 25% of it selects none on either side: no overlap to speak of
        assert row["top_overlap"] == (None if t == "lm_head" else 1.0)
        if row["n_common"] >= 2:
            assert row["spearman"] == pytest.approx(1.0), t
    assert report["empty_types"] == ["lm_head"]
    assert report["types"]["lm_head"]["spearman"] is None  # one module: no correlation


def test_reversed_ranking_is_minus_one_and_swaps_the_selection():
    a = _scan(1)
    b = {k: {"snr": -v["snr"], "type": v["type"]} for k, v in a.items()}
    report = compare_results(a, b, top_percent=25)
    assert report["spearman"] == pytest.approx(-1.0)
    row = report["types"]["mlp.down_proj"]  # 12 modules: top 3 of each, disjoint
    assert row["spearman"] == pytest.approx(-1.0)
    assert row["top_overlap"] == 0.0 and len(row["entered"]) == len(row["left"]) == 3
    by_a = sorted((k for k in a if a[k]["type"] == "mlp.down_proj"), key=lambda k: -a[k]["snr"])
    assert row["left"] == by_a[:3] and row["entered"] == by_a[::-1][:3]


def test_top_overlap_is_jaccard():
    a = {
        f"model.layers.{i}.mlp.up_proj": {"snr": float(10 - i), "type": "mlp.up_proj"}
        for i in range(8)
    }
    b = json.loads(json.dumps(a))
    b["model.layers.1.mlp.up_proj"]["snr"] = -5.0  # top 2 of 8: A {0, 1}, B {0, 2}
    row = compare_results(a, b, top_percent=25)["types"]["mlp.up_proj"]
    assert row["top_overlap"] == pytest.approx(1 / 3)
    assert row["entered"] == ["model.layers.2.mlp.up_proj"] and row["left"] == [
        "model.layers.1.mlp.up_proj"
    ]
    nothing = compare_results(a, b, top_percent=0)
    assert nothing["types"]["mlp.up_proj"]["top_overlap"] is None  # two empty selections
    assert nothing["top_overlap"] is None and "n/a" in format_compare_text(nothing)


@pytest.mark.parametrize("seed", range(6))
def test_spearman_with_ties_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 60))
    x = rng.integers(0, 5, size).astype(float)  # many ties
    y = x * 0.5 + rng.integers(0, 4, size)
    expected = scipy.stats.spearmanr(x, y).statistic
    if np.isnan(expected):
        assert math.isnan(spearman(x, y))
    else:
        assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    z = rng.standard_normal(size)
    assert spearman(z, -z) == pytest.approx(-1.0)


def test_spearman_edge_cases():
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # one side constant
    with pytest.raises(ValueError):
        spearman([1.0, 2.0], [1.0])


def test_keys_in_one_scan_only():
    a = _scan(2, layers=4)
    b = {k: v for k, v in a.items() if "layers.3." not in k}
    b["model.layers.9.mlp.down_proj"] = {"snr": 0.9, "type": "mlp.down_proj"}
    b["model.layers.0.mlp.gate_proj"] = {"snr": 0.9, "type": "mlp.gate_proj"}
    report = compare_results(a, b)
    assert sorted(report["only_in_a"]) == sorted(k for k in a if "layers.3." in k)
    assert report["only_in_b"] == ["model.layers.9.mlp.down_proj", "model.layers.0.mlp.gate_proj"]
    assert report["types_only_in_b"] == ["mlp.gate_proj"]
    row = report["types"]["mlp.down_proj"]
    assert (row["n_a"], row["n_b"], row["n_common"]) == (4, 4, 3)
    assert report["n_common"] == len(a) - 6


def test_published_file_with_non_finite_entries(tmp_path):
    """Files from the original tool can hold NaN, Infinity or null: skipped and counted, no crash."""
    a = _scan(3, layers=6)
    text = json.dumps(a)
    for key, literal in (
        ("model.layers.0.mlp.down_proj", "NaN"),
        ("model.layers.1.self_attn.q_proj", "Infinity"),
        ("model.layers.2.mlp.down_proj", "null"),
    ):
        old = json.dumps({key: a[key]})[1:-1]
        text = text.replace(old, f'"{key}": {{"snr": {literal}, "type": "{a[key]["type"]}"}}')
    path = tmp_path / "snr_results_published.json"
    path.write_text(text)
    read = read_results(path)
    assert "model.layers.0.mlp.down_proj" in read.skipped
    assert load_published_results(path) == read.results
    report = compare_results(a, read.results, skipped=([], read.skipped))
    assert len(report["skipped_b"]) == 3 and report["skipped_a"] == []
    assert report["only_in_a"] == report["only_in_b"] == []
    assert report["types"]["mlp.down_proj"]["n_common"] == 4
    assert report["types"]["mlp.down_proj"]["spearman"] == pytest.approx(1.0)
    text_report = format_compare_text(report)
    assert "skipped in B (SNR not a finite number): 3" in text_report
    assert text_report.splitlines()[0].startswith("Spearman rank correlation of SNR over")


def test_published_file_that_is_not_results(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(SpectrumError, match="x.json"):
        load_published_results(path)


def test_text_report_has_a_line_per_type():
    a, b = _scan(4), _scan(5)
    report = compare_results(a, b, grouping="pooled")
    text = format_compare_text(report, names=("ours", "published"))
    assert "block_sparse_moe.experts.*.w1" in text and "n_ours" in text
    assert len(report["types"]) == 4
    assert -1.0 <= report["spearman"] <= 1.0


def test_inverted_snrs_are_never_a_perfect_overlap():
    """Every SNR inverted: no type may read as a perfect match (empty selections are n/a)."""
    a = _scan(3)
    b = {k: {**v, "snr": 1.0 / v["snr"]} for k, v in a.items()}
    report = compare_results(a, b)
    assert report["grouping"] == "types"  # the file's own types, as select ranks
    assert report["spearman"] == pytest.approx(-1.0)
    assert report["top_overlap"] == 0.0
    for row in report["types"].values():
        assert row["top_overlap"] != 1.0
    text = format_compare_text(report)
    assert "25% of 1 modules selects none" in text
