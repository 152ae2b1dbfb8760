"""The spectra log beside the journal: values come back exactly, once, for the line that owns them."""

from __future__ import annotations

import numpy as np

from spectrum_stream.journal.spectra_log import SpectraLog, read_spectrum, spectra_log_path


def test_values_come_back_for_their_own_reference_only(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "x.spectra.bin"
    log = SpectraLog(path)
    a, b = rng.random(5, dtype=np.float32), rng.random(3, dtype=np.float32)
    ra, rb = log.append(a), log.append(b)
    log.close()
    assert np.array_equal(read_spectrum(path, ra), a) and np.array_equal(read_spectrum(path, rb), b)
    # a reference pointing at other bytes (another module's, or a shifted offset) is refused
    assert read_spectrum(path, [ra[0], rb[1], rb[2]]) is None
    assert read_spectrum(path, [ra[0] + 4, ra[1], ra[2]]) is None
    assert read_spectrum(path, [rb[0], rb[1] + 1, rb[2]]) is None  # past the end
    assert read_spectrum(path, "garbage") is None


def test_a_torn_write_is_skipped_and_later_values_land_after_it(tmp_path):
    path = tmp_path / "x.spectra.bin"
    log = SpectraLog(path)
    first = log.append(np.arange(4, dtype=np.float32))
    log.close()
    with open(path, "ab") as f:  # a write the kill cut short: no journal line points to it
        f.write(b"\x01\x02\x03")
    log = SpectraLog(path)
    second = log.append(np.arange(6, dtype=np.float32))
    log.close()
    assert second[0] == 16 + 3
    assert np.array_equal(read_spectrum(path, first), np.arange(4, dtype=np.float32))
    assert np.array_equal(read_spectrum(path, second), np.arange(6, dtype=np.float32))
    SpectraLog(path, fresh=True).close()
    assert path.stat().st_size == 0


def test_the_log_is_named_after_its_journal(tmp_path):
    assert spectra_log_path(tmp_path / "snr_results_m.journal.jsonl") == \
        tmp_path / "snr_results_m.spectra.bin"
