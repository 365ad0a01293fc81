"""Quantized linear format, RTN, GPTQ (against a direct reference of the paper), AWQ, SmoothQuant."""

import math

import pytest
import torch
from torch import nn

from lmstack.compress import (CompressConfig, HessianAccumulator, QuantLinear, QuantSpec, compress_model,
                              gptq_quantize, load_compressed, pack_codes, rtn_quantize, save_compressed, unpack_codes)
from lmstack.compress.awq import awq_search, smoothquant_linear
from lmstack.compress.evaluate import kl_to_reference
from lmstack.compress.quant import group_params, quantize_codes
from lmstack.model import ModelConfig, Transformer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_roundtrip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (5, 37), generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, math.ceil(37 * bits / 8))
    assert torch.equal(unpack_codes(packed, bits, 37), codes.to(torch.int32))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [0, 32])
def test_rtn_error_within_half_step(bits, symmetric, group_size):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24, bias=True)
    spec = QuantSpec(bits, group_size, symmetric)
    q = QuantLinear.from_linear(lin, spec)
    w, dq = lin.weight.detach(), q.dense_weight()
    g = group_size or 64
    step = q.scales.float().repeat_interleave(g, dim=1)
    # half a step, except where rounding the zero point pushes a range end one code past the grid
    assert ((w - dq).abs() <= step / 2 + 1e-6).float().mean() > 0.99
    assert ((w - dq).abs() <= step + 1e-6).all()
    x = torch.randn(3, 64)
    assert torch.allclose(q(x), x @ dq.t() + lin.bias, atol=1e-5)
    # storage: codes + fp16 scales (+ uint8 zeros) + fp32 bias
    groups = 64 // g
    expected = 24 * math.ceil(64 * bits / 8) + 24 * groups * (2 + (0 if symmetric else 1)) + 24 * 4
    assert q.storage_bytes() == expected


def test_more_bits_less_error():
    torch.manual_seed(1)
    lin = nn.Linear(128, 64)
    errs = [(QuantLinear.from_linear(lin, QuantSpec(b, 32)).dense_weight() - lin.weight).pow(2).mean().item()
            for b in (2, 3, 4, 8)]
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_bad_group_size_message_and_fitting():
    with pytest.raises(ValueError, match="does not divide"):
        QuantLinear.from_linear(nn.Linear(48, 8), QuantSpec(4, 32))
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(5, 32)
    assert QuantSpec(4, 128).fitted(704).group_size == 64  # the llama-style preset's down_proj
    assert QuantSpec(4, 128).fitted(256).group_size == 128
    assert QuantSpec(4, 32).fitted(36).group_size == 0  # nothing >= 8 divides: per-channel


# ----------------------------------------------------------------------------- GPTQ oracle


def reference_gptq(weight, hessian, spec, percdamp=0.01, act_order=False):
    """GPTQ written directly from the paper (OBQ update with explicit inverse-Hessian downdates,
    no Cholesky, no lazy batches): quantize columns one at a time in order; after column q,
    W[:, rest] -= (w_q - quant(w_q)) / Hinv_qq * Hinv_{q, rest}, then remove q from Hinv by
    Gaussian elimination: Hinv -= Hinv_{:, q} Hinv_{q, :} / Hinv_qq."""
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(w.shape[1])
    w, h = w[:, perm], h[perm][:, perm]
    h += percdamp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    out, inp = w.shape
    g = spec.group_size or inp
    codes = torch.zeros(out, inp, dtype=torch.int64)
    for q in range(inp):
        if q % g == 0:
            scale, zero = group_params(w[:, q:q + g], spec)
        c = quantize_codes(w[:, q:q + 1], scale, zero, spec.max_code)[:, 0]
        codes[:, q] = c.long()
        err = (w[:, q] - (c - zero) * scale) / hinv[q, q]
        w[:, q:] -= err[:, None] * hinv[q, q:][None, :]
        hinv = hinv - hinv[:, q:q + 1] @ hinv[q:q + 1, :] / hinv[q, q]
    return codes


def _layer_and_hessian(seed=0, out=16, inp=64, n=256):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g, dtype=torch.float64)
    # correlated inputs with uneven channel scales, as in real activations
    mix = torch.randn(inp, inp, generator=g, dtype=torch.float64) * 0.3 + torch.eye(inp, dtype=torch.float64)
    x = torch.randn(n, inp, generator=g, dtype=torch.float64) @ mix * torch.linspace(0.2, 3, inp, dtype=torch.float64)
    acc = HessianAccumulator(inp)
    for chunk in x.split(64):
        acc.add(chunk)
    return w, acc.hessian, x


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [0, 16])
def test_gptq_equals_direct_reference(act_order, group_size):
    w, h, _ = _layer_and_hessian()
    spec = QuantSpec(3, group_size, symmetric=False)
    codes, scales, zeros, perm = gptq_quantize(w, h, spec, block_size=32, act_order=act_order)
    ref = reference_gptq(w, h, spec, act_order=act_order)
    assert (perm is not None) == act_order
    assert torch.equal(codes.long(), ref)


def test_hessian_accumulator_is_mean_of_2xxT():
    _, h, x = _layer_and_hessian(n=200)
    assert torch.allclose(h, 2 * x.t() @ x / 200, rtol=1e-10)


def test_gptq_beats_rtn_on_layer_output():
    w, h, x = _layer_and_hessian(seed=3, n=512)
    w, x = w.float(), x.float()
    spec = QuantSpec(3, 16)
    rtn = QuantLinear.from_linear(_linear(w), spec)
    codes, scales, zeros, perm = gptq_quantize(w, h, spec, act_order=True)
    gq = QuantLinear.from_codes(codes, scales, zeros, spec, perm=perm)
    err_rtn = (x @ (rtn.dense_weight() - w).t()).pow(2).mean()
    err_gptq = (x @ (gq.dense_weight() - w).t()).pow(2).mean()
    assert err_gptq < 0.7 * err_rtn


def _linear(w):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


# ----------------------------------------------------------------------------- AWQ / SmoothQuant


def test_awq_never_worse_than_rtn_on_calibration():
    torch.manual_seed(4)
    x = torch.randn(256, 64) * torch.cat([torch.full((4,), 20.0), torch.ones(60)])  # outlier channels
    w = torch.randn(32, 64)
    spec = QuantSpec(3, 32)
    s, alpha, err = awq_search(w, x, x.abs().mean(0), spec)
    codes, scales, zeros = rtn_quantize(w, spec)
    rtn_w = QuantLinear.from_codes(codes, scales, zeros, spec).dense_weight()
    ref = x @ w.t()
    rtn_err = float((x @ rtn_w.t() - ref).pow(2).mean() / ref.pow(2).mean())
    assert err <= rtn_err + 1e-9
    assert alpha > 0 and err < 0.9 * rtn_err  # outliers: scaling pays off


def test_smoothquant_w8a8_close_and_moves_outliers():
    torch.manual_seed(5)
    lin = nn.Linear(64, 32)
    x = torch.randn(16, 64) * torch.cat([torch.full((2,), 30.0), torch.ones(62)])
    q, info = smoothquant_linear(lin, x.abs().amax(0), alpha=0.5)
    assert q.act_bits == 8 and q.spec.bits == 8
    ref = lin(x)
    rel = (q(x) - ref).pow(2).mean() / ref.pow(2).mean()
    assert rel < 1e-3
    assert info["max_scale"] > 1.0  # outlier channels were divided down


# ----------------------------------------------------------------------------- whole model


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("llama-style", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=32)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "smoothquant", "nf4"])
def test_compress_model_save_load_roundtrip(tmp_path, method):
    model = _tiny_model()
    calib = torch.randint(0, 97, (8, 32), generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    cfg = CompressConfig(quantize=method, bits=4, group_size=32, act_order=(method == "gptq"), calib_samples=8)
    compress_model(model, cfg, calib=calib, log=lambda s: None)
    n_quant = sum(getattr(m, "is_quantized_linear", False) for m in model.modules())
    assert n_quant == 2 * 7
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.equal(before, after)
    kl = kl_to_reference(after, before)
    assert kl < 0.05
    save_compressed(model, tmp_path / "q")
    loaded = load_compressed(tmp_path / "q")
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, after, atol=1e-5)
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    dense = sum(p.numel() for p in _tiny_model().parameters()) * 4
    assert size < dense


def test_calibrated_method_needs_calibration():
    with pytest.raises(ValueError, match="calibration"):
        compress_model(_tiny_model(), CompressConfig(quantize="gptq", group_size=32))
    with pytest.raises(ValueError, match="quantize"):
        CompressConfig(quantize="int3")


def test_awq_clip_search_reduces_output_error_with_weight_outliers():
    from lmstack.compress.awq import clip_search
    torch.manual_seed(6)
    w = torch.randn(32, 64)
    w[torch.rand(32, 64) < 0.02] *= 8  # a few outlier weights stretch their groups' ranges
    x = torch.randn(256, 64)
    spec = QuantSpec(3, 32)
    ratios = clip_search(w, x, spec)
    assert ratios.shape == (32, 2) and (ratios <= 1).all() and (ratios >= 0.5).all() and (ratios < 1).any()

    def out_err(clip):
        codes, scales, zeros = rtn_quantize(w, spec, clip)
        dq = QuantLinear.from_codes(codes, scales, zeros, spec).dense_weight()
        return float((x @ (dq - w).t()).pow(2).mean())

    assert out_err(ratios) < out_err(None)


def test_default_group_128_on_the_llama_preset_shapes():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=64, n_layers=1, max_seq_len=16)).eval()
    details = compress_model(model, CompressConfig(quantize="rtn"), log=lambda s: None)
    assert model.layers[0].ffn.down_proj.spec.group_size == 64 and details["layers.0.ffn.down_proj"]["group_size"] == 64
    assert model.layers[0].attn.q_proj.spec.group_size == 128
