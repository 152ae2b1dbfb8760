"""The spectra file: round trip, the path beside the results, and refusal of files that are not ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from spectrum_stream.errors import SpectrumError
from spectrum_stream.metrics import read_spectra, spectra_path, write_spectra


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    spectra = {
        "model.layers.0.mlp.down_proj": rng.random(24),  # any order, float64 in
        "model.layers.0.self_attn.q_proj": rng.random(16).astype(np.float32),
        "lm_head": np.array([3.0, 2.0, 1.0]),
    }
    shapes = {
        "model.layers.0.mlp.down_proj": (24, 40),
        "model.layers.0.self_attn.q_proj": (16, 16),
        "lm_head": (3, 96),
    }
    path = tmp_path / "snr_results_m_spectra.safetensors"
    write_spectra(path, spectra, shapes)
    back, back_shapes = read_spectra(path)
    assert back_shapes == shapes
    assert set(back) == set(spectra)
    for key, s in spectra.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], np.sort(s.astype(np.float32))[::-1])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_spectra_path_sits_beside_the_results():
    assert spectra_path("out/snr_results_Qwen-Qwen1.5-110B.json") == Path(
        "out/snr_results_Qwen-Qwen1.5-110B_spectra.safetensors"
    )
    with pytest.raises(SpectrumError):
        spectra_path("out/model.json")


def test_a_shape_is_required(tmp_path):
    with pytest.raises(ValueError, match="b"):
        write_spectra(tmp_path / "s.safetensors", {"a": np.ones(2), "b": np.ones(2)}, {"a": (2, 2)})


@pytest.mark.parametrize(
    "make",
    [
        "model_weights",
        "other_format",
        "no_shapes",
        "too_many_values",
        "not_safetensors",
        "empty",
        "newer_version",
    ],
)
def test_foreign_files_are_refused_naming_the_file(tmp_path, make):
    path = tmp_path / f"{make}.safetensors"
    tensor = {"w": np.ones(4, dtype=np.float32)}
    if make == "model_weights":
        save_file({"w": np.ones((4, 4), dtype=np.float32)}, path)
    elif make == "other_format":
        save_file(tensor, path, metadata={"format": "pt"})
    elif make == "no_shapes":
        save_file(tensor, path, metadata={"format": "spectrum-stream/spectra", "version": "1"})
    elif make == "too_many_values":
        save_file(
            tensor,
            path,
            metadata={
                "format": "spectrum-stream/spectra",
                "version": "1",
                "shapes": json.dumps({"w": [2, 8]}),
            },
        )
    elif make == "newer_version":
        save_file(
            tensor,
            path,
            metadata={
                "format": "spectrum-stream/spectra",
                "version": "2",
                "shapes": json.dumps({"w": [4, 8]}),
            },
        )
    elif make == "not_safetensors":
        path.write_text('{"model.layers.0.mlp.down_proj": {"snr": 1.0, "type": "mlp.down_proj"}}')
    else:
        path.write_bytes(b"")
    with pytest.raises(SpectrumError, match=make) as info:
        read_spectra(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_spectrum_error(tmp_path):
    with pytest.raises(SpectrumError, match="absent"):
        read_spectra(tmp_path / "absent.safetensors")
