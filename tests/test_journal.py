"""The journal on its own: line content, fsync per module, torn and garbled lines, refusals,
a full disk, rebuilding results, the lock."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectrum_stream.driver import scan
from spectrum_stream.errors import ResumeError, SpectrumError
from spectrum_stream.journal import journal as journal_mod
from spectrum_stream.journal.journal import Journal, read_journal
from spectrum_stream.journal.lock import ScanLock
from spectrum_stream.options import ScanOptions
from spectrum_stream.results import atomic as results_mod
from spectrum_stream.results.files import rebuild_results
from spectrum_stream.results.paths import ResultPaths

HEADER = {
    "checkpoint": [{"shard": "a.safetensors", "size": 100, "header_sha256": "ab" * 32}],
    "settings": {"method": "exact", "include": None, "exclude": None},
}


def rec(key: str, snr: float = 0.5, status: str = "ok") -> dict:
    r = {"key": key, "type": "mlp.up_proj", "status": status}
    if status == "ok":
        r["snr"] = snr
    else:
        r["reason"] = "holds NaN or Inf values"
    return r


def lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


# two of the planted checkpoint's six layers: every kind of module, fewer fsyncs
TWO_LAYERS = r"layers\.[01]\.|embed_tokens|lm_head"


def test_every_line_holds_the_numbers_behind_the_snr(planted_dir, tmp_path):
    report = scan(
        planted_dir, ScanOptions(out_dir=tmp_path, progress=False, device="cpu", include=TWO_LAYERS)
    )
    header, *records = [json.loads(x) for x in lines(report.paths.journal)]
    assert header["journal"] == 1 and header["settings"]["method"] == "exact"
    shards = sorted(p.name for p in planted_dir.glob("*.safetensors"))
    assert [s["shard"] for s in header["checkpoint"]] == shards
    for s in header["checkpoint"]:
        assert (
            s["size"] == (planted_dir / s["shard"]).stat().st_size and len(s["header_sha256"]) == 64
        )
    assert len(records) == report.planned == 2 * 7 + 2
    results = json.loads(report.paths.results.read_text())
    for r in records:
        assert r["status"] == "ok"
        assert r["key"] in results and results[r["key"]] == {"snr": r["snr"], "type": r["type"]}
        assert r["tensor"] == r["key"] + ".weight" and r["shard"] in shards
        assert r["dtype"] == "BF16" and len(r["shape"]) == 2
        assert r["sigma_max"] > r["threshold"] > 0 and 0 <= r["n_signal"] <= min(r["shape"])
        assert r["seconds"] >= 0 and r["method"] == "exact"


def test_each_module_is_fsynced_before_the_next(planted_dir, tmp_path, monkeypatch):
    seen = []
    real = journal_mod._fsync

    def spy(fd):
        real(fd)
        seen.append(len(lines(ResultPaths.for_model(tmp_path, "planted").journal)))

    monkeypatch.setattr(journal_mod, "_fsync", spy)
    report = scan(
        planted_dir, ScanOptions(out_dir=tmp_path, progress=False, device="cpu", include=TWO_LAYERS)
    )
    # one fsync per line, each right after its line: header, then every module in turn
    assert seen == list(range(1, report.planned + 2))


def test_resume_keeps_records_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "j.journal.jsonl"
    j = Journal.open(path, HEADER)
    j.append(rec("a"))
    j.append(rec("b"))
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "type": "mlp.up_pr')  # power cut mid-line
    header, records, good = read_journal(path)
    assert list(records) == ["a", "b"] and good < path.stat().st_size
    j = Journal.open(path, HEADER)
    assert set(j.records) == {"a", "b"} and j.finished() == {"a", "b"}
    assert path.stat().st_size == good  # the torn line is gone ...
    j.append(rec("c"))  # ... and the module is redone on a line of its own
    j.close()
    assert [json.loads(x)["key"] for x in lines(path)[1:]] == ["a", "b", "c"]


def test_a_garbled_middle_line_loses_only_itself(tmp_path):
    path = tmp_path / "j.journal.jsonl"
    j = Journal.open(path, HEADER)
    for key in "abc":
        j.append(rec(key))
    j.close()
    data = lines(path)
    data[2] = b"\x00" * len(data[2])  # block of zeros after a crash
    path.write_bytes(b"\n".join(data) + b"\n")
    _, records, _ = read_journal(path)
    assert list(records) == ["a", "c"]


def test_failed_modules_are_kept_but_not_finished(tmp_path):
    path = tmp_path / "j.journal.jsonl"
    j = Journal.open(path, HEADER)
    j.append(rec("a"))
    j.append(rec("b", status="failed"))
    j.close()
    j = Journal.open(path, HEADER)
    assert set(j.records) == {"a", "b"} and j.finished() == {"a"}
    j.close()


def test_an_empty_or_headerless_journal_starts_over(tmp_path):
    path = tmp_path / "j.journal.jsonl"
    path.write_bytes(b'{"journal": 1, "check')  # died while writing the header
    j = Journal.open(path, HEADER)
    j.close()
    header, records, _ = read_journal(path)
    assert header["checkpoint"] == HEADER["checkpoint"] and records == {}


def test_a_foreign_file_is_never_overwritten(tmp_path):
    path = tmp_path / "j.journal.jsonl"
    path.write_bytes(b"[1, 2, 3]\nhello\n")
    with pytest.raises(ResumeError, match="not a spectrum-stream journal"):
        Journal.open(path, HEADER)
    assert path.read_bytes() == b"[1, 2, 3]\nhello\n"
    Journal.open(path, HEADER, fresh=True).close()  # --fresh replaces it
    assert read_journal(path)[0]["settings"] == HEADER["settings"]


def changed(**kw) -> dict:
    h = json.loads(json.dumps(HEADER))
    for k, v in kw.items():
        if k == "shard":
            h["checkpoint"][0].update(v)
        elif k == "shards":
            h["checkpoint"] = v
        else:
            h["settings"][k] = v
    return h


@pytest.mark.parametrize(
    "other, says",
    [
        (changed(shard={"size": 101}), "shard a.safetensors was 100 bytes, now 101"),
        (changed(shard={"header_sha256": "cd" * 32}), "the header of shard a.safetensors changed"),
        (changed(shards=[]), "no longer has shard a.safetensors"),
        (
            changed(
                shards=[HEADER["checkpoint"][0], {"shard": "b", "size": 1, "header_sha256": "x"}]
            ),
            "has a new shard b",
        ),
        (changed(include="mlp"), "--include was not set, now 'mlp'"),
        (changed(method="gram"), "--method was 'exact', now 'gram'"),
    ],
)
def test_a_different_checkpoint_or_setting_is_refused_saying_what_differs(tmp_path, other, says):
    path = tmp_path / "j.journal.jsonl"
    j = Journal.open(path, HEADER)
    j.append(rec("a"))
    j.close()
    before = path.read_bytes()
    with pytest.raises(ResumeError) as info:
        Journal.open(path, other)
    message = str(info.value)
    assert says in message and "--fresh" in message and str(path) in message
    assert path.read_bytes() == before
    j = Journal.open(path, other, fresh=True)
    assert j.records == {}
    j.close()


def test_an_older_journal_format_is_refused(tmp_path):
    path = tmp_path / "j.journal.jsonl"
    path.write_bytes(orjson.dumps({**HEADER, "journal": 0}) + b"\n")
    with pytest.raises(ResumeError, match="journal format 0"):
        Journal.open(path, HEADER)


@pytest.mark.parametrize("where", ["write", "partial write", "fsync"])
def test_a_full_disk_leaves_the_journal_on_a_whole_line(tmp_path, monkeypatch, where):
    path = tmp_path / "j.journal.jsonl"
    j = Journal.open(path, HEADER)
    j.append(rec("a"))
    real_write, real_fsync = journal_mod.write_all, journal_mod._fsync

    def full_write(fd, data):
        if where == "partial write":
            real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "fsync":
        monkeypatch.setattr(journal_mod, "_fsync", full_fsync)
    else:
        monkeypatch.setattr(journal_mod, "write_all", full_write)
    with pytest.raises(SpectrumError) as info:
        j.append(rec("b"))
    assert "the disk is full" in str(info.value) and str(path) in str(info.value)
    assert "b" not in j.records
    monkeypatch.setattr(journal_mod, "write_all", real_write)
    monkeypatch.setattr(journal_mod, "_fsync", real_fsync)
    j.close()
    assert [json.loads(x).get("key") for x in lines(path)] == [None, "a"]  # readable, whole lines
    j = Journal.open(path, HEADER)
    j.append(rec("b"))  # space freed: the module is written on resume
    j.close()
    assert list(read_journal(path)[1]) == ["a", "b"]


def test_a_full_disk_when_the_journal_is_created(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_mod, "write_all", full)
    path = tmp_path / "j.journal.jsonl"
    with pytest.raises(SpectrumError, match="disk is full"):
        Journal.open(path, HEADER)
    assert path.read_bytes() == b""


def test_results_that_cannot_be_written_name_the_file_and_leave_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    results_mod.atomic_write(target, b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results_mod, "write_all", full)
    with pytest.raises(SpectrumError) as info:
        results_mod.atomic_write(target, b"new")
    assert str(target) in str(info.value) and "disk is full" in str(info.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_results_files_follow_the_umask(tmp_path):
    target = tmp_path / "r.json"
    old = os.umask(0o022)
    try:
        results_mod.atomic_write(target, b"{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644  # readable by the training job's user too


def test_rebuild_results_from_the_journal_alone(tmp_path):
    paths = ResultPaths.for_model(tmp_path, "org/model")
    j = Journal.open(paths.journal, HEADER)
    j.append(rec("x", 0.25))
    j.append({**rec("y", 0.75), "type": "self_attn.q_proj"})
    j.append(rec("z", status="failed"))
    j.close()
    with open(paths.journal, "ab") as f:
        f.write(b'{"key": "w"')  # a scan is writing right now
    got_paths, results, failed = rebuild_results(paths.journal)
    assert got_paths.results == paths.results == tmp_path / "snr_results_org-model.json"
    assert (
        json.loads(paths.results.read_text())
        == results
        == {
            "x": {"snr": 0.25, "type": "mlp.up_proj"},
            "y": {"snr": 0.75, "type": "self_attn.q_proj"},
        }
    )
    assert json.loads(paths.sorted.read_text()) == {
        "mlp.up_proj": {"x": 0.25},
        "self_attn.q_proj": {"y": 0.75},
    }
    assert failed == [("z", "holds NaN or Inf values")]


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("results.json", None, "not a journal file"),
        ("x.journal.jsonl", None, "no such journal"),
        ("x.journal.jsonl", b"", "empty"),
        ("x.journal.jsonl", b"garbage\n", "not a spectrum-stream journal"),
    ],
)
def test_rebuild_refuses_what_is_not_a_journal(tmp_path, name, content, says):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SpectrumError, match=says):
        rebuild_results(path)


def test_the_lock_refuses_a_second_holder_and_says_who(tmp_path):
    path = tmp_path / "x.lock"
    with ScanLock(path):
        with pytest.raises(SpectrumError) as info, ScanLock(path):
            pass
        assert "another scan" in str(info.value) and "pid" in str(info.value)
    with ScanLock(path):  # released on exit
        pass


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.binary(max_size=400)
    | st.lists(
        st.sampled_from(
            [
                b'{"journal": 1, "checkpoint": []}',
                b'{"key": "a", "status": "ok"}',
                b'{"key": 3}',
                b"[]",
                b"null",
                b"{",
                b"\x00\x00",
                b"",
            ]
        ),
        max_size=6,
    ).map(lambda parts: b"\n".join(parts))
)
def test_reading_any_journal_bytes_only_raises_our_error(tmp_path, data):
    path = tmp_path / "fuzz.journal.jsonl"
    path.write_bytes(data)
    try:
        header, records, good = read_journal(path)
    except SpectrumError:
        return
    assert 0 <= good <= len(data) and (good == 0 or data[good - 1 : good] == b"\n")
    assert all(isinstance(k, str) for k in records)
