"""The results, journal and spectra readers fuzzed, like the header parser (test_header_fuzz.py):
whatever the bytes, each reader returns something that obeys its rules or raises SpectrumError,
and never takes long (keys are names, counts are checked before anything is allocated).

CI runs a small derandomized set; SPECTRUM_FUZZ_EXAMPLES=500 runs more.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hostile_results import BAD_KEYS, GOOD_KEYS, deadline

from spectrum_stream.errors import SpectrumError
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.journal.spectra_log import read_spectrum, spectrum_of
from spectrum_stream.results.files import write_results
from spectrum_stream.results.key_grammar import parse_key
from spectrum_stream.results.paths import ResultPaths
from spectrum_stream.results.select import load_results, to_yaml
from spectrum_stream.results.spectra import read_spectra, spectra_bytes

FUZZ = settings(
    max_examples=int(os.environ.get("SPECTRUM_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=not os.environ.get("SPECTRUM_FUZZ_EXAMPLES"),
)

keys = st.one_of(
    st.sampled_from(GOOD_KEYS + sorted(BAD_KEYS)),
    st.text(max_size=60),
    st.from_regex(r"[a-z_]{1,8}(\.[0-9]{1,3}|\.[a-z_]{1,8}){0,6}(\$\[[0-9]{0,4}(:[0-9]{0,4})?\])?"),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 5, 6, 10**12, 2**62, -1]),
    st.floats(allow_nan=False),
)


def _mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, byte in cuts:
        if out:
            out[pos % len(out)] = byte
    return bytes(out)


@FUZZ
@given(
    entries=st.dictionaries(
        keys, st.fixed_dictionaries({"snr": numbers, "type": st.text(max_size=20)}), max_size=8
    ),
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)
def test_results_reader(entries, cuts):
    with tempfile.TemporaryDirectory() as d, deadline(20):
        path = Path(d) / "snr_results_m.json"
        path.write_bytes(_mutate(json.dumps(entries).encode(), cuts))
        try:
            results = load_results(path)
        except SpectrumError as exc:
            assert "\n" not in str(exc)
            return
        for key in results:
            parse_key(key)  # nothing outside the grammar gets through
        to_yaml(results, 50)


def _journal_bytes(refs: list, shapes: list) -> bytes:
    lines = [{"journal": 1, "checkpoint": [{"shard": "model.safetensors"}], "settings": {}}]
    for i, (ref, shape) in enumerate(zip(refs, shapes)):
        lines.append(
            {
                "key": f"model.layers.{i}.mlp.up_proj",
                "type": "mlp.up_proj",
                "status": "ok",
                "snr": 1.0 + i,
                "shape": shape,
                "spectrum": ref,
            }
        )
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


@FUZZ
@given(
    refs=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["snr_results_m.spectra.bin", "../x.spectra.bin"]),
                numbers,
                numbers,
                numbers,
            ).map(list),
            st.just("garbage"),
        ),
        max_size=4,
    ),
    shapes=st.lists(st.one_of(st.tuples(numbers, numbers).map(list), st.just([6, 8])), max_size=4),
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
)
def test_journal_and_spectra_log_readers(refs, shapes, cuts):
    values = np.linspace(3, 1, 6).astype("<f4").tobytes()
    with tempfile.TemporaryDirectory() as d, deadline(20):
        folder = Path(d)
        (folder / "snr_results_m.spectra.bin").write_bytes(values)
        refs = [*refs, ["snr_results_m.spectra.bin", 0, 6, zlib.crc32(values)]]
        journal = folder / "snr_results_m.journal.jsonl"
        journal.write_bytes(_mutate(_journal_bytes(refs, [*shapes, [6, 8]]), cuts))
        try:
            _, records, _ = read_journal(journal)
        except SpectrumError:
            return
        for rec in records.values():
            found = spectrum_of(folder, rec)
            if found is not None:
                assert found.size == min(rec["shape"])
            read_spectrum(folder, rec.get("spectrum"))  # None or values, never an exception
        try:
            write_results(records.values(), ResultPaths.for_journal(journal))
        except SpectrumError:
            pass


@FUZZ
@given(
    shape=st.one_of(st.tuples(numbers, numbers).map(list), st.just([4, 9])),
    count=st.integers(0, 6),
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)
def test_spectra_file_reader(shape, count, cuts):
    good = spectra_bytes({"a": np.arange(4, 0, -1, dtype=np.float32)}, {"a": (4, 9)})
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    header["__metadata__"]["shapes"] = json.dumps({"a": shape}) if count else "{}"
    raw = json.dumps(header).encode()
    data = _mutate(struct.pack("<Q", len(raw)) + raw + good[8 + n :], cuts)
    with tempfile.TemporaryDirectory() as d, deadline(20):
        path = Path(d) / "snr_results_m_spectra.safetensors"
        path.write_bytes(data)
        try:
            spectra, shapes = read_spectra(path)
        except SpectrumError as exc:
            assert "\n" not in str(exc)
            return
        for key, s in spectra.items():
            assert s.size == min(shapes[key]) and np.isfinite(s).all()
