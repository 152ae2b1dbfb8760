"""The HTML report: key parsing, grids, whole pages for dense, per-expert, fused and DBRX keys."""

from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spectrum_stream.report import ModuleKey, build_report, parse_key
from spectrum_stream.report.figures import mp_threshold
from spectrum_stream.report.grid import Entry, expert_grids, layer_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def _check_page(page: Path, results: dict, selected: set[str]) -> str:
    assert page.name == "index.html" and page.is_file()
    html = page.read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs, "the page shows no figure"
    for src in srcs:
        assert not re.match(r"^[a-z]+:|^/", src), f"{src}: not a relative link"
        png = page.parent / src
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC, src
        assert len(data) > 2000, f"{src}: {len(data)} bytes, suspiciously small"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert min(im.size) >= 200, (src, im.size)
    assert not re.search(r'(src|href)="(https?:)?//', html), "external resource"
    for t in {v["type"] for v in results.values()}:
        assert escape(t) in html, f"type {t!r} not named"
    for key in selected:
        assert f"<td><code>{escape(key)}</code></td>" in html, f"selected {key!r} not in the table"
    return html


@pytest.mark.parametrize("make, n_expert_figs", [(dense, 0), (mixtral, 3), (fused, 3), (dbrx, 3)])
def test_report_pages(tmp_path, make, n_expert_figs):
    rng = np.random.default_rng(7)
    results = make(rng)
    selected = top(results, 40)
    assert selected
    spectra, shapes = spectra_for(results, rng)
    page = build_report(
        results,
        tmp_path / "r",
        selected=selected,
        top_percent=40,
        spectra=spectra,
        shapes=shapes,
        title=f"{make.__name__} <test>",
    )
    html = _check_page(page, results, selected)
    assert len(re.findall(r'<img src="experts_', html)) == n_expert_figs
    assert re.findall(r'<img src="spectra_', html)
    assert "alpha_heatmap.png" not in html
    assert "<test>" not in html and "&lt;test&gt;" in html


def test_alpha_heatmap_when_metrics_give_alpha(tmp_path):
    rng = np.random.default_rng(1)
    results = mixtral(rng, layers=3, experts=4)
    metrics = {k: {"alpha": float(rng.uniform(1.5, 8))} for j, k in enumerate(results) if j % 3}
    page = build_report(
        results, tmp_path, selected=top(results, 50), top_percent=50, metrics=metrics
    )
    html = _check_page(page, results, top(results, 50))
    assert '<img src="alpha_heatmap.png"' in html
    assert "spectra_" not in html


def test_hostile_names_are_escaped(tmp_path):
    bad = 'model.layers.0.<img src=x onerror="alert(1)">'
    results = {
        bad: {"snr": 0.5, "type": '<img src=x onerror="alert(1)">'},
        "model.layers.1.a&b": {"snr": 0.1, "type": "a&b"},
    }
    page = build_report(results, tmp_path, selected={bad}, top_percent=50)
    html = page.read_text()
    assert "<img src=x" not in html and 'onerror="alert' not in html
    assert escape(bad) in html and "a&amp;b" in html


def test_non_finite_and_missing_values_do_not_break(tmp_path):
    results = {
        "model.layers.0.a": {"snr": float("nan"), "type": "a"},
        "model.layers.1.a": {"snr": float("inf"), "type": "a"},
        "model.layers.1.b": {"snr": 0.2, "type": "b"},
        "lm_head": {"snr": 0.0, "type": "lm_head"},
    }
    page = build_report(
        results,
        tmp_path,
        selected={"model.layers.1.b", "gone"},
        top_percent=50,
        metrics={"model.layers.1.b": {"alpha": None}},
    )
    html = _check_page(page, results, {"model.layers.1.b"})
    assert "1 selected keys are not in the results" in html


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
        selected=set(list(results)[-1:]),
        top_percent=50,
        spectra={k: np.array([]) for k in results},
        shapes={},
    )
    html = _check_page(page, results, set(list(results)[-1:]))
    assert "spectra_" not in html


def test_grids_pool_experts_and_place_dbrx_rows():
    rng = np.random.default_rng(3)
    results = dbrx(rng, layers=3, experts=4, ffn=256)
    sel = top(results, 25)
    entries = [
        Entry(k, v["type"], parse_key(k, v["type"]), v["snr"], k in sel) for k, v in results.items()
    ]
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
        results[f"transformer.blocks.1.ffn.experts.mlp.w1$[{e * 256}:{(e + 1) * 256}]"]["snr"]
        for e in range(4)
    ]
    assert lg.values[1, 1] == pytest.approx(np.median(w1))
    assert [n for n, _, _ in lg.outside] == ["transformer.wte", "lm_head"]
    grids = {g.projection: g for g in expert_grids(entries)}
    g = grids["ffn.experts.mlp.v1"]
    assert g.values.shape == (3, 4) and g.experts == [0, 1, 2, 3]
    key = "transformer.blocks.2.ffn.experts.mlp.v1$[768:1024]"
    assert g.values[2, 3] == results[key]["snr"]
    assert g.selected[2, 3] == (key in sel)
    assert g.selected.sum() == sum(1 for k in sel if ".v1$" in k)
