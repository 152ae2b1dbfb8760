"""Quantized expert weights: FP8 with 128x128 block scales (DeepSeek-V3) and MXFP4 (gpt-oss).

Known matrices are quantized here, written as checkpoints, and the scanner's dequantization must
equal a float64 reimplementation of docs/spec.md's rule ("Quantized weights") exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from moe_models import write_sharded
from reference import reference_snr

from spectrum_stream import SpectrumError, scan
from spectrum_stream.errors import ModuleFailed
from spectrum_stream.layout.jobs import plan_jobs
from spectrum_stream.read import loader as loader_mod
from spectrum_stream.read.quant import dequant_fp8_block, dequant_mxfp4
from spectrum_stream.source.checkpoint import open_local

FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


# --- FP8 E4M3 with 128x128 block scales ------------------------------------------------------------


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[.., M, N] float -> (F8_E4M3 weight, float32 scale_inv per 128x128 block)."""
    m, n = w.shape[-2:]
    mb, nb = -(-m // 128), -(-n // 128)
    scale = torch.empty(*w.shape[:-2], mb, nb)
    q = torch.empty(w.shape, dtype=torch.float8_e4m3fn)
    for i in range(mb):
        for j in range(nb):
            block = w[..., i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128]
            s = block.abs().amax(dim=(-2, -1)).clamp_min(1e-12) / 448.0
            scale[..., i, j] = s
            q[..., i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128] = (
                block / s[..., None, None]
            ).to(torch.float8_e4m3fn)
    return q, scale


def dequant_fp8_reference(q: torch.Tensor, scale_inv: torch.Tensor) -> np.ndarray:
    """float64: W[i, j] = float(Wq[i, j]) * scale_inv[i // 128, j // 128]."""
    wq = q.to(torch.float64).numpy()
    s = scale_inv.to(torch.float64).numpy()
    m, n = wq.shape[-2:]
    rows, cols = np.arange(m) // 128, np.arange(n) // 128
    return wq * s[..., rows, :][..., :, cols]


@pytest.mark.parametrize("shape", [(200, 300), (256, 384), (3, 130, 260), (128, 7)])
def test_fp8_block_dequantization_is_exact(shape):
    torch.manual_seed(sum(shape))
    w = torch.randn(shape) * torch.logspace(-2, 1, shape[-1])
    q, s = quantize_fp8(w)
    got = dequant_fp8_block(q, s)
    ref = dequant_fp8_reference(q, s)
    assert got.dtype == torch.float32 and got.shape == w.shape
    # the float64 product is exact; float32's is that, correctly rounded
    assert torch.equal(got, torch.from_numpy(ref).to(torch.float32))
    assert (got - w).norm() <= 0.05 * w.norm(), "quantization round trip stays close"


def test_fp8_scale_of_the_wrong_shape_is_a_clear_error():
    q, s = quantize_fp8(torch.randn(200, 300))
    with pytest.raises(ModuleFailed, match=r"needs a _scale_inv of shape \[2, 3\]"):
        dequant_fp8_block(q, s[:, :2], "w")


def _deepseek_like(folder, torch_seed=7):
    """A DeepSeek-V3-style FP8 checkpoint: experts, shared experts and attention in F8_E4M3 with
    `weight_scale_inv` siblings (all in the last shard); router, norms, embeddings in BF16/F32.
    Also one transformers-fused FP8 expert tensor with a 3-D scale."""
    torch.manual_seed(torch_seed)
    hidden, inter, experts = 160, 136, 3
    tensors, dense = {}, {}

    def fp8(name, shape):
        w = torch.randn(shape) + 0.3 * torch.randn(shape[0], 1) @ torch.randn(1, shape[1])
        q, s = quantize_fp8(w)
        tensors[name], tensors[name + "_scale_inv"] = q, s
        dense[name.removesuffix(".weight")] = torch.from_numpy(dequant_fp8_reference(q, s))

    tensors["model.embed_tokens.weight"] = torch.randn(64, hidden).to(torch.bfloat16)
    dense["model.embed_tokens"] = tensors["model.embed_tokens.weight"].double()
    p = "model.layers.0"
    fp8(f"{p}.self_attn.q_b_proj.weight", (192, hidden))
    for e in range(experts):
        fp8(f"{p}.mlp.experts.{e}.gate_proj.weight", (inter, hidden))
        fp8(f"{p}.mlp.experts.{e}.up_proj.weight", (inter, hidden))
        fp8(f"{p}.mlp.experts.{e}.down_proj.weight", (hidden, inter))
    fp8(f"{p}.mlp.shared_experts.down_proj.weight", (hidden, inter))
    tensors[f"{p}.mlp.gate.weight"] = torch.randn(experts, hidden).to(torch.bfloat16)
    dense[f"{p}.mlp.gate"] = tensors[f"{p}.mlp.gate.weight"].double()
    tensors[f"{p}.input_layernorm.weight"] = torch.ones(hidden)
    # transformers' fused form in FP8: [E, 2I, H] with a [E, ceil(2I/128), ceil(H/128)] scale
    fused = torch.randn(experts, 2 * inter, hidden)
    q, s = quantize_fp8(fused)
    name = "model.layers.1.mlp.experts.gate_up_proj"
    tensors[name], tensors[name + "_scale_inv"] = q, s
    deq = torch.from_numpy(dequant_fp8_reference(q, s))
    for e in range(experts):
        dense[f"{name}(?#gate)$[{e}]"], dense[f"{name}(?#up)$[{e}]"] = (
            deq[e, :inter],
            deq[e, inter:],
        )
    config = {"model_type": "deepseek_v3", "hidden_size": hidden}
    write_sharded(folder, tensors, config, shards=3, last=("_scale_inv",))
    return dense


def test_fp8_checkpoint_scales_in_another_shard(tmp_path):
    dense = _deepseek_like(tmp_path / "ds")
    ckpt, _ = open_local(tmp_path / "ds")
    jobs = plan_jobs(ckpt)
    fp8_jobs = [j for j in jobs if j.decode == "fp8_block"]
    assert len(fp8_jobs) == 1 + 3 * 3 + 1 + 1
    assert all(len(j.shards) == 2 for j in fp8_jobs), "weight and its scale sit in different shards"
    assert all(j.aux[0].name == j.main.name + "_scale_inv" for j in fp8_jobs)

    report = scan(tmp_path / "ds", out_dir=tmp_path / "out", progress=False, names="checkpoint")
    assert not report.failed
    results = json.loads(report.paths.results.read_text())
    assert not any("scale_inv" in k for k in results), "scale tensors are not scanned"
    assert set(results) == set(dense)
    for key, w in dense.items():
        ref = reference_snr(w.numpy())
        assert abs(results[key]["snr"] - ref) <= 1e-4 * abs(ref), key


def test_fp8_scale_shape_that_does_not_fit_is_a_clear_error(tmp_path):
    q, s = quantize_fp8(torch.randn(200, 300))
    folder = write_sharded(
        tmp_path / "bad", {"w.weight": q, "w.weight_scale_inv": s[:1]}, {}, shards=1
    )
    with pytest.raises(
        SpectrumError, match=r"'w\.weight'.*must be a float tensor of shape \[2, 3\]"
    ):
        scan(folder, out_dir=tmp_path / "out", progress=False)


def test_a_dtype_this_torch_cannot_hold_is_a_clear_failure(tmp_path, monkeypatch):
    _deepseek_like(tmp_path / "ds")
    real = loader_mod.torch_dtype
    monkeypatch.setattr(loader_mod, "torch_dtype", lambda d: None if d == "F8_E4M3" else real(d))
    report = scan(tmp_path / "ds", out_dir=tmp_path / "out", progress=False)
    assert report.failed and all(
        "F8_E4M3" in why and "cannot hold" in why for _, why in report.failed
    )
    assert set(report.results) == {"model.embed_tokens", "model.layers.0.mlp.gate"}


# --- MXFP4 (gpt-oss) ---------------------------------------------------------------------------


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[.., R, C] float (C a multiple of 32) -> (U8 blocks [.., R, C/32, 16], U8 scales [.., R, C/32])."""
    *lead, r, c = w.shape
    groups = w.double().reshape(*lead, r, c // 32, 32)
    amax = groups.abs().amax(-1).clamp_min(1e-30)
    exp = torch.ceil(torch.log2(amax / 6.0))  # 6 * 2^exp >= amax
    scales = (exp + 127).clamp(0, 254)
    scaled = groups / torch.pow(2.0, scales - 127)[..., None]
    table = torch.tensor(FP4, dtype=torch.float64)
    codes = (scaled[..., None] - table).abs().argmin(-1)  # nearest code
    low, high = codes[..., 0::2], codes[..., 1::2]  # value 2k is the low nibble of byte k
    blocks = (low | (high << 4)).to(torch.uint8)
    return blocks, scales.to(torch.uint8)


def dequant_mxfp4_reference(blocks: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """float64, one byte at a time: low nibble then high nibble, times 2^(scale - 127)."""
    b = blocks.numpy().astype(np.int64)
    s = scales.numpy().astype(np.float64)
    values = np.empty((*b.shape[:-1], 32))
    table = np.array(FP4)
    values[..., 0::2] = table[b & 0x0F]
    values[..., 1::2] = table[b >> 4]
    values *= np.power(2.0, s - 127)[..., None]
    return values.reshape(*b.shape[:-2], b.shape[-2] * 32)


def test_mxfp4_dequantization_is_exact():
    torch.manual_seed(3)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8)
    scales = torch.randint(0, 255, (3, 5, 4), dtype=torch.uint8)  # every exponent but the NaN one
    scales[0, 0, :] = torch.tensor([0, 1, 253, 254], dtype=torch.uint8)
    got = dequant_mxfp4(blocks, scales)
    ref = dequant_mxfp4_reference(blocks, scales)
    assert got.shape == (3, 5, 128) and got.dtype == torch.float32
    # exact, including subnormal results and the ones too big for float32 (inf in both)
    assert torch.equal(got, torch.from_numpy(ref).to(torch.float32))
    # F8_E8M0 scales are the same bytes
    assert torch.equal(dequant_mxfp4(blocks, scales.view(torch.float8_e8m0fnu)), got)


def test_mxfp4_round_trip_of_a_known_matrix():
    torch.manual_seed(4)
    w = torch.randn(2, 6, 96) * 0.02
    blocks, scales = quantize_mxfp4(w)
    got = dequant_mxfp4(blocks, scales)
    assert torch.equal(got, torch.from_numpy(dequant_mxfp4_reference(blocks, scales)).float())
    assert (got - w).abs().max() <= w.abs().max() / 4, "nearest-code rounding stays close"


def test_mxfp4_shapes_that_do_not_fit_are_a_clear_error():
    blocks = torch.zeros(2, 3, 4, 16, dtype=torch.uint8)
    with pytest.raises(ModuleFailed, match="MXFP4"):
        dequant_mxfp4(blocks, torch.zeros(2, 3, 5, dtype=torch.uint8))


def _gpt_oss_like(folder, hidden=96, inter=64, experts=3, layers=2):
    """gpt-oss layout: MXFP4 expert blocks/scales, BF16 router, attention and expert biases."""
    torch.manual_seed(9)
    tensors, dense = {}, {}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj, rows, cols in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
            w = torch.randn(experts, rows, cols) * 0.05
            w += 0.05 * torch.randn(experts, rows, 1) @ torch.randn(experts, 1, cols)
            blocks, scales = quantize_mxfp4(w)
            tensors[f"{p}.mlp.experts.{proj}_blocks"] = blocks
            tensors[f"{p}.mlp.experts.{proj}_scales"] = scales
            tensors[f"{p}.mlp.experts.{proj}_bias"] = torch.randn(experts, rows).to(torch.bfloat16)
            deq = torch.from_numpy(dequant_mxfp4_reference(blocks, scales))  # [E, rows, cols]
            name = f"{p}.mlp.experts.{proj}"
            for e in range(experts):
                if proj == "gate_up_proj":  # rows interleave gate (even) and up (odd)
                    dense[f"{name}(?#gate)$[{e}]"] = deq[e, 0::2]
                    dense[f"{name}(?#up)$[{e}]"] = deq[e, 1::2]
                else:
                    dense[f"{name}$[{e}]"] = deq[e]
        tensors[f"{p}.mlp.router.weight"] = torch.randn(experts, hidden).to(torch.bfloat16)
        tensors[f"{p}.mlp.router.bias"] = torch.randn(experts).to(torch.bfloat16)
        tensors[f"{p}.self_attn.sinks"] = torch.randn(4)
        dense[f"{p}.mlp.router"] = tensors[f"{p}.mlp.router.weight"].double()
    config = {"model_type": "gpt_oss", "hidden_size": hidden}
    write_sharded(folder, tensors, config, shards=3, last=("_scales",))
    return dense


def test_mxfp4_checkpoint_every_expert_matches_reference(tmp_path):
    dense = _gpt_oss_like(tmp_path / "oss")
    report = scan(tmp_path / "oss", out_dir=tmp_path / "out", progress=False)
    assert not report.failed
    results = json.loads(report.paths.results.read_text())
    assert set(results) == set(dense), "no _scales, _bias or sinks results; every expert present"
    for key, w in dense.items():
        ref = reference_snr(w.numpy())
        assert abs(results[key]["snr"] - ref) <= 1e-4 * abs(ref), key


def test_mxfp4_blocks_without_scales_are_a_clear_error(tmp_path):
    blocks, _ = quantize_mxfp4(torch.randn(2, 4, 64))
    folder = write_sharded(tmp_path / "bad", {"m.experts.down_proj_blocks": blocks}, {}, shards=1)
    with pytest.raises(SpectrumError, match="without their scales"):
        scan(folder, out_dir=tmp_path / "out", progress=False)
