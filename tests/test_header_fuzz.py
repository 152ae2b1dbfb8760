"""The header parser fuzzed: random bytes and mutated valid headers only ever raise CheckpointError,
and whatever it accepts obeys every rule (known dtype, right byte length, ranges tiling the buffer).
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_header import RULES

from spectrum_stream.errors import CheckpointError
from spectrum_stream.source.dtypes import DTYPE_BITS, nbytes_for
from spectrum_stream.source.header import MAX_HEADER_BYTES, parse_header, read_header

# derandomized: the same examples on every run, so that a failure reproduces (and none flakes)
FUZZ = settings(max_examples=200, deadline=None, derandomize=True)


def _valid_file() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.safetensors"
        save_file(
            {
                "model.layers.0.mlp.up_proj.weight": torch.ones(4, 6, dtype=torch.bfloat16),
                "model.layers.0.mlp.down_proj.weight": torch.ones(6, 4),
                "model.norm.weight": torch.ones(6, dtype=torch.float16),
            },
            str(path),
            metadata={"format": "pt"},
        )
        return path.read_bytes()


VALID = _valid_file()
(N,) = struct.unpack("<Q", VALID[:8])
VALID_RAW = VALID[8 : 8 + N]
VALID_DATA_SIZE = len(VALID) - 8 - N
VALID_DOC = json.loads(VALID_RAW)


def assert_one_rule(message: str, expected: tuple[str, ...] | None = None) -> None:
    """The message is one known rule's (and, given `expected`, one of those)."""
    fired = [rule for rule in RULES if rule in message]
    assert len(fired) == 1, (fired, message)
    assert expected is None or fired[0] in expected, (expected, message)


def check(raw: bytes, data_size: int) -> None:
    """parse_header either refuses with CheckpointError or returns entries that obey every rule."""
    start = 8 + len(raw)
    try:
        entries, metadata = parse_header(raw, data_size, start, "fuzz.safetensors")
    except CheckpointError as exc:
        assert str(exc).startswith("fuzz.safetensors: ") and "\n" not in str(exc)
        assert_one_rule(str(exc))
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    cursor = start
    for e in sorted(entries.values(), key=lambda e: e.start):
        assert e.dtype in DTYPE_BITS and e.start == cursor
        assert e.end - e.start == nbytes_for(e.dtype, e.shape)
        cursor = e.end
    assert cursor == start + data_size


@FUZZ
@given(raw=st.binary(max_size=300), data_size=st.integers(0, 2**40))
def test_random_bytes(raw, data_size):
    check(raw, data_size)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")


@st.composite
def mutated_docs(draw):
    """The valid header with a few fields replaced, removed, added or renamed."""
    doc = json.loads(json.dumps(VALID_DOC))
    names = sorted(doc)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(names))
        kind = draw(
            st.sampled_from(
                [
                    "field",
                    "drop field",
                    "entry",
                    "drop entry",
                    "new entry",
                    "offset",
                    "shape",
                    "dtype",
                ]
            )
        )
        if name not in doc:
            continue
        entry = doc[name]
        if kind == "field" and isinstance(entry, dict):
            entry[draw(st.sampled_from(TENSOR_FIELDS))] = draw(JSON_VALUES)
        elif kind == "drop field" and isinstance(entry, dict):
            entry.pop(draw(st.sampled_from(TENSOR_FIELDS)), None)
        elif kind == "entry":
            doc[name] = draw(JSON_VALUES)
        elif kind == "drop entry":
            del doc[name]
        elif kind == "new entry":
            doc[draw(st.text(max_size=10))] = draw(JSON_VALUES)
        elif kind == "offset" and isinstance(entry, dict) and name != "__metadata__":
            offsets = entry.get("data_offsets")
            if (
                isinstance(offsets, list)
                and len(offsets) == 2
                and all(type(o) is int for o in offsets)
            ):
                offsets[draw(st.integers(0, 1))] += draw(st.integers(-64, 64))
        elif kind == "shape" and isinstance(entry, dict) and name != "__metadata__":
            entry["shape"] = draw(st.lists(st.integers(-2, 2**33), max_size=4))
        elif kind == "dtype" and isinstance(entry, dict) and name != "__metadata__":
            entry["dtype"] = draw(st.sampled_from([*DTYPE_BITS, "Q4_K", "f32", "", "F8"]))
    return doc


@FUZZ
@given(doc=mutated_docs(), slack=st.just(0) | st.integers(-16, 16))
def test_mutated_valid_headers(doc, slack):
    check(json.dumps(doc).encode(), max(0, VALID_DATA_SIZE + slack))


@FUZZ
@given(data=st.data())
def test_byte_level_mutations_of_a_valid_header(data):
    raw = bytearray(VALID_RAW)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[i : i + data.draw(st.integers(1, 8))]
        elif op == "cut":
            del raw[i:]
    check(bytes(raw), VALID_DATA_SIZE)


@FUZZ
@given(data=st.data())
def test_whole_files_through_read_header(data):
    """The length prefix and the file's end too: random, cut, padded or rewritten files."""
    kind = data.draw(st.sampled_from(["random", "cut", "pad", "length"]))
    expected = None  # the rule that must refuse the file, where the change decides it
    if kind == "random":
        blob = data.draw(st.binary(max_size=200))
        if len(blob) < 8:
            expected = ("too short for a header",)
    elif kind == "cut":
        blob = VALID[: data.draw(st.integers(0, len(VALID) - 1))]
        expected = (
            ("too short for a header",)
            if len(blob) < 8
            else ("runs past the end",)
            if len(blob) < 8 + N
            else ("past the end of the file (truncated file)", "tensors cover")
        )
    elif kind == "pad":
        blob = VALID + data.draw(st.binary(min_size=1, max_size=16))
        expected = ("tensors cover",)
    else:
        n = data.draw(st.integers(0, 2**64 - 1) | st.integers(0, len(VALID) + 8))
        blob = struct.pack("<Q", n) + VALID[8:]
        if n > MAX_HEADER_BYTES:
            expected = ("is absurd",)
        elif 8 + n > len(blob):
            expected = ("runs past the end",)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.safetensors"
        path.write_bytes(blob)
        try:
            header = read_header(path)
        except CheckpointError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
            assert_one_rule(str(exc), expected)
            return
        assert expected is None, f"{kind}: accepted"
        assert header.size == len(blob)
        assert max((e.end for e in header.tensors.values()), default=8 + N) == len(blob)


def test_the_valid_file_itself_is_accepted():
    check(VALID_RAW, VALID_DATA_SIZE)
    assert len(parse_header(VALID_RAW, VALID_DATA_SIZE, 8 + N, "v")[0]) == 3


def test_a_name_that_is_not_unicode_is_refused():
    """JSON can spell a lone surrogate; such a name could not be journaled or written as results."""
    raw = b'{"\\ud800x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    try:
        parse_header(raw, 4, 8 + len(raw), "s.safetensors")
    except CheckpointError as exc:
        assert "not valid Unicode" in str(exc)
    else:
        raise AssertionError("accepted a lone surrogate")
