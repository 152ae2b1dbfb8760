"""Scanning from the Hub, against a local stand-in server (tests/hubserver.py); no internet.

Most tests run in this process with huggingface_hub's constants pointed at the server; two run the
real command in a subprocess with HF_ENDPOINT / HF_HOME set, as a user would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from hubserver import HubServer
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download

import spectrum_stream.source.hub.headers as hub_repo
from spectrum_stream.cli import main
from spectrum_stream.driver import scan
from spectrum_stream.errors import SpectrumError
from spectrum_stream.hub_scan import scan_hub
from spectrum_stream.journal.journal import read_journal
from spectrum_stream.options import ScanOptions
from spectrum_stream.source.checkpoint import open_local
from spectrum_stream.source.hub.headers import open_hub
from spectrum_stream.source.hub.repo import is_hub_id
from spectrum_stream.units import parse_size

REPO = "tiny/llama"
GATED = "tiny/gated"
TOKEN = "hf_test_secret"
JOURNAL = "snr_results_tiny-llama.journal.jsonl"
RESULTS = "snr_results_tiny-llama.json"


@contextlib.contextmanager
def logged(sink):
    """Every message the package logs (plan lines, warnings) goes to `sink` while inside."""

    class Sink(logging.Handler):
        def emit(self, record):
            sink(record.getMessage())

    logger, handler = logging.getLogger("spectrum_stream"), Sink()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def shard_names(folder: Path) -> list[str]:
    doc = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(doc["weight_map"].values()))


@pytest.fixture(scope="module")
def local(llama_dir, tmp_path_factory):
    """The local scan every Hub scan must agree with: results, and each module's shard."""
    out = tmp_path_factory.mktemp("local-scan")
    report = scan(llama_dir, ScanOptions(out_dir=out, device="cpu", progress=False))
    _, records, _ = read_journal(report.paths.journal)
    return SimpleNamespace(
        results=report.results, shard_of={k: r["shard"] for k, r in records.items()}
    )


@pytest.fixture
def hub(llama_dir):
    server = HubServer()
    server.add_repo(REPO, llama_dir)
    server.add_repo(GATED, llama_dir, token=TOKEN)
    with server:
        yield server


@pytest.fixture
def hf(hub, tmp_path, monkeypatch):
    """This process's huggingface_hub pointed at the server, with its cache under tmp_path."""
    home = tmp_path / "hf"
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # huggingface_hub sleeps 1 s before each of its 5 download retries; not here
    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda s: None))
    monkeypatch.chdir(tmp_path)
    return home


def subprocess_env(hub: HubServer, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DOWNLOAD_TIMEOUT="10",
    )
    return env


def cli(*args: str):
    return CliRunner().invoke(main, ["scan", *args], catch_exceptions=False)


def error_lines(text: str) -> list[str]:
    assert "Traceback" not in text
    return [line for line in text.splitlines() if line.startswith("error:")]


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def shard_blobs(home: Path, hub: HubServer, partial: bool = False) -> list[Path]:
    """Shard files in the HF cache: complete ones, and with `partial` those being downloaded."""
    etags = {e for name, e in hub.repos[REPO].etags.items() if name.endswith(".safetensors")}
    blobs = home / "hub" / "models--tiny--llama" / "blobs"
    return [
        p
        for p in blobs.glob("*")
        if p.name.split(".")[0] in etags and (partial or not p.name.endswith(".incomplete"))
    ]


def finished(journal: Path) -> dict[str, dict]:
    if not journal.is_file():
        return {}
    return {k: r for k, r in read_journal(journal)[1].items() if r.get("status") == "ok"}


def same_results(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, rec in want.items():
        assert got[key]["type"] == rec["type"]
        assert got[key]["snr"] == pytest.approx(rec["snr"], rel=1e-5), key


def opts(out="out", **kw) -> ScanOptions:
    return ScanOptions(out_dir=Path(out), device="cpu", **{"progress": False, **kw})


# ---------------------------------------------------------------------------------------------


def test_repo_id_rule_and_sizes(tmp_path, monkeypatch):
    assert is_hub_id("Qwen/Qwen1.5-110B") and is_hub_id("org_1/name.v2")
    for text in ("./model", "model", "a/b/c", "/abs/path", "org/..", "org--x/y", "org/name."):
        assert not is_hub_id(text), text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")  # an existing local path wins
    assert parse_size("40GB") == 40 * 10**9 and parse_size("500MiB") == 500 * 2**20
    assert parse_size("1.5T") == 15 * 10**11 and parse_size("123") == 123
    for bad in ("", "lots", "-5GB", "0", "5 XB"):
        with pytest.raises(SpectrumError, match="--max-disk"):
            parse_size(bad)


def test_headers_by_range_requests_match_local_fingerprint(hub, hf, llama_dir, monkeypatch):
    monkeypatch.setattr(hub_repo, "FIRST_READ", 64)  # force the second range request
    ckpt, repo = open_hub(REPO)
    assert ckpt.fingerprint() == open_local(llama_dir)[0].fingerprint()
    assert ckpt.name == REPO and ckpt.config.get("model_type") == "llama"
    assert not [f for f in hub.downloads() if f.endswith(".safetensors")]  # no weights moved
    ranges = [r.range for r in hub.log if r.filename and r.filename.endswith(".safetensors")]
    assert ranges and all(r and not r.endswith("-") for r in ranges)
    hub.honor_ranges = False  # a server that ignores Range: the header is still read right
    assert open_hub(REPO)[0].fingerprint() == open_local(llama_dir)[0].fingerprint()


def test_plan_first_then_one_shard_at_a_time(hub, hf, llama_dir, local):
    shards = shard_names(llama_dir)
    journal = Path("out") / JOURNAL
    seen = []  # at the start of each shard download: (shard, scanned shards, shard files on disk)

    def on_download(repo_id, filename):
        if filename.endswith(".safetensors"):
            done = {r["shard"] for r in finished(journal).values()}
            full = {
                s
                for s in done
                if all(k in finished(journal) for k, v in local.shard_of.items() if v == s)
            }
            seen.append((filename, full, len(shard_blobs(hf, hub, partial=True))))

    hub.on_download = on_download
    said = []
    with logged(lambda line: said.append((line, len(seen)))):
        report = scan_hub(REPO, opts(), delete_shards=True)

    said = [(line, n) for line, n in said if not line.startswith("downloaded ")]  # download log
    plan = [line for line, _ in said]
    assert [line.split(":")[0] for line in plan] == ["Hub", "Plan", "Downloads", "Estimate on cpu"]
    assert all(n == 0 for _, n in said)  # the whole plan came before any shard download
    assert f"{len(local.results)} matrices" in plan[1] and f"{len(shards)} shards" in plan[1]
    assert plan[2].startswith(f"Downloads: {len(shards)} shards")
    assert [s for s, _, _ in seen] == shards
    assert hub.max_active_downloads == 1
    for i, (_, full, on_disk) in enumerate(seen):
        assert set(shards[: max(0, i - 1)]) <= full  # shard i-2 was scanned before shard i came
        assert on_disk <= 2  # with --delete-shards: the shard being scanned, and this download
    assert shard_blobs(hf, hub, partial=True) == []  # every shard deleted once scanned
    snapshot = next((hf / "hub" / "models--tiny--llama" / "snapshots").iterdir())
    assert (snapshot / "model.safetensors.index.json").is_file()
    same_results(report.results, local.results)
    assert json.loads((Path("out") / RESULTS).read_text()).keys() == local.results.keys()


@pytest.mark.parametrize("method", ["exact", "gram"])
def test_estimate_is_calibrated_with_the_scans_own_method(hub, hf, llama_dir, monkeypatch, method):
    import spectrum_stream.hub_scan as hub_mod

    seen = []
    real = hub_mod.svd_rate
    monkeypatch.setattr(
        hub_mod, "svd_rate", lambda device, size, how: seen.append(how) or real(device, size, how)
    )
    said = []
    with logged(said.append):
        scan_hub(REPO, opts(method=method))
    assert seen == [method]
    assert any(line.startswith("Estimate on cpu: about ") for line in said)


def test_resume_fetches_only_shards_with_modules_left(hub, hf, llama_dir, local):
    shards = shard_names(llama_dir)
    scan_hub(REPO, opts(), delete_shards=True)
    journal = Path("out") / JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    keep = [lines[0]] + [ln for ln in lines[1:] if json.loads(ln)["shard"] in shards[:2]]
    journal.write_bytes(b"".join(keep))
    before = len(hub.downloads())
    said = []
    with logged(said.append):
        report = scan_hub(REPO, opts(), delete_shards=True)
    assert hub.downloads()[before:] == shards[2:]  # journaled shards are never fetched again
    assert f"{len(keep) - 1} modules already in the journal" in said[1]
    assert said[2].startswith("Downloads: 2 shards")
    assert report.skipped == len(keep) - 1
    same_results(report.results, local.results)


def test_killed_mid_download_then_resumed(hub, hf, llama_dir, local, tmp_path):
    shards = shard_names(llama_dir)
    hub.faults[shards[2]] = "stall"
    env = subprocess_env(hub, hf)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "spectrum_stream",
        "scan",
        REPO,
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--delete-shards",
        "--quiet",
    ]
    want = {k for k, s in local.shard_of.items() if s in shards[:2]}
    with open(tmp_path / "first.err", "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
        try:
            assert hub.stalled.wait(60), "the scan never reached the third shard"
            deadline = time.monotonic() + 30
            while not want <= set(finished(out / JOURNAL)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert want <= set(finished(out / JOURNAL))
            proc.kill()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert "Plan:" in (tmp_path / "first.err").read_text()
    hub.release.set()
    hub.faults.clear()
    before = len(hub.downloads())
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resumed from the journal" in done.stdout
    assert [line.split(":")[0] for line in done.stderr.splitlines()] == [
        "Hub",
        "Plan",
        "Downloads",
        "Estimate on cpu",
    ]
    assert hub.downloads()[before:] == shards[2:]
    same_results(json.loads((out / RESULTS).read_text()), local.results)


def test_connection_dropped_keeps_what_was_scanned(hub, hf, llama_dir, local, caplog):
    shards = shard_names(llama_dir)
    hub.faults[shards[2]] = "drop"
    result = cli(REPO, "--device", "cpu", "--out-dir", "out", "--quiet", "--delete-shards")
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    # huggingface_hub's own retry warnings are kept quiet: the one line says it all
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert shards[2] in line and "connection" in line and "resume" in line
    kept = json.loads((Path("out") / RESULTS).read_text())  # results written from the journal
    assert set(kept) == {k for k, s in local.shard_of.items() if s in shards[:2]}

    hub.faults.clear()
    before = len(hub.downloads())
    result = cli(REPO, "--device", "cpu", "--out-dir", "out", "--quiet", "--delete-shards")
    assert result.exit_code == 0, result.stderr
    assert hub.downloads()[before:] == shards[2:]
    same_results(json.loads((Path("out") / RESULTS).read_text()), local.results)


def test_missing_repo_is_one_line_from_the_command(hub, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "spectrum_stream", "scan", "nobody/nothing", "--device", "cpu"],
        env=subprocess_env(hub, tmp_path / "hf"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    line = only_line(done.stderr)
    assert "nobody/nothing: no such model repo" in line and "404" in line


def test_gated_repo_needs_a_token(hub, hf, monkeypatch):
    result = cli(GATED, "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    line = only_line(result.stderr)
    assert "401" in line and "token" in line and "access" in line
    result = cli(GATED, "--device", "cpu", "--quiet", "--token", "hf_wrong")
    assert result.exit_code == 1
    line = only_line(result.stderr)
    assert "403" in line and "token" in line and "access" in line
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli(GATED, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr


def test_revisions(hub, hf, local):
    result = cli(REPO, "--device", "cpu", "--quiet", "--revision", "nope")
    assert result.exit_code == 1
    assert "tiny/llama: no revision 'nope'" in only_line(result.stderr)
    commit = hub.repos[REPO].branches["main"]
    report = scan_hub(REPO, opts(), revision=commit)
    same_results(report.results, local.results)


def test_offline_mode(hub, hf, local, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    result = cli(REPO, "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    line = only_line(result.stderr)
    assert "HF_HUB_OFFLINE=1" in line and "not in the Hugging Face cache" in line

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    assert cli(REPO, "--device", "cpu", "--quiet").exit_code == 0  # fills the cache
    hub.stop()  # no server at all from here on
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    result = cli(REPO, "--device", "cpu", "--quiet", "--out-dir", "offline")
    assert result.exit_code == 0, result.stderr
    same_results(json.loads((Path("offline") / RESULTS).read_text()), local.results)


def test_max_disk(hub, hf, llama_dir, local):
    sizes = {s: (llama_dir / s).stat().st_size for s in shard_names(llama_dir)}
    result = cli(REPO, "--device", "cpu", "--quiet", "--max-disk", "1000")
    assert result.exit_code == 1
    assert "smaller than shard" in only_line(result.stderr)
    result = cli(REPO, "--device", "cpu", "--quiet", "--max-disk", "lots")
    assert result.exit_code == 1 and "--max-disk" in only_line(result.stderr)
    on_disk = []
    hub.on_download = lambda repo_id, name: (
        name.endswith(".safetensors") and on_disk.append(len(shard_blobs(hf, hub)))
    )
    result = cli(REPO, "--device", "cpu", "--quiet", "--max-disk", str(max(sizes.values())))
    assert result.exit_code == 0, result.stderr
    assert on_disk == [0] * len(sizes)  # no shard downloads while another sits on disk
    assert shard_blobs(hf, hub) == []
    same_results(json.loads((Path("model_snr_results") / RESULTS).read_text()), local.results)


def fp8_checkpoint(folder: Path) -> dict[str, int]:
    """DeepSeek-V3 style: F8_E4M3 weights in shards 1-2, their `_scale_inv` all in shard 3."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    shards = {f"model-0000{i}-of-00003.safetensors": {} for i in (1, 2, 3)}
    names = list(shards)
    for i, (shape, where) in enumerate([((96, 80), 0), ((80, 96), 0), ((64, 72), 1)]):
        w = torch.randn(shape) + 0.5 * torch.randn(shape[0], 1) @ torch.randn(1, shape[1])
        scale = w.abs().max() / 448.0
        name = f"model.layers.{i}.mlp.down_proj.weight"
        shards[names[where]][name] = (w / scale).to(torch.float8_e4m3fn)
        shards[names[2]][name + "_scale_inv"] = scale.reshape(1, 1).float()
    shards[names[1]]["model.embed_tokens.weight"] = torch.randn(40, 64).to(torch.bfloat16)
    folder.mkdir()
    weight_map = {}
    for fname, tensors in shards.items():
        save_file(tensors, str(folder / fname))
        weight_map.update({t: fname for t in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"}))
    return {fname: (folder / fname).stat().st_size for fname in names}


def test_fp8_scales_in_another_shard_within_max_disk(hub, hf, tmp_path):
    """Each FP8 weight needs its own shard and the scale shard on disk at once."""
    sizes = fp8_checkpoint(tmp_path / "fp8")
    names = sorted(sizes)
    want = scan(
        tmp_path / "fp8", ScanOptions(out_dir=tmp_path / "local", device="cpu", progress=False)
    ).results
    assert len(want) == 4
    hub.add_repo("tiny/fp8", tmp_path / "fp8")
    need = sizes[names[2]] + max(sizes[names[0]], sizes[names[1]])
    result = cli("tiny/fp8", "--device", "cpu", "--quiet", "--max-disk", str(need - 1))
    assert result.exit_code == 1
    assert "needs shards" in only_line(result.stderr) and "at once" in result.stderr

    held = []
    blobs = hf / "hub" / "models--tiny--fp8" / "blobs"
    etags = {hub.repos["tiny/fp8"].etags[n] for n in names}

    def on_download(repo_id, name):
        if name.endswith(".safetensors"):
            on_disk = [p for p in blobs.iterdir() if p.name in etags]
            held.append(sum(p.stat().st_size for p in on_disk) + sizes[name])

    hub.on_download = on_download
    said = []
    with logged(said.append):
        report = scan_hub("tiny/fp8", opts(), max_disk=need)
    assert sorted(hub.downloads("tiny/fp8")[-3:]) == names  # each shard fetched once
    assert 0 < max(held) <= need
    assert not [line for line in said if "over the budget" in line]
    assert not [p for p in blobs.iterdir() if p.name in etags]
    same_results(report.results, want)


def test_local_path_wins_and_hub_flags_need_a_repo(hub, hf, llama_dir):
    (Path("tiny")).mkdir()
    os.symlink(llama_dir, Path("tiny") / "llama")
    result = cli(REPO, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert hub.log == []
    result = cli(REPO, "--device", "cpu", "--quiet", "--revision", "main")
    assert result.exit_code == 1
    assert "only apply to a Hub repo id" in only_line(result.stderr)


def test_broken_shard_header_is_refused_before_downloading(hub, hf, llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    shard = shard_names(broken)[1]
    with open(broken / shard, "r+b") as f:
        f.truncate((broken / shard).stat().st_size - 10)
    hub.add_repo("tiny/broken", broken)
    result = cli("tiny/broken", "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    line = only_line(result.stderr)
    assert f"tiny/broken@main/{shard}" in line and "truncated" in line
    assert not [f for f in hub.downloads() if f.endswith(".safetensors")]


def test_single_file_repo_and_a_repo_without_weights(hub, hf, llama_dir, local, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    shard = shard_names(llama_dir)[0]
    shutil.copy(llama_dir / shard, single / "model.safetensors")
    shutil.copy(llama_dir / "config.json", single / "config.json")
    hub.add_repo("tiny/single", single)
    report = scan_hub("tiny/single", opts())
    assert set(report.results) == {k for k, s in local.shard_of.items() if s == shard}
    assert hub.downloads()[-1] == "model.safetensors"

    (single / "model.safetensors").unlink()
    hub.add_repo("tiny/empty", single)
    result = cli("tiny/empty", "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    assert "not a safetensors model" in only_line(result.stderr)


def test_prefetching_reader_stays_within_max_disk(hub, hf, llama_dir, local):
    """The runner may ask for the next shard from its read-ahead thread before releasing the
    current one: the download then waits for that release instead of going over the budget."""
    biggest = max((llama_dir / s).stat().st_size for s in shard_names(llama_dir))
    on_disk = []
    hub.on_download = lambda repo_id, name: (
        name.endswith(".safetensors") and on_disk.append(len(shard_blobs(hf, hub)))
    )
    said = []
    with logged(said.append):
        report = scan_hub(REPO, opts(prefetch=True), max_disk=biggest)
    assert not [line for line in said if "over the budget" in line]
    assert on_disk == [0] * len(on_disk) and len(on_disk) == len(shard_names(llama_dir))
    same_results(report.results, local.results)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "a\\b.safetensors", ""])
def test_hostile_index_is_refused_before_any_shard_request(hub, hf, llama_dir, tmp_path, shard):
    """The Hub source applies the local rule to index names before any header or download."""
    hostile = tmp_path / "hostile"
    shutil.copytree(llama_dir, hostile)
    index = hostile / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = shard
    index.write_text(json.dumps(doc))
    hub.add_repo("tiny/hostile", hostile)
    hub.reset()
    result = cli("tiny/hostile", "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    line = only_line(result.stderr)
    assert "model.safetensors.index.json" in line and "inside the checkpoint folder" in line
    asked = [r.filename for r in hub.log if r.filename]
    assert not [f for f in asked if f.endswith(".safetensors") or f == shard], asked


def test_json_bomb_config_from_the_hub_is_one_line(hub, hf, llama_dir, tmp_path):
    bomb = tmp_path / "bomb"
    shutil.copytree(llama_dir, bomb)
    (bomb / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    hub.add_repo("tiny/bomb", bomb)
    hub.reset()
    result = cli("tiny/bomb", "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    line = only_line(result.stderr)
    assert "config.json: not a model config" in line and "depth limit" in line
    assert not [r for r in hub.log if r.filename and r.filename.endswith(".safetensors")]
