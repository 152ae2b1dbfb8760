"""The HTML report: key parsing, grids, whole pages for dense, per-expert, fused and DBRX keys."""

from __future__ import annotations

import math
import re
from html import escape

import numpy as np
import pytest
import torch
from report_page import check_page, figures, page_patterns

from spectrum_stream.report import ModuleKey, build_report, parse_key
from spectrum_stream.report.build import MAX_COLUMNS, _entries
from spectrum_stream.report.grid import expert_grids, layer_grid, split_columns
from spectrum_stream.report.histograms import mp_threshold, power_law_counts
from spectrum_stream.report.keys import human_label
from spectrum_stream.results.select import select, unfrozen_parameters


@pytest.mark.parametrize(
    "key, type_, want",
    [
        (
            "model.layers.3.self_attn.q_proj",
            "self_attn.q_proj",
            ModuleKey(3, "self_attn.q_proj", None),
        ),
        ("model.embed_tokens", "model.embed_tokens", ModuleKey(None, "model.embed_tokens", None)),
        ("lm_head", "lm_head", ModuleKey(None, "lm_head", None)),
        (
            "model.layers.3.block_sparse_moe.experts.5.w1",
            "block_sparse_moe.experts.5.w1",
            ModuleKey(3, "block_sparse_moe.experts.*.w1", 5),
        ),
        (
            "model.layers.12.mlp.experts.5.gate_proj",
            "mlp.experts.5.gate_proj",
            ModuleKey(12, "mlp.experts.*.gate_proj", 5),
        ),
        (
            "model.layers.3.mlp.experts.gate_up_proj(?#gate)$[5]",
            "mlp.experts.gate_up_proj(?#gate)$[5]",
            ModuleKey(3, "mlp.experts.gate_up_proj(?#gate)", 5),
        ),
        (
            "model.layers.3.mlp.experts.gate_up_proj(?#up)$[7]",
            "mlp.experts.gate_up_proj(?#up)",
            ModuleKey(3, "mlp.experts.gate_up_proj(?#up)", 7),
        ),
        (
            "model.layers.3.mlp.experts.down_proj$[5]",
            "mlp.experts.down_proj$[5]",
            ModuleKey(3, "mlp.experts.down_proj", 5),
        ),
        (
            "model.layers.3.mlp.experts.down_proj$[5]",
            "mlp.experts.down_proj",
            ModuleKey(3, "mlp.experts.down_proj", 5),
        ),
        (
            "transformer.blocks.2.ffn.experts.mlp.w1$[512:768]",
            "ffn.experts.mlp.w1$[512:768]",
            ModuleKey(2, "ffn.experts.mlp.w1", 2),
        ),
        (
            "transformer.blocks.0.ffn.experts.mlp.w2$[0:256]",
            "ffn.experts.mlp.w2$[0:256]",
            ModuleKey(0, "ffn.experts.mlp.w2", 0),
        ),
        (
            "model.layers.1.mlp.shared_expert.up_proj",
            "mlp.shared_expert.up_proj",
            ModuleKey(1, "mlp.shared_expert.up_proj", None),
        ),
        ("transformer.h.0.attn.c_attn", "attn.c_attn", ModuleKey(0, "attn.c_attn", None)),
        # odd shapes: never an error, expert None
        ("x.layers.2.w$[300:200]", "w$[300:200]", ModuleKey(2, "w", None)),
        ("x.layers.2.w$[100:250]", "w$[100:250]", ModuleKey(2, "w", None)),
        ("x.layers.2.w$[abc]", "w$[abc]", ModuleKey(2, "w$[abc]", None)),
        ("experts.4.w1", "w1", ModuleKey(None, "w1", 4)),
        ("", "", ModuleKey(None, "", None)),
    ],
)
def test_parse_key(key, type_, want):
    assert parse_key(key, type_) == want


def test_mp_threshold_matches_torch_quantiles():
    s = np.sort(np.random.default_rng(0).gamma(2.0, 1.0, 300))[::-1]
    t = torch.tensor(s.copy())
    sigma = (torch.quantile(t, 0.75) - torch.quantile(t, 0.25)) / 1.349
    want = float(sigma * (1 + math.sqrt(300 / 700)))
    assert mp_threshold(s, (700, 300)) == pytest.approx(want, rel=1e-12)
    assert mp_threshold(s, (300, 700)) == pytest.approx(want, rel=1e-12)


# ---- synthetic results sets -------------------------------------------------------------------

DENSE_TYPES = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def _outside(res: dict, rng) -> None:
    for name in ("model.embed_tokens", "lm_head"):
        res[name] = {"snr": float(rng.uniform(0.01, 1)), "type": name}


def dense(rng) -> dict:
    res = {
        f"model.layers.{i}.{t}": {"snr": float(rng.lognormal(-3, 1.5)), "type": t}
        for i in range(3)
        for t in DENSE_TYPES
    }
    _outside(res, rng)
    return res


def mixtral(rng, layers=4, experts=8) -> dict:
    res: dict = {}
    for i in range(layers):
        for t in DENSE_TYPES[:4]:
            res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-3, 1)), "type": t}
        for e in range(experts):
            for w in ("w1", "w2", "w3"):
                t = f"block_sparse_moe.experts.{e}.{w}"
                res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-4, 1)), "type": t}
        res[f"model.layers.{i}.block_sparse_moe.gate"] = {
            "snr": float(rng.uniform(0, 0.1)),
            "type": "block_sparse_moe.gate",
        }
    _outside(res, rng)
    return res


def fused(rng, layers=3, experts=6) -> dict:
    res: dict = {}
    for i in range(layers):
        res[f"model.layers.{i}.self_attn.q_proj"] = {
            "snr": float(rng.uniform(0.01, 1)),
            "type": "self_attn.q_proj",
        }
        for e in range(experts):
            for p in ("gate_up_proj(?#gate)", "gate_up_proj(?#up)", "down_proj"):
                t = f"mlp.experts.{p}$[{e}]"
                res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-4, 1)), "type": t}
    res["model.layers.0.mlp.experts.down_proj$[0]"]["snr"] = 0.0  # a zero on a log scale
    _outside(res, rng)
    return res


def dbrx(rng, layers=3, experts=4, ffn=256) -> dict:
    res: dict = {}
    for i in range(layers):
        res[f"transformer.blocks.{i}.norm_attn_norm.attn.Wqkv"] = {
            "snr": float(rng.uniform(0.01, 1)),
            "type": "norm_attn_norm.attn.Wqkv",
        }
        for e in range(experts):
            for w in ("w1", "v1", "w2"):
                t = f"ffn.experts.mlp.{w}$[{e * ffn}:{(e + 1) * ffn}]"
                res[f"transformer.blocks.{i}.{t}"] = {"snr": float(rng.lognormal(-4, 1)), "type": t}
    for name in ("transformer.wte", "lm_head"):
        res[name] = {"snr": float(rng.uniform(0.01, 1)), "type": name}
    return res


def top(results: dict, percent: float) -> set[str]:
    """The top `percent` of each type by SNR, as the selection step picks them."""
    by_type: dict[str, list[str]] = {}
    for k, v in results.items():
        by_type.setdefault(v["type"], []).append(k)
    out = set()
    for keys in by_type.values():
        keys.sort(key=lambda k: -results[k]["snr"])
        out.update(keys[: math.floor(len(keys) * percent / 100)])
    return out


def spectra_for(results: dict, rng, every: int = 5):
    """Random singular values (a few planted large ones) and shapes for every `every`-th key."""
    spectra, shapes = {}, {}
    for j, key in enumerate(results):
        if j % every:
            continue
        m, n = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        s = np.sort(np.abs(rng.normal(size=min(m, n))))[::-1]
        s[:3] *= 8
        spectra[key], shapes[key] = s, (m, n)
    return spectra, shapes


# ---- whole pages --------------------------------------------------------------------------------


def deepseek(rng, layers=4, experts=16) -> dict:
    """DeepSeek-V3 names: MLA attention, a dense first layer, routed and shared experts."""
    res: dict = {}
    for i in range(layers):
        for t in ("self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa"):
            res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-3, 1)), "type": t}
        if i == 0:
            for t in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
                res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-3, 1)), "type": t}
            continue
        for e in range(experts):
            for p in ("gate_proj", "up_proj", "down_proj"):
                t = f"mlp.experts.{e}.{p}"
                res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-5, 1)), "type": t}
        for p in ("gate_proj", "up_proj", "down_proj"):
            t = f"mlp.shared_experts.{p}"
            res[f"model.layers.{i}.{t}"] = {"snr": float(rng.lognormal(-3, 1)), "type": t}
    _outside(res, rng)
    return res


def big_moe(rng) -> dict:
    """About 20,000 modules: 27 layers of 256 experts x 3 projections, an incomplete last layer."""
    res = deepseek(rng, layers=27, experts=256)
    for e in range(100, 256):  # the last layer stops early: missing modules to draw as such
        for p in ("gate_proj", "up_proj", "down_proj"):
            del res[f"model.layers.26.mlp.experts.{e}.{p}"]
    return res


def _build(results, out, percent=40, grouping=None, **kw):
    page = build_report(results, out, top_percent=percent, grouping=grouping, **kw)
    return page, check_page(page, unfrozen_parameters(results, percent, grouping))


@pytest.mark.parametrize(
    "make, n_expert_figs",
    [(dense, 0), (mixtral, 3), (fused, 3), (dbrx, 3), (deepseek, 3)],
)
def test_page_shows_exactly_what_select_writes(tmp_path, make, n_expert_figs):
    rng = np.random.default_rng(7)
    results = make(rng)
    spectra, shapes = spectra_for(results, rng)
    page, html = _build(
        results, tmp_path / "r", spectra=spectra, shapes=shapes, title=f"{make.__name__} <test>"
    )
    patterns = unfrozen_parameters(results, 40)
    outside = [k for k, v in results.items() if v["type"] == k]
    assert patterns[: len(outside)] == [f"^{k}.weight$" for k in outside]  # trained, and shown
    assert figures(html).get("experts", 0) == n_expert_figs
    assert figures(html)["spectra"] and "alpha" not in figures(html)
    assert "<test>" not in html and "&lt;test&gt;" in html
    captions = " ".join(re.findall(r"<figcaption>(.*?)</figcaption>", html))
    assert ("expert" in captions) == (n_expert_figs > 0), "captions speak of experts wrongly"
    # what a reader needs comes first: the scan, the selection, the meaning, the commands
    order = [html.index(s) for s in ("id=scanned", "id=summary", "id=meaning", "id=next")]
    assert order == sorted(order) and order[-1] < html.index("<figure")


def test_every_grouping_matches_select(tmp_path):
    results = mixtral(np.random.default_rng(2))
    for grouping in (None, "pooled", "per-expert"):
        _build(results, tmp_path / str(grouping), 25, grouping)


def test_twenty_thousand_modules(tmp_path):
    results = big_moe(np.random.default_rng(5))
    assert len(results) > 19_000
    page, html = _build(results, tmp_path, 25)
    assert figures(html)["experts"] == 3
    assert "no such module" in html  # the incomplete last layer is drawn as missing, in a legend
    assert page.stat().st_size < 40 * 1024**2


def test_colour_is_the_rank_within_the_type():
    """Cells are coloured by where a module ranks within its own type, not by its raw SNR."""
    results = {
        f"model.layers.{i}.{t}": {"snr": scale * (i + 1), "type": t}
        for i in range(5)
        for t, scale in (("a", 1.0), ("b", 1000.0))
    }
    entries = _entries(results, 40, None)
    lg = layer_grid(entries)
    assert lg.columns == ["a", "b"]
    np.testing.assert_allclose(lg.values[:, 0], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(lg.values[:, 1], lg.values[:, 0])  # 1000x the SNR, same colours
    assert [e.rank for e in entries if e.type == "a"] == [5, 4, 3, 2, 1]
    assert {e.key for e in entries if e.selected} == {
        k for keys in select(results, 40).values() for k in keys
    }


def test_alpha_grid_marks_the_band_and_rough_fits(tmp_path):
    rng = np.random.default_rng(1)
    results = mixtral(rng, layers=3, experts=4)
    metrics = {
        k: {"alpha": float(rng.uniform(1.5, 30)), "num_pl_spikes": 9 if j % 2 else 200}
        for j, k in enumerate(results)
        if j % 3
    }
    _, html = _build(results, tmp_path, 50, metrics=metrics)
    assert figures(html)["alpha"] == 1 and "spectra" not in figures(html)
    assert "2-6: typical" in html and "&gt;= 8" in html
    assert "fit on &lt; 20 tail values" in html


def test_hostile_names_are_escaped(tmp_path):
    """Keys fit the key grammar (results/key_grammar.py); types and the title are any printable
    text, and the page escapes them."""
    bad = '<img src=x onerror="alert(1)">'
    results = {
        "model.layers.0.x": {"snr": 0.5, "type": bad},
        "model.layers.1.a": {"snr": 0.1, "type": "a&b"},
        "model.layers.2.a": {"snr": 0.2, "type": "a&b"},
    }
    _, html = _build(results, tmp_path, 50, title=bad)
    assert "<img src=x" not in html and 'onerror="alert' not in html
    assert escape(bad) in html and "a&amp;b" in html


def test_non_finite_values_are_skipped_and_listed(tmp_path):
    results = {
        "model.layers.0.a": {"snr": float("nan"), "type": "a"},
        "model.layers.1.a": {"snr": float("inf"), "type": "a"},
        "model.layers.2.a": {"snr": 0.3, "type": "a"},
        "model.layers.1.b": {"snr": 0.2, "type": "b"},
        "model.layers.2.b": {"snr": 0.1, "type": "b"},
        "lm_head": {"snr": 0.0, "type": "lm_head"},
    }
    clean = {k: v for k, v in results.items() if math.isfinite(v["snr"])}
    page = build_report(
        results, tmp_path, top_percent=50, metrics={"model.layers.1.b": {"alpha": None}}
    )
    html = check_page(page, unfrozen_parameters(clean, 50))
    assert "Skipped: 2 modules without a finite SNR" in html


@pytest.mark.parametrize(
    "results",
    [
        {},
        {"lm_head": {"snr": 0.3, "type": "lm_head"}},
        {"a.0.b": {"snr": -1.0, "type": "b"}, "a.1.b": {"snr": 5.0, "type": "b"}},
    ],
)
def test_degenerate_results_still_make_a_page(tmp_path, results):
    page = build_report(
        results,
        tmp_path,
        top_percent=50,
        spectra={k: np.array([]) for k in results},
        shapes={},
    )
    html = page.read_text()
    assert page_patterns(html) == unfrozen_parameters(results, 50)
    assert "spectra" not in figures(html)


def test_many_one_module_types_stay_bounded(tmp_path):
    """3,000 types of one module each: the pictures stay a fixed size, the rest go to tables."""
    results = {f"block{i}.w": {"snr": 1.0 + i, "type": f"block{i}.w"} for i in range(3000)}
    page, html = _build(results, tmp_path, 25)
    assert figures(html) == {"outside": 1}
    assert html.count("<rect") < 200 and "2976 more are listed in the tables" in html


def test_wide_layer_grids_are_split():
    results = {
        f"model.layers.{i}.p{j}": {"snr": float(i + j), "type": f"p{j}"}
        for i in range(2)
        for j in range(100)
    }
    grids = split_columns(layer_grid(_entries(results, 25, None)), MAX_COLUMNS)
    assert [len(g.columns) for g in grids] == [48, 48, 4]


@pytest.mark.parametrize(
    "raw, label",
    [
        ("mlp.experts.gate_up_proj(?#gate)", "mlp.experts.gate_up_proj, gate rows"),
        ("mlp.experts.gate_up_proj(?#up)$[3]", "mlp.experts.gate_up_proj, up rows, expert 3"),
        ("mlp.experts.down_proj$[5]", "mlp.experts.down_proj, expert 5"),
        ("ffn.experts.mlp.w1$[512:768]", "ffn.experts.mlp.w1, rows 512-767"),
        ("self_attn.q_proj", "self_attn.q_proj"),
    ],
)
def test_human_labels(raw, label):
    assert human_label(raw) == label


def test_power_law_counts_match_the_integral():
    """Expected counts per bin of singular values under p(lam) ~ lam^-alpha, lam >= xmin, checked
    against a numerical integral of the density in float64."""
    rng = np.random.default_rng(0)
    s = np.sqrt(rng.pareto(2.0, 4000) + 1.0)
    alpha, xmin = 3.0, 1.5
    edges = np.linspace(s.min(), 3.0, 30)
    got = power_law_counts(s, edges, alpha, xmin)
    assert np.isnan(got).sum() == np.sum(edges[:-1] ** 2 < xmin) > 0
    n_tail = int(np.sum(s**2 >= xmin))
    for b in range(len(edges) - 1):
        lo, hi = edges[b] ** 2, edges[b + 1] ** 2
        if lo < xmin:  # a bin that starts below xmin is not drawn
            assert np.isnan(got[b])
            continue
        lam = np.linspace(lo, hi, 20001)
        density = (alpha - 1) / xmin * (lam / xmin) ** -alpha
        want = n_tail * float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(lam)))
        assert got[b] == pytest.approx(want, rel=1e-6)


def test_grids_pool_experts_and_place_dbrx_rows():
    rng = np.random.default_rng(3)
    results = dbrx(rng, layers=3, experts=4, ffn=256)
    sel = top(results, 25)
    entries = _entries(results, 25, None)
    by_key = {e.key: e for e in entries}
    lg = layer_grid(entries)
    assert lg.layers == [0, 1, 2]
    assert lg.columns == [
        "norm_attn_norm.attn.Wqkv",
        "ffn.experts.mlp.w1",
        "ffn.experts.mlp.v1",
        "ffn.experts.mlp.w2",
    ]
    assert lg.pooled == [False, True, True, True]
    w1 = [
        by_key[f"transformer.blocks.1.ffn.experts.mlp.w1$[{e * 256}:{(e + 1) * 256}]"].percentile
        for e in range(4)
    ]
    assert lg.values[1, 1] == pytest.approx(np.median(w1))
    assert [e.key for e in lg.outside] == ["transformer.wte", "lm_head"]
    grids = {g.projection: g for g in expert_grids(entries)}
    g = grids["ffn.experts.mlp.v1"]
    assert g.values.shape == (3, 4) and g.experts == [0, 1, 2, 3]
    key = "transformer.blocks.2.ffn.experts.mlp.v1$[768:1024]"
    assert g.values[2, 3] == by_key[key].percentile
    assert g.selected[2, 3] == (key in sel)
    assert g.selected.sum() == sum(1 for k in sel if ".v1$" in k)


def test_a_lone_module_is_not_called_best_and_worst(tmp_path):
    results = dense(np.random.default_rng(9))
    spectra = {"lm_head": np.linspace(3.0, 0.1, 50), "model.layers.0.mlp.up_proj": np.ones(40)}
    spectra["model.layers.1.mlp.up_proj"] = np.linspace(2.0, 0.1, 40)
    shapes = {k: (60, 50) for k in spectra}
    _, html = _build(results, tmp_path, spectra=spectra, shapes=shapes)
    lone = html.split("Spectrum: lm_head")[1].split("</figure>")[0]
    assert "the only one: lm_head" in lone and "best" not in lone and "worst" not in lone
    pair = html.split("Spectrum: mlp.up_proj")[1].split("</figure>")[0]
    assert "best: " in pair and "worst: " in pair
