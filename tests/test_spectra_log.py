"""The spectra log beside the journal: values come back exactly, once, for the line that owns them."""

from __future__ import annotations

import numpy as np

from spectrum_stream.journal.spectra_log import (
    SpectraLog,
    read_spectrum,
    relocate,
    spectra_log_path,
)


def test_values_come_back_for_their_own_reference_only(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "x.spectra.bin"
    log = SpectraLog(path)
    a, b = rng.random(5, dtype=np.float32), rng.random(3, dtype=np.float32)
    ra, rb = log.append(a), log.append(b)
    log.close()
    assert ra[0] == rb[0] == "x.spectra.bin"
    assert np.array_equal(read_spectrum(tmp_path, ra), a)
    assert np.array_equal(read_spectrum(tmp_path, rb), b)
    # a reference pointing at other bytes (another module's, or a shifted offset) is refused
    assert read_spectrum(tmp_path, [ra[0], ra[1], rb[2], rb[3]]) is None
    assert read_spectrum(tmp_path, [ra[0], ra[1] + 4, ra[2], ra[3]]) is None
    assert read_spectrum(tmp_path, [rb[0], rb[1], rb[2] + 1, rb[3]]) is None  # past the end
    assert read_spectrum(tmp_path, ["../x.spectra.bin", *ra[1:]]) is None  # only beside it
    assert read_spectrum(tmp_path, "garbage") is None


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
    assert second[1] == 16 + 3
    assert np.array_equal(read_spectrum(tmp_path, first), np.arange(4, dtype=np.float32))
    assert np.array_equal(read_spectrum(tmp_path, second), np.arange(6, dtype=np.float32))
    SpectraLog(path, fresh=True).close()
    assert path.stat().st_size == 0


def test_relocated_lines_point_into_the_new_log(tmp_path):
    src = SpectraLog(tmp_path / "a.spectra.bin")
    recs = [
        {"key": "m1", "spectrum": src.append(np.ones(3, dtype=np.float32))},
        {"key": "m2", "spectrum": ["a.spectra.bin", 999, 3, 0]},  # values lost
        {"key": "m3"},
    ]  # a failed module: no values
    src.close()
    dst = SpectraLog(tmp_path / "b.spectra.bin")
    moved = relocate(recs, lambda rec: read_spectrum(tmp_path, rec["spectrum"]), dst)
    dst.close()
    assert moved[0]["spectrum"][0] == "b.spectra.bin"
    assert np.array_equal(read_spectrum(tmp_path, moved[0]["spectrum"]), np.ones(3))
    assert "spectrum" not in moved[1] and "spectrum" not in moved[2]
    assert recs[0]["spectrum"][0] == "a.spectra.bin"  # the originals are left as they were


def test_the_log_is_named_after_its_journal(tmp_path):
    assert (
        spectra_log_path(tmp_path / "snr_results_m.journal.jsonl")
        == tmp_path / "snr_results_m.spectra.bin"
    )
    assert (
        spectra_log_path(tmp_path / "snr_results_m.rank1-of-2.journal.jsonl")
        == tmp_path / "snr_results_m.rank1-of-2.spectra.bin"
    )


def test_a_line_with_a_damaged_shape_keeps_its_snr_but_no_spectrum(tmp_path):
    """The shape a line's spectrum is stored under must be [m, n]: with a damaged one the module
    keeps its SNR and goes without its spectrum, never a crash of `rebuild` or of a scan's end."""
    import json

    from click.testing import CliRunner

    from spectrum_stream.cli import main
    from spectrum_stream.examples.synthetic import write_planted_llama
    from spectrum_stream.results.spectra import read_spectra

    folder = tmp_path / "ckpt"
    write_planted_llama(folder, layers=1, hidden=64, intermediate=128, vocab=64, shards=1)
    out = tmp_path / "out"
    args = ["scan", str(folder), "--out-dir", str(out), "--device", "cpu", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    journal = out / "snr_results_ckpt.journal.jsonl"
    lines = journal.read_text().splitlines()
    damaged = json.loads(lines[1])
    for shape in ([64], ["a", 16], [0, 16]):
        lines[1] = json.dumps({**damaged, "shape": shape})
        journal.write_text("\n".join(lines) + "\n")
        for command in (["rebuild", str(journal)], args):  # rebuild, and a scan that resumes
            r = CliRunner().invoke(main, command)
            assert r.exit_code == 0, r.output
            assert damaged["key"] in json.loads((out / "snr_results_ckpt.json").read_text())
            spectra, _ = read_spectra(out / "snr_results_ckpt_spectra.safetensors")
            assert damaged["key"] not in spectra and len(spectra) == len(lines) - 2
