"""The YAML `select` writes, applied with axolotl's matching rules to the parameters of real models.

axolotl (src/axolotl/utils/freeze.py) is not installed here; `LayerPattern` below reimplements its
rules from their description: an optional trailing row range `[start:end]` or `[i]`, dots made
literal, `re.match` (anchored at the start only) on parameter names, and when any matching pattern
has a range only the merged ranges of the parameter's first dimension get gradients.

Models are loaded with transformers 5's `from_pretrained`, so parameter names are the in-memory ones:
per-expert checkpoints (Mixtral, Qwen2-MoE) load into fused `experts.gate_up_proj` / `down_proj`,
which is what `--fused-experts` is for.
"""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from moe_models import read_tensors
from reference import reference_snr

from spectrum_stream import scan
from spectrum_stream.results.select import select, to_yaml

PERCENT = 50


class LayerPattern:
    """One `unfrozen_parameters` entry, as axolotl reads it."""

    _RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")

    def __init__(self, pattern: str):
        m = self._RANGE.match(pattern)
        self.range = None
        if m:
            pattern, start, end = m.groups()
            if end is None and start.isdecimal():
                self.range = (int(start), int(start) + 1)
            else:
                self.range = (int(start) if start else 0, int(end) if end else None)
                if self.range[1] is not None and self.range[0] >= self.range[1]:
                    raise ValueError(f"bad range in {pattern!r}")
        self.regex = re.compile(re.sub(r"\.(?!\+)", r"\\.", pattern))

    def match(self, name: str) -> bool:
        return self.regex.match(name) is not None


def unfrozen_rows(patterns: list[str], params: dict[str, int]) -> dict[str, set[int]]:
    """{parameter: rows of its first dimension that get gradients}; frozen parameters left out."""
    compiled = [LayerPattern(p) for p in patterns]
    out = {}
    for name, rows in params.items():
        hits = [p for p in compiled if p.match(name)]
        if not hits:
            continue
        ranges = [p.range for p in hits if p.range is not None]
        if not ranges:
            out[name] = set(range(rows))
            continue
        keep = set()
        for start, end in ranges:
            end = rows if end is None else end
            assert 0 <= start < end <= rows, f"axolotl rejects range {start}:{end} of {name}"
            keep.update(range(start, end))
        out[name] = keep
    return out


def yaml_patterns(results: dict, grouping: str, fused_experts: bool = False) -> list[str]:
    return yaml.safe_load(to_yaml(results, PERCENT, grouping, fused_experts))["unfrozen_parameters"]


def chosen_keys(results: dict, grouping: str) -> list[str]:
    return [k for keys in select(results, PERCENT, grouping).values() for k in keys]


_FUSED_KEY = re.compile(
    r"^(?P<param>.+?)(\(\?#(?P<part>gate|up)\))?\$\[(?P<a>\d+)(:(?P<b>\d+))?\]$"
)


def expected_rows(keys: list[str], params: dict[str, int], results: dict) -> dict[str, set[int]]:
    """What training exactly the chosen modules means: a fused key's rows of its parameter; a plain
    module's parameters (`<module>.weight`, `.bias`) whole; the embeddings and head whole."""
    out: dict[str, set[int]] = {}
    heads = [k for k, info in results.items() if info["type"] == k]
    for key in keys:
        m = _FUSED_KEY.match(key)
        if m:
            a = int(m["a"])
            b = int(m["b"]) if m["b"] else a + 1
            out.setdefault(m["param"], set()).update(range(a, b))
        else:
            for name in params:
                if name.startswith(key + "."):
                    out[name] = set(range(params[name]))
    for head in heads:
        out[head + ".weight"] = set(range(params[head + ".weight"]))
    return out


def load(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    return model, {n: p.shape[0] for n, p in model.named_parameters()}


def cut_expert(model, key: str) -> torch.Tensor:
    """The matrix a fused key names, cut from the loaded model's parameter."""
    m = _FUSED_KEY.match(key)
    w = model.get_parameter(m["param"]).detach().double()
    a = int(m["a"])
    if m["b"]:
        return w[a : int(m["b"])]
    w = w[a]
    if m["part"] is None:
        return w
    kind = model.config.model_type
    if kind == "gpt_oss":
        return w[:, 0::2] if m["part"] == "gate" else w[:, 1::2]
    gate, up = w.chunk(2, dim=1 if kind.startswith("llama4") else 0)
    return gate if m["part"] == "gate" else up


FUSED_NAMED = ["dbrx_dir", "llama4_dir", "gpt_oss_dir", "fused_qwen2_moe_dir", "fused_mixtral_dir"]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    cache = {}

    def get(folder, names="trainer"):
        if (folder, names) not in cache:
            out = tmp_path_factory.mktemp("scan")
            cache[folder, names] = scan(folder, out_dir=out, progress=False, names=names).results
        return cache[folder, names]

    return get


@pytest.mark.parametrize("grouping", ["per-expert", "pooled"])
@pytest.mark.parametrize("fixture", FUSED_NAMED)
def test_fused_keys_unfreeze_exactly_the_selected_experts(fixture, grouping, request, scanned):
    """Checkpoints whose tensor names are the model's parameter names (DBRX, Llama 4, gpt-oss,
    transformers' fused form): the YAML unfreezes exactly the chosen experts' rows."""
    folder = request.getfixturevalue(fixture)
    results = scanned(folder)
    model, params = load(folder)
    got = unfrozen_rows(yaml_patterns(results, grouping), params)
    assert got == expected_rows(chosen_keys(results, grouping), params, results)
    partial = [n for n, rows in got.items() if 0 < len(rows) < params[n]]
    assert partial, "some experts of a fused parameter train while others stay frozen"
    # and those rows are the matrix whose SNR the scan reported
    for key, info in results.items():
        if "$[" in key:
            ref = reference_snr(cut_expert(model, key).numpy())
            assert abs(info["snr"] - ref) <= 1e-4 * abs(ref), key


def _to_fused(key: str) -> tuple[str, int] | None:
    """Test-side mapping of a per-expert checkpoint key onto transformers 5's fused parameter."""
    m = re.match(
        r"^(.+)\.(block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)$",
        key,
    )
    if not m:
        return None
    proj = "down_proj" if m[4] in ("w2", "down_proj") else "gate_up_proj"
    return f"{m[1]}.mlp.experts.{proj}", int(m[3])


@pytest.mark.parametrize("grouping", ["per-expert", "pooled"])
@pytest.mark.parametrize("fixture", ["mixtral_dir", "qwen2_moe_dir"])
def test_per_expert_checkpoints(fixture, grouping, request, scanned):
    folder = request.getfixturevalue(fixture)
    results = scanned(folder, names="checkpoint")  # results of the original tool's naming
    keys = chosen_keys(results, grouping)
    experts = [k for k in results if ".experts." in k]
    assert experts

    # 1. the checkpoint's own names: the parameters of these models in transformers < 5, where every
    #    expert was its own Linear (and what the original tool's results name): exact
    disk = {n: t.shape[0] for n, t in read_tensors(folder).items()}
    got = unfrozen_rows(yaml_patterns(results, grouping), disk)
    assert got == expected_rows(keys, disk, results)

    # 2. transformers 5 loads them into fused parameters: the plain YAML unfreezes no routed expert
    model, params = load(folder)
    got = unfrozen_rows(yaml_patterns(results, grouping), params)
    assert not any(".experts." in n for n in got), "per-expert names match nothing fused"

    # 3. --fused-experts names them as those parameters: exactly the chosen experts' rows, where
    #    choosing gate (w1) or up (w3) of an expert trains both (they share the row)
    got = unfrozen_rows(yaml_patterns(results, grouping, fused_experts=True), params)
    want: dict[str, set[int]] = {}
    renamed = {k.replace(".block_sparse_moe.", ".mlp."): k for k in results}
    plain = [k.replace(".block_sparse_moe.", ".mlp.") for k in keys if _to_fused(k) is None]
    for key in keys:
        if (hit := _to_fused(key)) is not None:
            want.setdefault(hit[0], set()).add(hit[1])
    want.update(expected_rows(plain, params, {r: results[k] for r, k in renamed.items()}))
    assert got == want
    assert any(0 < len(rows) < params[n] for n, rows in got.items() if ".experts." in n)

    # and row e of the fused parameter is expert e: its halves have the SNRs scanned from disk
    for key in experts:
        param, e = _to_fused(key)
        w = model.get_parameter(param).detach().double()[e]
        if param.endswith("gate_up_proj"):
            gate, up = w.chunk(2, dim=0)
            w = gate if key.endswith(("w1", "gate_proj")) else up
        ref = reference_snr(w.numpy())
        assert abs(results[key]["snr"] - ref) <= 1e-4 * abs(ref), key
