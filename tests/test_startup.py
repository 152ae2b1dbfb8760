"""Start-up: `--help` imports click and nothing heavy; modes are checked where they are built."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spectrum_stream import ScanOptions
from spectrum_stream.errors import SpectrumError
from spectrum_stream.modes import GROUPINGS, METHODS, NAMES, SVD_DRIVERS, check_top_percent

HEAVY = ("torch", "transformers", "numpy", "matplotlib", "safetensors", "tqdm")

_PROBE = """
import json, sys
from spectrum_stream.cli.main import main
code = None
try:
    main(sys.argv[1:], prog_name="spectrum-stream")
except SystemExit as stop:
    code = stop.code
print(json.dumps([code, sorted(m for m in {heavy!r} if m in sys.modules)]))
"""


def _heavy_after(*args: str) -> list[str]:
    """The heavy modules a command imported; the command must have succeeded (exit 0)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    code, heavy = json.loads(out.stdout.splitlines()[-1])
    assert code in (0, None), out.stderr
    return heavy


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("scan", "--help"),
        ("select", "--help"),
        ("rebuild", "--help"),
        ("demo", "--help"),
        ("metrics", "--help"),
        ("report", "--help"),
        ("compare", "--help"),
        ("plan", "--help"),
    ],
)
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    assert _heavy_after(*args) == []


def test_select_and_report_on_a_results_file_never_import_torch(tmp_path) -> None:
    """Reading results and drawing the page need no tensor library: torch's seconds of import
    are paid only by commands that decompose or load a model."""
    results = tmp_path / "snr_results_m.json"
    keys = [f"model.layers.{i}.mlp.{p}" for i in range(3) for p in ("up_proj", "down_proj")]
    results.write_text(
        json.dumps({k: {"snr": 1.0 + i, "type": k.split(".", 3)[3]} for i, k in enumerate(keys)})
    )
    assert "torch" not in _heavy_after("select", str(results))
    assert "torch" not in _heavy_after("report", str(results), "-o", str(tmp_path / "page"))
    assert (tmp_path / "page" / "index.html").is_file()


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: a command that runs does import torch."""
    code = "import sys, spectrum_stream; spectrum_stream.scan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_package_names_load_lazily() -> None:
    import spectrum_stream

    for name in spectrum_stream.__all__:
        assert getattr(spectrum_stream, name) is not None
    with pytest.raises(AttributeError):
        spectrum_stream.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "grm"},
        {"names": "trainers"},
        {"grouping": "per_expert"},
        {"svd_driver": "gesvdx"},
        {"svd_driver": "gesvda"},
    ],
)
def test_scan_options_refuse_bad_modes_on_construction(bad: dict) -> None:
    with pytest.raises(SpectrumError):
        ScanOptions(**bad)


def test_scan_options_take_every_mode() -> None:
    for method in METHODS:
        for names in NAMES:
            for grouping in GROUPINGS:
                ScanOptions(method=method, names=names, grouping=grouping)
    for driver in SVD_DRIVERS[:2]:
        ScanOptions(svd_driver=driver)


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), float("inf")])
def test_top_percent_range(bad: float) -> None:
    with pytest.raises(SpectrumError, match="--top-percent"):
        check_top_percent(bad)
    assert check_top_percent(0) == 0 and check_top_percent(100) == 100


def test_scan_hub_takes_overrides_like_scan() -> None:
    import inspect

    from spectrum_stream import scan_hub

    params = inspect.signature(scan_hub).parameters
    assert "group" not in params
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    with pytest.raises(SpectrumError, match="--method 'grm'"):  # before any download
        scan_hub("org/name", ScanOptions(), method="grm")
