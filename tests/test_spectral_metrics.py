"""spectral_metrics against weightwatcher 0.7.7 itself, and the fit against a slow pure-Python reference.

weightwatcher is a test-only dependency: it analyzes small torch modules holding the same matrices,
and each metric must agree within 1e-3 relative (in practice ~1e-14, both work in float64).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from spectrum_stream.errors import SpectrumError
from spectrum_stream.metrics import metrics_rows, spectral_metrics, write_table
from spectrum_stream.metrics.powerlaw import EVALS_THRESH, fit_power_law
from spectrum_stream.metrics.spectral import METRIC_NAMES

FLOAT_METRICS = [name for name in METRIC_NAMES if name != "num_pl_spikes"]


def _random(rng, m, n):
    return rng.standard_normal((m, n)) / math.sqrt(n)


def _planted(rng, m, n, rank=4, strength=6.0):
    """Low rank signal plus noise: a few singular values well above the bulk."""
    u = np.linalg.qr(rng.standard_normal((m, rank)))[0]
    v = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    signal = u @ np.diag(strength * (1 + np.arange(rank))) @ v.T
    return signal + _random(rng, m, n)


def _mixtral_matrices():
    """Expert and attention weights of a tiny transformers Mixtral (bfloat16, read as float32)."""
    from moe_models import tiny_mixtral

    state = tiny_mixtral().state_dict()
    gate_up = state["model.layers.0.mlp.experts.gate_up_proj"].float()
    ffn = gate_up.shape[1] // 2
    return {
        "mixtral.expert0.w1": gate_up[0, :ffn].numpy(),
        "mixtral.expert2.w3": gate_up[2, ffn:].numpy(),
        "mixtral.expert1.w2": state["model.layers.0.mlp.experts.down_proj"][1].float().numpy(),
        "mixtral.q_proj": state["model.layers.1.self_attn.q_proj.weight"].float().numpy(),
        "mixtral.k_proj": state["model.layers.0.self_attn.k_proj.weight"].float().numpy(),
    }


@pytest.fixture(scope="module")
def matrices() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240611)
    mats = {}
    for m, n in [(64, 48), (200, 120), (96, 256), (128, 128)]:
        mats[f"random.{m}x{n}"] = _random(rng, m, n)
        mats[f"planted.{m}x{n}"] = _planted(rng, m, n)
    mats["small.12x10"] = _random(
        rng, 12, 10
    )  # fewer than 20 eigenvalues: weightwatcher's small-N fit
    mats["small.30x15"] = _planted(rng, 30, 15, rank=2)
    mats["tiny.6x5"] = _random(rng, 6, 5)  # fewer than 8: the whole spectrum is the tail
    mats.update(_mixtral_matrices())
    return {name: w.astype(np.float32) for name, w in mats.items()}  # nn.Linear holds float32


@pytest.fixture(scope="module")
def weightwatcher_rows(matrices) -> dict[str, dict]:
    """weightwatcher's analyze() row for each matrix, every layer analyzed, no MP fit, no plots."""
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    layers = []
    for w in matrices.values():
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
        layers.append(linear)
    details = ww.WeightWatcher(model=torch.nn.Sequential(*layers)).analyze(
        min_evals=1,
        max_evals=50_000,
        randomize=False,
        mp_fit=False,
        plot=False,
        fix_fingers=False,
        pl_package="ww",
    )
    assert len(details) == len(matrices), "weightwatcher skipped a layer"
    return {name: details.iloc[i].to_dict() for i, name in enumerate(matrices)}


def _ours(w: np.ndarray) -> dict:
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    return spectral_metrics(s, *w.shape)


def test_every_metric_matches_weightwatcher(matrices, weightwatcher_rows):
    for name, w in matrices.items():
        ours, theirs = _ours(w), weightwatcher_rows[name]
        for metric in FLOAT_METRICS:
            assert ours[metric] == pytest.approx(theirs[metric], rel=1e-3, abs=1e-9), (name, metric)
        assert ours["num_pl_spikes"] == theirs["num_pl_spikes"], name


def test_float32_singular_values_choose_the_same_fit(matrices, weightwatcher_rows):
    """A scan keeps float32 singular values; the metrics must still match weightwatcher's float64 run."""
    for name, w in matrices.items():
        s32 = torch.linalg.svdvals(torch.from_numpy(w)).numpy()
        ours, theirs = spectral_metrics(s32, *w.shape), weightwatcher_rows[name]
        for metric in ("alpha", "xmin", "D", "entropy", "log_norm", "stable_rank"):
            assert ours[metric] == pytest.approx(theirs[metric], rel=1e-3, abs=1e-6), (name, metric)


def test_the_threshold_and_small_paths_are_exercised(matrices):
    """Guards the comparison above: it must cover small-N fits and eigenvalues under the threshold."""
    counts = {
        name: int((np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2 > EVALS_THRESH).sum())
        for name, w in matrices.items()
    }
    assert min(counts.values()) < 8 and any(8 <= c < 20 for c in counts.values())
    assert any(c < min(w.shape) for c, w in zip(counts.values(), matrices.values()))


def test_failed_fit_is_nan_where_weightwatcher_writes_minus_one():
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    rng = np.random.default_rng(3)
    rank_one = np.outer(rng.standard_normal(10), rng.standard_normal(9)).astype(np.float32)
    linear = torch.nn.Linear(9, 10, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(rank_one))
    theirs = (
        ww.WeightWatcher(model=torch.nn.Sequential(linear))
        .analyze(min_evals=1, max_evals=50_000, randomize=False, mp_fit=False, plot=False)
        .iloc[0]
    )
    ours = _ours(rank_one)
    assert theirs["alpha"] == -1 and theirs["num_pl_spikes"] == -1
    for metric in ("alpha", "xmin", "D", "alpha_weighted", "log_alpha_norm"):
        assert math.isnan(ours[metric]), metric
    assert ours["num_pl_spikes"] is None
    assert ours["log_norm"] == pytest.approx(theirs["log_norm"], rel=1e-6)
    assert ours["stable_rank"] == pytest.approx(1.0, rel=1e-6)


# --- a slow, obviously-correct reference of the fit ---------------------------------------------


def reference_fit(evals: list[float]) -> tuple[float, float, float]:
    """(alpha, xmin, D) with plain Python loops, written from the rules in docs/metrics.md."""
    x = sorted(v for v in evals if v > EVALS_THRESH)
    count = len(x)
    small = count < 20
    best = None  # (D, i, alpha)
    for i in range(count - 1):
        n = count - i
        spread = sum(math.log(x[j]) - math.log(x[i]) for j in range(i, count))
        if small and (n < 8 or spread <= 1e-12):
            continue
        alpha = 1 + (n - 1 if small else n) / spread
        d = max(abs(1 - (x[i + t] / x[i]) ** (1 - alpha) - t / n) for t in range(n))
        if best is None or d < best[0]:
            best = (d, i, alpha)
    if best is None and count >= 2:  # small sample, no tail qualified: the whole sample
        spread = sum(math.log(v) - math.log(x[0]) for v in x)
        alpha = 1 + (count - 1) / spread
        d = max(abs(1 - (x[t] / x[0]) ** (1 - alpha) - t / count) for t in range(count))
        best = (d, 0, alpha)
    d, i, alpha = best
    return alpha, x[i], d


@pytest.mark.parametrize(
    "seed,size,kind",
    [
        (0, 40, "gaussian"),
        (1, 150, "gaussian"),
        (2, 300, "pareto"),
        (3, 200, "lognormal"),
        (4, 250, "planted"),
        (5, 12, "gaussian"),
        (6, 19, "pareto"),
        (7, 5, "lognormal"),
    ],
)
def test_fit_matches_the_slow_reference(seed, size, kind):
    rng = np.random.default_rng(seed)
    evals = {
        "gaussian": lambda: rng.standard_normal(size) ** 2,
        "pareto": lambda: rng.pareto(1.7, size) + 1e-3,
        "lognormal": lambda: rng.lognormal(0.0, 2.0, size),
        "planted": lambda: np.concatenate(
            [rng.standard_normal(size - 6) ** 2, 50 + 20 * rng.random(6)]
        ),
    }[kind]()
    fit = fit_power_law(rng.permutation(evals))  # any order
    alpha, xmin, d = reference_fit(evals.tolist())
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.xmin == xmin
    assert fit.D == pytest.approx(d, rel=1e-9, abs=1e-12)


def test_large_spectrum_is_fast_and_matches_the_unpruned_minimum():
    """The lower-bound pruning must not change the answer; 4096 values also bound the run time."""
    import time

    rng = np.random.default_rng(11)
    evals = np.concatenate([rng.standard_normal(4090) ** 2, 30 + rng.random(6)])
    start = time.perf_counter()
    fit = fit_power_law(evals)
    assert time.perf_counter() - start < 2.0
    x = np.sort(evals[evals > EVALS_THRESH])
    logs = np.log(x)
    n = x.size - np.arange(x.size - 1)
    alphas = 1 + n / (np.cumsum(logs[::-1])[::-1][:-1] - n * logs[:-1])
    ds = [
        np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alphas[i]) - np.arange(n[i]) / n[i]))
        for i in range(x.size - 1)
    ]
    best = int(np.argmin(ds))
    assert (fit.alpha, fit.xmin) == (pytest.approx(alphas[best], rel=1e-12), x[best])


def test_norm_metrics_by_hand():
    s = np.array([1.0, 3.0, 2.0])  # any order; eigenvalues 9, 4, 1
    out = spectral_metrics(s, 3, 5)
    assert out["log_norm"] == pytest.approx(math.log10(14))
    assert out["log_spectral_norm"] == pytest.approx(math.log10(9))
    assert out["stable_rank"] == pytest.approx(14 / 9)
    p = np.array([9, 4, 1]) / 14 + 1e-10
    assert out["entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(3 + 1e-10))
    if not math.isnan(out["alpha"]):
        assert out["alpha_weighted"] == pytest.approx(out["alpha"] * math.log10(9))
        assert out["log_alpha_norm"] == pytest.approx(
            math.log10(sum(v ** out["alpha"] for v in (9, 4, 1)))
        )


def test_entropy_rank_uses_the_precision_of_the_values():
    """A singular value at 1e-9 of the largest counts in float64 but is numerical zero in float32."""
    s = np.array([1.0, 0.5, 1e-9])
    assert (
        spectral_metrics(s, 3, 3)["entropy"]
        != spectral_metrics(s.astype(np.float32), 3, 3)["entropy"]
    )
    p = np.array([1.0, 0.25, 1e-18]) / 1.25 + 1e-10
    expected32 = -(p * np.log(p)).sum() / math.log(2 + 1e-10)
    assert spectral_metrics(s.astype(np.float32), 3, 3)["entropy"] == pytest.approx(
        expected32, rel=1e-6
    )


def test_degenerate_inputs():
    assert all(v is None or math.isnan(v) for v in spectral_metrics(np.zeros(4), 4, 4).values())
    assert all(v is None or math.isnan(v) for v in spectral_metrics(np.array([]), 0, 3).values())
    with pytest.raises(ValueError):
        spectral_metrics(np.array([1.0, math.nan]), 2, 2)
    huge = spectral_metrics(
        np.geomspace(1e3, 1.0, 64), 64, 64
    )  # lam^alpha overflows if done literally
    assert math.isfinite(huge["log_alpha_norm"])


def test_rows_and_tables(tmp_path):
    rng = np.random.default_rng(5)
    w = _planted(rng, 40, 30)
    spectra = {"model.layers.0.mlp.down_proj": np.linalg.svd(w, compute_uv=False)}
    shapes = {"model.layers.0.mlp.down_proj": (40, 30)}
    results = {
        "model.layers.0.mlp.down_proj": {"snr": 0.5, "type": "mlp.down_proj"},
        "model.norm": {"snr": 1.0, "type": "model.norm"},
    }
    rows = metrics_rows(spectra, shapes, results)
    assert [r["key"] for r in rows] == list(results)
    assert rows[0]["snr"] == 0.5 and rows[0]["alpha"] == pytest.approx(_ours(w)["alpha"])
    assert rows[1]["type"] == "model.norm" and all(rows[1][m] is None for m in METRIC_NAMES)

    rows[0]["D"] = math.nan  # a NaN must come out as null / an empty cell
    write_table(rows, tmp_path / "m.json")
    back = json.loads((tmp_path / "m.json").read_text())
    assert back[0]["D"] is None and back[0]["alpha"] == pytest.approx(rows[0]["alpha"])
    write_table(rows, tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].split(",") == ["key", "type", "snr", *METRIC_NAMES]
    cells = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert cells["D"] == "" and float(cells["alpha"]) == rows[0]["alpha"]
    with pytest.raises(SpectrumError, match="m.txt"):
        write_table(rows, tmp_path / "m.txt")
