"""Every safetensors header rule of docs/spec.md ("Checkpoint files"), broken once each."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from spectrum_stream.errors import CheckpointError
from spectrum_stream.source.header import MAX_HEADER_BYTES, header_length, read_header


def write_raw(path, header, data: bytes, header_bytes: bytes | None = None, n: int | None = None):
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


GOOD = {
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
}


def test_valid_file_from_safetensors_is_accepted(tmp_path):
    f = tmp_path / "ok.safetensors"
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(13))
    save_file(
        {"w": w, "v": torch.zeros(2, dtype=torch.bfloat16)}, str(f), metadata={"format": "pt"}
    )
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


# case -> the file to write, and the words only its rule's message says
CASES = {
    "too short": (
        dict(header_bytes=b"", data=b"", n=None, raw=b"\x01\x02"),
        "file is 2 bytes, too short for a header",
    ),
    "absurd length": (
        dict(header=GOOD, data=bytes(32), n=200 * 1024 * 1024),
        "header length 209715200 is absurd",
    ),
    "past the end": (
        dict(header=GOOD, data=bytes(32), n=10_000),
        "header length 10000 runs past the end of the",
    ),
    "not JSON": (dict(header_bytes=b"{not json", data=bytes(32)), "header is not valid UTF-8 JSON"),
    "not UTF-8": (dict(header_bytes=b'{"\xff": 1}', data=b""), "header is not valid UTF-8 JSON"),
    "not an object": (dict(header_bytes=b"[1, 2]", data=b""), "header is not a JSON object"),
    "duplicate": (
        dict(
            header_bytes=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
            b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
            data=bytes(8),
        ),
        "duplicate tensor name 'a'",
    ),
    "not an entry": (dict(header=broken(b=[1, 2]), data=bytes(32)), "'b': entry is not an object"),
    "overlap": (
        dict(
            header=broken(b={"dtype": "BF16", "shape": [4], "data_offsets": [20, 28]}),
            data=bytes(28),
        ),
        "'b': data overlaps the tensor before it",
    ),
    "gap": (
        dict(
            header=broken(b={"dtype": "BF16", "shape": [4], "data_offsets": [28, 36]}),
            data=bytes(36),
        ),
        "'b': gap of 4 bytes before its data",
    ),
    "wrong length": (
        dict(
            header=broken(a={"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}),
            data=bytes(32),
        ),
        "'a': 24 bytes for F32 [2, 2], expected 16",
    ),
    "unsupported dtype": (
        dict(
            header=broken(a={"dtype": "Q4_K", "shape": [2, 3], "data_offsets": [0, 24]}),
            data=bytes(32),
        ),
        "'a': unsupported dtype 'Q4_K'",
    ),
    "bad shape": (
        dict(
            header=broken(a={"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}),
            data=bytes(32),
        ),
        "'a': shape must be a list of non-negative integers",
    ),
    "bad offsets": (
        dict(
            header=broken(a={"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}),
            data=bytes(32),
        ),
        "'a': data_offsets must be two integers 0 <= begin <= end",
    ),
    "trailing bytes": (
        dict(header=GOOD, data=bytes(40)),
        "data buffer is 40 bytes but tensors cover 32 (truncated or padded file)",
    ),
    "truncated data": (
        dict(header=GOOD, data=bytes(20)),
        "'a': its data ends 4 bytes past the end of the file (truncated file)",
    ),
    "bad metadata": (
        dict(header={**GOOD, "__metadata__": {"format": 1}}, data=bytes(32)),
        "__metadata__ must map strings to strings",
    ),
    "not Unicode": (
        dict(
            header_bytes=b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            data=bytes(4),
        ),
        "is not valid Unicode",
    ),
}
# what each rule's message says: a case must say its own rule's words and no other rule's
RULES = (
    "too short for a header",
    "is absurd",
    "runs past the end",
    "not valid UTF-8 JSON",
    "not a JSON object",
    "duplicate tensor name",
    "entry is not an object",
    "overlaps",
    "gap of",
    "bytes for",
    "unsupported dtype",
    "shape must be",
    "data_offsets must be",
    "tensors cover",
    "past the end of the file (truncated file)",
    "__metadata__ must",
    "not valid Unicode",
)


def write_case(f, spec: dict):
    if "raw" in spec:
        f.write_bytes(spec["raw"])
    else:
        write_raw(f, spec.get("header"), spec["data"], spec.get("header_bytes"), spec.get("n"))
    return f


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_violation_is_one_clear_error_from_its_own_rule(tmp_path, case):
    spec, says = CASES[case]
    f = write_case(tmp_path / "bad.safetensors", spec)
    with pytest.raises(CheckpointError) as info:
        read_header(f)
    message = str(info.value)
    assert message.startswith(f"{f}: ") and "\n" not in message
    assert says in message, message
    fired = [rule for rule in RULES if rule in message]
    assert len(fired) == 1 and fired[0] in says, (fired, message)


@pytest.mark.parametrize(
    "n, refused_by",
    [
        (MAX_HEADER_BYTES + 1, f"header length {MAX_HEADER_BYTES + 1} is absurd"),
        (MAX_HEADER_BYTES, f"header length {MAX_HEADER_BYTES} runs past the end"),
    ],
)
def test_the_header_length_cap_is_safetensors_own(tmp_path, n, refused_by):
    """safetensors refuses headers over 100,000,000 bytes: one byte more is absurd; the cap
    itself passes that rule (this small file then fails the next one, its size)."""
    assert MAX_HEADER_BYTES == 100_000_000
    f = write_raw(tmp_path / "cap.safetensors", GOOD, bytes(32), n=n)
    with pytest.raises(CheckpointError, match=refused_by):
        read_header(f)
    # the length prefix alone, for a file long enough to hold that header
    prefix = struct.pack("<Q", n)
    if n > MAX_HEADER_BYTES:
        with pytest.raises(CheckpointError, match="is absurd"):
            header_length(prefix, 8 + n, "x")
    else:
        assert header_length(prefix, 8 + n, "x") == n
