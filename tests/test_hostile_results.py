"""Results, journals and spectra from strangers (docs/robustness.md): every case of issue #20 as a
fixed example. Each ends in one `error:` line saying its own rule (or a clean success where the
input is harmless), never a traceback, a hang, a huge allocation, a read outside the folder, or a
file replaced that the user did not name as an output. Hang cases run under a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from test_bad_input import assert_one_line_error, run_cli, scan_args

from spectrum_stream.errors import KeyGrammarError, SpectrumError, UnsafeFileError
from spectrum_stream.journal.spectra_log import read_spectrum
from spectrum_stream.printable import printable
from spectrum_stream.results.key_grammar import parse_key
from spectrum_stream.results.select import load_results
from spectrum_stream.trainers.freeze import freeze

DEADLINE_S = 30  # every hang case must finish far inside this


@contextlib.contextmanager
def deadline(seconds: int = DEADLINE_S):
    """Fail (instead of hanging the suite) when the body runs past `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- the key grammar --------------------------------------------------------------------------


# keys of the shapes the original tool's published files and our own scans hold, made up here
GOOD_KEYS = [
    "lm_head",
    "model.embed_tokens",
    "model.norm",
    "model.layers.7.self_attn.q_proj",
    "model.layers.12.self_attn.kv_a_proj_with_mqa",
    "model.layers.3.block_sparse_moe.experts.5.w2",
    "model.layers.3.mlp.experts.117.gate_proj",
    "model.layers.0.moe_block.experts.2.linear_1",
    "model.layers.0.mlp.shared_expert_gate",
    "model.layers.1.mlp.experts.gate_up_proj(?#gate)$[3]",
    "model.layers.1.mlp.experts.gate_up_proj(?#part1)$[0]",
    "model.layers.2.mlp.experts.down_proj$[7]",
    "transformer.blocks.0.ffn.experts.mlp.w1$[512:768]",
    "^model.embed_tokens.weight$",
    "self_attn.q_proj",
    "x.y$[:4]",
    "x.y$[2:]",
]

BAD_KEYS = {
    "(a+)+$": "never a regular expression",
    "(.+)+Z": "never a regular expression",
    "model.layers.0.mlp.*": "never a regular expression",
    "a|b": "never a regular expression",
    "": "never a regular expression",
    "model.layers." + "9" * 5000 + ".mlp.up_proj": "more than the 1000",
    "model.layers." + "9" * 40 + ".mlp.up_proj": "more than 9 digits",
    "down_proj$[9999999999999]": "more than 12 digits",
    "down_proj$[5:2]": "an empty row range",
    "down_proj$[]": "an empty row index",
    "evil\x1b]0;owned\x07.q_proj": "never a regular expression",
    "a\x00b": "never a regular expression",
}


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_the_grammar_accepts_the_keys_scans_write(key):
    parse_key(key)


@pytest.mark.parametrize("key", sorted(BAD_KEYS))
def test_the_grammar_refuses_everything_else_in_its_own_words(key):
    with deadline(5), pytest.raises(KeyGrammarError) as info:
        parse_key(key, "r.json")
    message = str(info.value)
    assert message.startswith("r.json: key '") and BAD_KEYS[key] in message
    assert message.isprintable()  # control characters escaped, the line stays one line


def test_row_ranges_and_markers_are_parsed():
    p = parse_key("m.experts.gate_up_proj(?#up)$[4]")
    assert (p.name, p.marker, p.rows, p.exact) == ("m.experts.gate_up_proj", "up", (4, 5), True)
    assert parse_key("x$[2:]").rows == (2, None) and parse_key("x$[:3]").rows == (0, 3)
    assert not parse_key("model.layers.1").exact  # a prefix, as axolotl's re.match reads it


def results_file(path: Path, keys: list[str], type_: str = "mlp.up_proj") -> Path:
    path.write_text(
        json.dumps({k: {"snr": float(i + 1), "type": type_} for i, k in enumerate(keys)})
    )
    return path


def tiny_results(folder: Path, *extra: str) -> Path:
    keys = [f"model.layers.{i}.mlp.up_proj" for i in range(3)] + list(extra)
    return results_file(folder / "snr_results_m.json", keys)


class _Named(torch.nn.Module):
    """A model with one parameter whose name is 40 characters: enough for `(a+)+$` to hang re."""

    def __init__(self):
        super().__init__()
        self.register_parameter("a" * 40, torch.nn.Parameter(torch.ones(2, 2)))


def test_freeze_with_a_catastrophic_key_refuses_at_once(tmp_path):
    with deadline():
        with pytest.raises(KeyGrammarError, match=r"\(a\+\)\+\$"):
            freeze(_Named(), {"(a+)+$": {"snr": 1.0, "type": "x"}})
        with pytest.raises(KeyGrammarError, match="never a regular expression"):
            freeze(_Named(), tiny_results(tmp_path, "(a+)+$"))


def test_freeze_matches_plain_names_by_prefix_as_axolotl_does():
    model = _Named()
    summary = freeze(model, {"a" * 20: {"snr": 1.0, "type": "x"}}, top_percent=100)
    assert summary.whole == ["a" * 40] and next(model.parameters()).requires_grad


@pytest.mark.parametrize("command", ["select", "report", "metrics", "compare", "plan"])
def test_every_reader_refuses_a_regex_key(tmp_path, command, mixtral_dir):
    bad = tiny_results(tmp_path, "(.+)+Z")
    args = {
        "select": ["select", str(bad)],
        "report": ["report", str(bad), "-o", str(tmp_path / "rep")],
        "metrics": ["metrics", str(bad), "-o", str(tmp_path / "m.csv")],
        "compare": ["compare", str(bad), str(bad)],
        "plan": ["plan", str(mixtral_dir), "--results", str(bad)],
    }[command]
    with deadline():
        assert_one_line_error(run_cli(args), "(.+)+Z", "never a regular expression")


@pytest.mark.parametrize("command", ["report", "plan"])
def test_a_5000_digit_layer_is_one_line(tmp_path, command, mixtral_dir):
    bad = tiny_results(tmp_path, "model.layers." + "7" * 5000 + ".mlp.up_proj")
    args = (
        ["report", str(bad), "-o", str(tmp_path / "rep")]
        if command == "report"
        else ["plan", str(mixtral_dir), "--results", str(bad)]
    )
    assert_one_line_error(run_cli(args), "more than the 1000")


def test_a_row_past_the_parameter_is_one_line_in_plan(tmp_path, mixtral_dir):
    bad = tiny_results(tmp_path, "model.layers.0.mlp.experts.down_proj$[999999]")
    assert_one_line_error(run_cli(["plan", str(mixtral_dir), "--results", str(bad)]), str(bad))


def test_a_key_with_escape_sequences_is_printed_escaped(tmp_path):
    bad = tiny_results(tmp_path, "x\x1b[2J\x1b]0;owned\x07")
    line = assert_one_line_error(run_cli(["select", str(bad)]), "\\x1b[2J")
    assert "\x1b" not in line and "\x07" not in line


# -- files that are not regular files inside their folder --------------------------------------


def small_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    save_file(
        {
            f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 6, generator=gen)
            for i in range(2)
        },
        str(folder / "model.safetensors"),
    )
    return folder


def test_a_config_that_is_a_fifo_or_links_out_is_refused(tmp_path):
    folder = small_checkpoint(tmp_path / "ckpt")
    os.mkfifo(folder / "config.json")
    with deadline():
        assert_one_line_error(run_cli(scan_args(folder, tmp_path / "o")), "a FIFO", "config")
    (folder / "config.json").unlink()
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (folder / "config.json").symlink_to(secret)
    with deadline():
        line = assert_one_line_error(run_cli(scan_args(folder, tmp_path / "o")), "outside")
    assert "secret.json" in line


def test_an_index_linking_out_of_the_folder_is_refused(tmp_path):
    folder = small_checkpoint(tmp_path / "ckpt")
    elsewhere = tmp_path / "index.json"
    elsewhere.write_text(json.dumps({"weight_map": {"x": "model.safetensors"}}))
    (folder / "model.safetensors.index.json").symlink_to(elsewhere)
    assert_one_line_error(run_cli(scan_args(folder, tmp_path / "o")), "outside", "index")


def scanned(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A small checkpoint scanned once: (checkpoint, out dir, journal)."""
    folder = small_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert run_cli(scan_args(folder, out, "--quiet")).exit_code == 0
    return folder, out, out / "snr_results_ckpt.journal.jsonl"


def test_a_spectra_log_that_is_a_fifo_never_hangs(tmp_path):
    folder, out, journal = scanned(tmp_path)
    log = out / "snr_results_ckpt.spectra.bin"
    log.unlink()
    os.mkfifo(log)
    with deadline():
        r = run_cli(["rebuild", str(journal)])  # the values are gone: results without them
        assert r.exit_code == 0, r.output
        assert_one_line_error(run_cli(scan_args(folder, out, "--fresh", "--quiet")), "a FIFO")


def test_nul_in_a_name_is_a_spectrum_error(tmp_path):
    from spectrum_stream import driver

    with pytest.raises(SpectrumError):
        load_results(str(tmp_path / "a\x00b.json"))
    with pytest.raises(SpectrumError):
        driver.scan(str(tmp_path / "a\x00b"))
    with pytest.raises(UnsafeFileError, match="NUL"):
        load_results(tmp_path / "x\x00.json")


# -- numbers read from files ----------------------------------------------------------------------


def journal_lines(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines()]


def rewrite_spectrum_ref(journal: Path, change) -> None:
    lines = journal_lines(journal)
    for rec in lines[1:]:
        if "spectrum" in rec:
            change(rec)
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.parametrize("count", [10**12, 2**62, -1, 5])
def test_a_spectrum_count_other_than_k_is_never_allocated(tmp_path, count):
    folder, out, journal = scanned(tmp_path)
    rewrite_spectrum_ref(journal, lambda rec: rec["spectrum"].__setitem__(2, count))
    with deadline():
        r = run_cli(["rebuild", str(journal)])
    assert r.exit_code == 0, r.output
    assert "0 failed" in r.stdout
    with pytest.raises(SpectrumError, match="holds no singular values"):
        from spectrum_stream.results.kept_spectra import load_kept_spectra

        load_kept_spectra(
            out / "snr_results_ckpt.json", load_results(out / "snr_results_ckpt.json")
        )


def test_read_spectrum_checks_before_reading(tmp_path):
    data = np.arange(6, dtype="<f4").tobytes()
    (tmp_path / "x.spectra.bin").write_bytes(data)
    ref = ["x.spectra.bin", 0, 6, zlib.crc32(data)]
    assert read_spectrum(tmp_path, ref, k=6) is not None
    assert read_spectrum(tmp_path, ref, k=5) is None  # a count other than the module's k
    assert read_spectrum(tmp_path, ["x.spectra.bin", 2**62, 6, ref[3]]) is None  # past the end
    assert read_spectrum(tmp_path, ["x.spectra.bin", 0, 10**12, ref[3]]) is None
    assert read_spectrum(tmp_path, ["x.spectra.bin", 0, 6.0, ref[3]]) is None  # not an integer


def spectra_file(path: Path, spectra: dict, shapes: dict) -> Path:
    meta = {"format": "spectrum-stream/spectra", "version": "1", "shapes": json.dumps(shapes)}
    save_numpy(spectra, str(path), metadata=meta)
    return path


def test_a_huge_shape_in_spectra_metadata_is_one_line(tmp_path):
    results = tiny_results(tmp_path)
    spectra_file(
        tmp_path / "snr_results_m_spectra.safetensors",
        {"model.layers.0.mlp.up_proj": np.ones(3, dtype=np.float32)},
        {"model.layers.0.mlp.up_proj": [10**400, 3]},
    )
    assert_one_line_error(
        run_cli(["metrics", str(results), "-o", str(tmp_path / "t.csv")]), "valid shape"
    )


def test_nan_in_a_kept_spectrum_is_that_modules_failure(tmp_path):
    results = tiny_results(tmp_path)
    values = np.linspace(3, 1, 6).astype(np.float32)
    spectra_file(
        tmp_path / "snr_results_m_spectra.safetensors",
        {"model.layers.0.mlp.up_proj": values, "model.layers.1.mlp.up_proj": values * np.nan},
        {k: [6, 8] for k in ("model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj")},
    )
    r = run_cli(["metrics", str(results), "-o", str(tmp_path / "t.json"), "--quiet"])
    assert r.exit_code == 0, r.output
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "NaN or infinite" in warnings[0]
    rows = {row["key"]: row for row in json.loads((tmp_path / "t.json").read_text())}
    assert rows["model.layers.1.mlp.up_proj"]["alpha"] is None
    assert rows["model.layers.0.mlp.up_proj"]["stable_rank"] is not None


@pytest.mark.parametrize("command", ["metrics", "report"])
def test_a_spectrum_longer_than_any_real_matrix_is_refused_before_the_fit(tmp_path, command):
    """The power-law fit is quadratic in the spectrum's length: a 70,000-value spectrum (shape and
    count consistent) would hold the command for minutes; it is refused at once, in one line."""
    results = tiny_results(tmp_path)
    n = 70_000
    spectra_file(
        tmp_path / "snr_results_m_spectra.safetensors",
        {"model.layers.0.mlp.up_proj": np.linspace(3, 1, n).astype(np.float32)},
        {"model.layers.0.mlp.up_proj": [n, n]},
    )
    out = tmp_path / ("t.json" if command == "metrics" else "page")
    with deadline(30):
        r = run_cli([command, str(results), "-o", str(out), "--quiet"])
    assert_one_line_error(r, "more than any real matrix has")


def header_file(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("command", ["scan", "plan"])
def test_a_huge_zero_sized_shape_is_one_line(tmp_path, command):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    header_file(
        folder / "model.safetensors",
        {
            "model.layers.0.mlp.up_proj.weight": {
                "dtype": "F32",
                "shape": [10**400, 0],
                "data_offsets": [0, 0],
            }
        },
    )
    args = scan_args(folder, tmp_path / "o") if command == "scan" else ["plan", str(folder)]
    assert_one_line_error(run_cli(args), "shape must be")


def test_a_zero_row_matrix_plans(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": torch.zeros(0, 8),
            "model.layers.0.mlp.down_proj.weight": torch.ones(8, 4),
        },
        str(folder / "model.safetensors"),
    )
    r = run_cli(["plan", str(folder)])
    assert r.exit_code == 0, r.output


# -- overwrites -------------------------------------------------------------------------------------


def test_scan_never_replaces_a_results_file_it_did_not_write(tmp_path):
    folder = small_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "snr_results_ckpt.json"
    theirs.write_text('{"hours": {"snr": 1.0, "type": "on a GPU node"}}')
    before = theirs.read_bytes()
    line = assert_one_line_error(
        run_cli(scan_args(folder, out)), str(theirs), "--out-dir", "--name"
    )
    assert "no scan journal" in line
    assert theirs.read_bytes() == before
    assert_one_line_error(run_cli(scan_args(folder, out, "--fresh")), "no scan journal")
    assert theirs.read_bytes() == before
    assert run_cli(scan_args(folder, out, "--name", "mine", "--quiet")).exit_code == 0


def test_rebuild_writes_only_results_names(tmp_path):
    _, out, journal = scanned(tmp_path)
    config = out / "config.json"
    config.write_text('{"keep": "me"}')
    (out / "config.journal.jsonl").write_bytes(journal.read_bytes())
    line = assert_one_line_error(run_cli(["rebuild", str(out / "config.journal.jsonl")]))
    assert "snr_results_" in line
    assert json.loads(config.read_text()) == {"keep": "me"}
    (out / "snr_results_x.journal.jsonl").write_text('{"not": "a header"}\n')
    assert_one_line_error(
        run_cli(["rebuild", str(out / "snr_results_x.journal.jsonl")]),
        "not a spectrum-stream journal",
    )


def test_metrics_and_select_outputs(tmp_path):
    _, out, _ = scanned(tmp_path)
    results = out / "snr_results_ckpt.json"
    before = results.read_bytes()
    assert_one_line_error(run_cli(["metrics", str(results), "-o", str(results)]), "input")
    link = tmp_path / "link.json"
    link.symlink_to(results)
    assert_one_line_error(run_cli(["select", str(results), "-o", str(link), "--force"]), "input")
    assert results.read_bytes() == before
    spectra = out / "snr_results_ckpt_spectra.safetensors"  # select reads it too (the ranks)
    kept = spectra.read_bytes()
    r = run_cli(["select", str(results), "-o", str(spectra), "--force"])
    assert_one_line_error(r, "input")
    assert spectra.read_bytes() == kept
    table = tmp_path / "t.csv"
    table.write_text("mine\n")
    assert_one_line_error(run_cli(["metrics", str(results), "-o", str(table)]), "--force")
    assert table.read_text() == "mine\n"
    assert run_cli(["metrics", str(results), "-o", str(table), "--force", "--quiet"]).exit_code == 0
    assert table.read_text().startswith("key,")
    chosen = tmp_path / "sel.yaml"
    chosen.write_text("mine\n")
    assert_one_line_error(run_cli(["select", str(results), "-o", str(chosen)]), "exists", "--force")
    assert run_cli(["select", str(results), "-o", str(chosen), "--force"]).exit_code == 0
    assert "unfrozen_parameters" in chosen.read_text()


def test_report_into_a_folder_of_other_files_needs_force(tmp_path):
    _, out, _ = scanned(tmp_path)
    results = out / "snr_results_ckpt.json"
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my homepage")
    assert_one_line_error(run_cli(["report", str(results), "-o", str(site)]), "--force")
    assert (site / "index.html").read_text() == "my homepage"
    fresh = tmp_path / "rep"
    assert run_cli(["report", str(results), "-o", str(fresh), "--quiet"]).exit_code == 0
    assert run_cli(["report", str(results), "-o", str(fresh), "--quiet"]).exit_code == 0  # ours
    assert run_cli(["report", str(results), "-o", str(site), "--force", "--quiet"]).exit_code == 0


def test_results_are_replaced_as_a_set(tmp_path, monkeypatch):
    _, out, journal = scanned(tmp_path)
    names = [
        "snr_results_ckpt.json",
        "snr_results_ckpt_sorted.json",
        "snr_results_ckpt_spectra.safetensors",
    ]
    before = {n: (out / n).read_bytes() for n in names}
    import spectrum_stream.results.files as files

    def broken(*args, **kwargs):
        raise SpectrumError("a bad record")

    monkeypatch.setattr(files, "spectra_bytes", broken)
    assert_one_line_error(
        run_cli(["rebuild", str(journal), "--names", "checkpoint"]), "a bad record"
    )
    assert {n: (out / n).read_bytes() for n in names} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# -- names printed safely, empty tensors -------------------------------------------------------------


def test_many_empty_tensors_are_one_warning_and_journaled_once(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.zeros(0, 4) for i in range(3000)}
    tensors["model.layers.0.evil\x1b[31m.weight"] = torch.zeros(4, 0)
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.ones(4, 3)
    save_file(tensors, str(folder / "model.safetensors"))
    out = tmp_path / "out"
    for _ in range(2):
        with deadline():
            r = run_cli(scan_args(folder, out, "--quiet"))
        assert r.exit_code == 0, r.output
        warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
        assert len(warnings) == 1 and "3001 empty tensor(s)" in warnings[0], r.stderr
        assert "\x1b" not in r.stderr + r.stdout
        lines = (out / "snr_results_ckpt.journal.jsonl").read_text().splitlines()
        assert len(lines) == 1 + 3001 + 1  # header, empties once, the one real matrix once


def test_printable_escapes_controls_only():
    assert printable("naïve 名 q_proj") == "naïve 名 q_proj"
    assert printable("a\x1b[31mb\r\u202ec") == "a\\x1b[31mb\\x0d\\u202ec"


def test_tensor_names_outside_the_grammar_stay_out_of_the_results(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    gen = torch.Generator().manual_seed(2)
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=gen),
            "model.layers.0.mlp.(a+)+$.weight": torch.randn(6, 4, generator=gen),
        },
        str(folder / "model.safetensors"),
    )
    out = tmp_path / "out"
    r = run_cli(scan_args(folder, out, "--quiet", "--names", "checkpoint"))
    assert r.exit_code == 0, r.output
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "1 module(s) left out" in warnings[0]
    results = load_results(out / "snr_results_ckpt.json")
    assert list(results) == ["model.layers.0.mlp.up_proj"]
    assert run_cli(["select", str(out / "snr_results_ckpt.json")]).exit_code == 0
