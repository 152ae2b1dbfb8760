"""Every safetensors header rule of DESIGN.md section 4, broken once each."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from spectrum_stream.errors import CheckpointError
from spectrum_stream.source.header import read_header


def write_raw(path, header, data: bytes, header_bytes: bytes | None = None, n: int | None = None):
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}


def test_valid_file_from_safetensors_is_accepted(tmp_path):
    f = tmp_path / "ok.safetensors"
    save_file({"w": torch.randn(3, 5), "v": torch.zeros(2, dtype=torch.bfloat16)}, str(f),
              metadata={"format": "pt"})
    h = read_header(f)
    assert set(h.tensors) == {"w", "v"} and h.metadata == {"format": "pt"}
    w = h.tensors["w"]
    assert w.shape == (3, 5) and w.dtype == "F32" and w.nbytes == 60
    assert len(h.header_sha256) == 64 and h.size == f.stat().st_size


def test_hand_written_valid_file(tmp_path):
    h = read_header(write_raw(tmp_path / "x.safetensors", GOOD, bytes(32)))
    assert h.tensors["b"].start == h.tensors["a"].end


def broken(**changes):
    header = json.loads(json.dumps(GOOD))
    for name, entry in changes.items():
        header[name] = entry
    return header


CASES = {
    "too short": dict(header_bytes=b"", data=b"", n=None, raw=b"\x01\x02"),
    "absurd length": dict(header=GOOD, data=bytes(32), n=200 * 1024 * 1024),
    "past the end": dict(header=GOOD, data=bytes(32), n=10_000),
    "not JSON": dict(header_bytes=b"{not json", data=bytes(32)),
    "not an object": dict(header_bytes=b"[1, 2]", data=b""),
    "duplicate": dict(header_bytes=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
                      b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', data=bytes(8)),
    "overlap": dict(header=broken(b={"dtype": "BF16", "shape": [4], "data_offsets": [20, 28]}),
                    data=bytes(28)),
    "gap": dict(header=broken(b={"dtype": "BF16", "shape": [4], "data_offsets": [28, 36]}),
                data=bytes(36)),
    "wrong length": dict(header=broken(a={"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}),
                         data=bytes(32)),
    "unsupported dtype": dict(header=broken(a={"dtype": "Q4_K", "shape": [2, 3], "data_offsets": [0, 24]}),
                              data=bytes(32)),
    "bad shape": dict(header=broken(a={"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}),
                      data=bytes(32)),
    "bad offsets": dict(header=broken(a={"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}),
                        data=bytes(32)),
    "trailing bytes": dict(header=GOOD, data=bytes(40)),
    "truncated data": dict(header=GOOD, data=bytes(20)),
    "bad metadata": dict(header={**GOOD, "__metadata__": {"format": 1}}, data=bytes(32)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_violation_is_one_clear_error(tmp_path, case):
    spec = dict(CASES[case])
    f = tmp_path / "bad.safetensors"
    if "raw" in spec:
        f.write_bytes(spec["raw"])
    else:
        write_raw(f, spec.get("header"), spec["data"], spec.get("header_bytes"), spec.get("n"))
    with pytest.raises(CheckpointError) as info:
        read_header(f)
    message = str(info.value)
    assert str(f) in message and "\n" not in message
