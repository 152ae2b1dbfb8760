"""`plan --fit`: the largest whole --top-percent whose Spectrum selection fits, checked against the
planner's own plans at P (fits) and P + 1 (does not), on dense, Mixtral-layout and DBRX-layout
checkpoints with real scan results, and on the README's header-only Qwen1.5-110B."""

from __future__ import annotations

import json

import planner_shapes
import pytest
from click.testing import CliRunner

from spectrum_stream.cli import main
from spectrum_stream.driver import scan
from spectrum_stream.options import ScanOptions
from spectrum_stream.planner import build_plan, trainer_view
from spectrum_stream.planner.fit import SpectrumAt, largest_fitting
from spectrum_stream.results.select import load_results
from spectrum_stream.source.checkpoint import open_local


def plan(*args: str):
    return CliRunner().invoke(main, ["plan", *args], catch_exceptions=False)


def plan_json(*args: str) -> dict:
    result = plan(*args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def only_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, llama_dir, mixtral_dir, dbrx_dir):
    """{layout: (checkpoint folder, results file)} from real scans (default --names trainer)."""
    out = {}
    for name, folder in (("dense", llama_dir), ("mixtral", mixtral_dir), ("dbrx", dbrx_dir)):
        report = scan(
            folder, ScanOptions(out_dir=tmp_path_factory.mktemp(name), device="cpu", progress=False)
        )
        out[name] = (folder, report.paths.results)
    return out


def spectrum_need(doc: dict, gpus: int) -> tuple[bool, int, int]:
    f = doc["methods"]["spectrum"]["fits"][str(gpus)]
    return f["fits"], f["need"], doc["methods"]["spectrum"]["trainable_params"]


@pytest.mark.parametrize("layout", ["dense", "mixtral", "dbrx"])
@pytest.mark.parametrize("grouping", [None, "per-expert"])
def test_the_fit_fits_at_p_and_not_at_p_plus_one(scanned, layout, grouping):
    folder, results = scanned[layout]
    flags = ["--expert-grouping", grouping] if grouping else []
    common = [str(folder), "--results", str(results), "--gpus", "2", *flags]
    # a GPU size between the plans at 1% and 100%, so that the edge lies inside the range
    low = spectrum_need(plan_json(*common, "--top-percent", "1"), 2)[1]
    high = spectrum_need(plan_json(*common, "--top-percent", "100"), 2)[1]
    assert high > low
    mem = str((low + high) // 2)
    doc = plan_json(*common, "--gpu-mem", mem, "--fit")
    fit = doc["fit"]
    p = fit["top_percent"]
    assert 1 <= p < 100 and doc["settings"]["top_percent"] == p
    fits_p, need_p, trainable_p = spectrum_need(
        plan_json(*common, "--gpu-mem", mem, "--top-percent", str(p)), 2
    )
    fits_next, need_next, _ = spectrum_need(
        plan_json(*common, "--gpu-mem", mem, "--top-percent", str(p + 1)), 2
    )
    assert fits_p and not fits_next
    assert (fit["per_gpu_bytes"], fit["trainable_params"]) == (need_p, trainable_p)
    assert fit["margin_bytes"] == int(mem) - need_p >= 0
    assert fit["next"] == {
        "top_percent": p + 1,
        "per_gpu_bytes": need_next,
        "margin_bytes": int(mem) - need_next,
    }
    flag = f" --expert-grouping {grouping}" if grouping else ""
    assert fit["select_command"] == f"spectrum-stream select {results} --top-percent {p}{flag}"
    # and the select command it names writes the selection the plan counted
    text = plan(*common, "--gpu-mem", mem, "--fit").stdout
    assert f"Spectrum-{p}%, " in text.splitlines()[0] and fit["select_command"] in text


def test_bisection_agrees_with_trying_every_percentage(scanned):
    folder, results = scanned["mixtral"]
    ckpt, _ = open_local(folder)
    data = load_results(results)
    needs = {}
    for p in range(1, 101):
        doc = build_plan(ckpt, data, p, gpus=1, gpu_mem=80e9, view=trainer_view)
        needs[p] = spectrum_need(doc, 1)[1]
    assert all(needs[p] <= needs[p + 1] for p in range(1, 100))  # what bisection relies on
    for mem in sorted(set(needs.values()))[:: max(1, len(set(needs.values())) // 6)]:
        seen: list[int] = []

        def plan_at(p: int, seen: list[int] = seen, mem: int = mem) -> SpectrumAt:
            seen.append(p)
            return SpectrumAt(p, 0, needs[p], mem)

        best, after = largest_fitting(plan_at)
        fitting = [p for p in needs if needs[p] <= mem]
        assert best is not None and best.top_percent == max(fitting)
        assert (after is None) == (max(fitting) == 100)
        assert len(seen) <= 9


def test_none_fits_gives_the_smallest_shortfall_and_all_fit_gives_100(scanned):
    folder, results = scanned["dense"]
    common = [str(folder), "--results", str(results), "--gpus", "1"]
    doc = plan_json(*common, "--gpu-mem", "1GB", "--fit")
    assert doc["fit"] is None
    short = doc["fit_shortfall"]
    fits1, need1, _ = spectrum_need(plan_json(*common, "--gpu-mem", "1GB", "--top-percent", "1"), 1)
    assert not fits1 and short == {
        "top_percent": 1,
        "gpus": 1,
        "per_gpu_bytes": need1,
        "shortfall_bytes": need1 - 10**9,
    }
    text = plan(*common, "--gpu-mem", "1GB", "--fit").stdout
    assert text.startswith("Largest Spectrum selection on 1 x 1.0 GB: none fits; Spectrum-1% ")
    doc = plan_json(*common, "--gpu-mem", "80GB", "--fit")
    assert doc["fit"]["top_percent"] == 100 and doc["fit"]["next"] is None
    assert "fit_shortfall" not in doc


def test_without_results_the_stand_in_is_searched_and_labelled(llama_dir):
    doc = plan_json(str(llama_dir), "--gpus", "1", "--gpu-mem", "80GB", "--fit")
    assert doc["settings"]["results"] == "synthetic" and doc["fit"]["top_percent"] == 100
    assert "RESULTS.json" in doc["fit"]["select_command"]
    text = plan(str(llama_dir), "--gpus", "1", "--gpu-mem", "80GB", "--fit").stdout
    assert "(stand-in selection: no results file)" in text.splitlines()[0]


def test_fit_refuses_what_it_cannot_answer(llama_dir):
    assert "--fit needs --gpus" in only_error(plan(str(llama_dir), "--fit"))
    line = only_error(plan(str(llama_dir), "--fit", "--gpus", "2", "--top-percent", "30"))
    assert "--fit chooses --top-percent itself" in line


@pytest.mark.parametrize("gpus, mem, shown", [(8, "80GB", 8), (1, "141GB", None), (8, "141GB", 37)])
def test_readme_qwen_110b(tmp_path_factory, gpus, mem, shown):
    """The README's example: headers only, the stand-in selection with the real counts; `shown`
    is the P the README prints (None: "none fits")."""
    folder = tmp_path_factory.getbasetemp() / "qwen1.5-110b"
    if not folder.exists():
        planner_shapes.SHAPES["qwen1.5-110b"](folder)
    common = [str(folder), "--gpus", str(gpus), "--gpu-mem", mem]
    doc = plan_json(*common, "--fit")
    assert (doc["fit"] and doc["fit"]["top_percent"]) == shown
    if doc["fit"] is None:
        fits1 = spectrum_need(plan_json(*common, "--top-percent", "1"), gpus)[0]
        assert not fits1 and doc["fit_shortfall"]["shortfall_bytes"] > 0
        return
    p = doc["fit"]["top_percent"]
    assert spectrum_need(plan_json(*common, "--top-percent", str(p)), gpus)[0]
    if p < 100:
        assert not spectrum_need(plan_json(*common, "--top-percent", str(p + 1)), gpus)[0]
