"""Shared fixtures: tiny checkpoints in real layouts, written by `transformers`, several shards each."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import spectrum_stream

sys.path.insert(0, str(Path(__file__).parent))
from moe_models import (  # noqa: F401  (session fixtures shared by every test module)
    dbrx_dir,
    fused_mixtral_dir,
    fused_qwen2_moe_dir,
    gpt_oss_dir,
    llama4_dir,
    mixtral_dir,
    qwen2_moe_dir,
)

# subprocesses (some run from a temp folder) import this checkout's package, not an installed one
_SRC = str(Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SRC]
    + [
        str(Path(x).resolve())
        for x in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if x and str(Path(x).resolve()) != _SRC
    ]
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# the trainer-name rules cache (layout/rules_cache.py) of this run, not the user's
os.environ["SPECTRUM_STREAM_CACHE"] = tempfile.mkdtemp(prefix="spectrum-stream-cache-")
# Scan subprocesses (`python -m spectrum_stream`, some with another cwd) run the package under
# test, not whatever a relative PYTHONPATH=src or an editable install elsewhere would find.
_SRC = str(Path(spectrum_stream.__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SRC, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _SRC)]
)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state, whatever ran before it: a test that
    draws from torch, numpy or random without its own generator still reproduces."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def _save(model, folder: Path, shard: str = "40KB") -> Path:
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A 3-layer Llama (untied head) in bfloat16, several shards with an index."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return _save(model, tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 with tied embeddings (so no lm_head on disk), float32, several shards."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(2)
    cfg = Qwen2Config(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return _save(Qwen2ForCausalLM(cfg), tmp_path_factory.mktemp("qwen2") / "tiny-qwen2")


@pytest.fixture
def svd_batch_sizes(monkeypatch) -> list[int]:
    """Records the batch size of every exact svdvals call the scan makes."""
    from spectrum_stream.kernel import snr as spectrum

    sizes: list[int] = []
    real = spectrum.singular_values

    def counting(batch):
        sizes.append(batch.shape[0])
        return real(batch)

    monkeypatch.setattr(spectrum, "singular_values", counting)
    return sizes


PLANTED = dict(layers=6, hidden=192, intermediate=384, vocab=384)  # 44 matrices, bfloat16


@pytest.fixture(scope="session")
def planted_dir(request, tmp_path_factory) -> Path:
    """The planted-signal Llama (examples/synthetic.py, seed 0) every test shares: 6 layers of
    known ranks, 44 matrices (enough for a kill to land mid-scan), results named "planted".

    3 shards by default; a test needing another count says so with
    `@pytest.mark.parametrize("planted_dir", [1], indirect=True)` (written once per count).
    Tests only read it: copy it before changing anything.
    """
    from spectrum_stream.examples.synthetic import write_planted_llama

    shards = getattr(request, "param", 3)
    folder = tmp_path_factory.mktemp(f"planted-{shards}-shards") / "planted"
    write_planted_llama(folder, shards=shards, **PLANTED)
    return folder


@pytest.fixture
def scan_with():
    """scan(path, opts) with some of the loop's steps replaced (scanloop/steps.py): a test wraps
    decode, decompose_each, streamed_gram or bind_thread by passing its own, no module patched."""
    import dataclasses

    from spectrum_stream.driver import scan_checkpoint
    from spectrum_stream.scanloop import STEPS
    from spectrum_stream.source.checkpoint import open_local
    from spectrum_stream.source.shards import LocalSource

    def run(path, opts, **steps):
        ckpt, folder = open_local(path)
        return scan_checkpoint(ckpt, LocalSource(folder), opts, dataclasses.replace(STEPS, **steps))

    return run
