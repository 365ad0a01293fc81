"""Int8 weight-only decoding: the fast decode step runs int8 QuantLinears through the int8 kernel,
computes what the quantized model computes, and stays within KL 0.01 of the fp32 model."""

import copy

import pytest
import torch

from lmstack.compress import CompressConfig, compress_model
from lmstack.compress.evaluate import kl_to_reference
from lmstack.compress.int8 import Int8DecodeWeight, int8_decodable, int8_weight_only
from lmstack.generate.fast import fast_decoder
from lmstack.model import ModelConfig, Transformer


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("llama-style", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("mode", ["weight_only", "dynamic", "qlinear", "dense"])
def test_int8_weight_matches_dequantized_matmul(mode):
    model = int8_weight_only(_model())
    a = model.layers[0].attn
    assert int8_decodable(a.q_proj)
    w = Int8DecodeWeight([a.q_proj, a.k_proj, a.v_proj], mode=mode)
    if w.mode != mode:
        pytest.skip(f"kernel {mode} not available in this torch build")
    assert w.weight.dtype == torch.int8 and w.weight.shape == (64 + 32 + 32, 64)
    x = torch.randn(3, 64)
    dense = torch.cat([a.q_proj.dense_weight(), a.k_proj.dense_weight(), a.v_proj.dense_weight()])
    ref = x @ dense.t()
    if mode in ("weight_only", "dense"):
        assert torch.allclose(w(x), ref, atol=1e-5)
    elif mode == "qlinear":  # activations rounded to 7 or 8 bits, one asymmetric scale for the whole tensor
        assert (w(x) - ref).norm() / ref.norm() < 0.03
    else:  # activations rounded to int8 per row: relative error around 1/127 of the row's range
        assert w.mode == "dynamic"
        x_int = torch.round(x / (x.abs().amax(-1, keepdim=True) / 127)) * (x.abs().amax(-1, keepdim=True) / 127)
        assert torch.allclose(w(x), x_int @ dense.t(), atol=1e-4)  # exact integer GEMM, then rescaled
        assert (w(x) - ref).norm() / ref.norm() < 0.02


def test_decode_kinds():
    from lmstack.compress.int8 import decode_kind
    model = _model()
    compress_model(model, CompressConfig(quantize="rtn", bits=4, group_size=32), log=lambda s: None)
    assert not int8_decodable(model.layers[0].attn.q_proj)
    assert decode_kind(model.layers[0].attn.q_proj) == "dense"
    assert decode_kind(int8_weight_only(_model()).layers[0].attn.q_proj) == "int8"
    sq = _model()
    calib = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    compress_model(sq, CompressConfig(quantize="smoothquant"), calib=calib, log=lambda s: None)
    assert decode_kind(sq.layers[0].attn.q_proj) is None and fast_decoder(sq) is None  # W8A8 keeps model.forward


@torch.no_grad()
@pytest.mark.parametrize("method", ["rtn", "awq", "gptq", "nf4"])
def test_fast_decode_of_4bit_models_equals_their_forward(method):
    model = _model()
    calib = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(0))
    compress_model(model, CompressConfig(quantize=method, bits=4, group_size=32, act_order=True), calib=calib,
                   log=lambda s: None)
    dec = fast_decoder(model)
    assert dec is not None
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    cache_a, cache_b = model.new_kv_cache(1, 16), model.new_kv_cache(1, 16)
    model(ids[:, :6], kv_cache=cache_a)
    model(ids[:, :6], kv_cache=cache_b)
    for t in range(6, 12):
        fast = dec.step(ids[:, t:t + 1], cache_a)
        ref = model(ids[:, t:t + 1], kv_cache=cache_b).logits[:, -1]
        assert (fast - ref).abs().max() < 1e-4


def test_auto_mode_times_the_kernels_once_per_shape(monkeypatch):
    import lmstack.compress.int8 as int8_module
    model = int8_weight_only(_model())
    monkeypatch.setattr(int8_module, "_CHOICES", {})
    down = model.layers[0].ffn.down_proj
    w = Int8DecodeWeight([down], mode="auto")
    assert w.mode in int8_module.KERNELS
    key = (down.out_features, down.in_features, torch.get_num_threads(), "cpu")
    assert int8_module.kernel_choices() == {key: w.mode}
    # the same shape again (the next layer) reuses the choice without timing anything
    monkeypatch.setattr(int8_module, "_fastest", lambda *a, **k: pytest.fail("timed twice"))
    assert Int8DecodeWeight([model.layers[1].ffn.down_proj], mode="auto").mode == w.mode
    x = torch.randn(2, down.in_features)
    ref = x @ down.dense_weight().t()
    assert (w(x) - ref).norm() / ref.norm() < 0.03
    with pytest.raises(ValueError, match="MODE must be one of"):
        Int8DecodeWeight([down], mode="fast")


def test_only_the_used_kernel_is_built(monkeypatch):
    import lmstack.compress.int8 as int8_module
    down = int8_weight_only(_model()).layers[0].ffn.down_proj
    dense_builds = []

    def dense(w):
        dense_builds.append(w.shape)
        return lambda x: x @ w.t()

    w = Int8DecodeWeight([down], mode="weight_only", dense=dense)
    assert dense_builds == [] and w._packed is None and w._dense is None
    # a cached auto choice builds the chosen kernel only, not the dense copy and packed weight of the others
    monkeypatch.setattr(int8_module, "_CHOICES", {})
    key = (down.out_features, down.in_features, torch.get_num_threads(), "cpu")
    int8_module._CHOICES[key] = "dense"
    w = Int8DecodeWeight([down], mode="auto", dense=dense)
    assert w.mode == "dense" and len(dense_builds) == 1 and w._packed is None
    x = torch.randn(1, down.in_features)
    assert torch.allclose(w(x), x @ down.dense_weight().t(), atol=1e-4)


def test_auto_mode_picks_the_fastest_kernel():
    from lmstack.compress.int8 import _fastest
    import time as time_module
    slow = lambda x: time_module.sleep(2e-4) or x  # noqa: E731
    fast = lambda x: x  # noqa: E731
    assert _fastest({"slow": slow, "fast": fast}, 8, "cpu", rounds=2) == "fast"
    assert _fastest({"fast": fast, "slow": slow}, 8, "cpu", rounds=2) == "fast"


@torch.no_grad()
@pytest.mark.parametrize("mode", ["weight_only", "dynamic", "qlinear", "dense", "auto"])
def test_fast_int8_decode_matches_forward_and_is_close_to_fp32(mode, monkeypatch):
    import lmstack.compress.int8 as int8_module
    monkeypatch.setattr(int8_module, "MODE", mode)
    fp32 = _model()
    int8 = int8_weight_only(copy.deepcopy(fp32))
    dec = fast_decoder(int8)
    assert dec is not None
    ids = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(0))
    # prefill through forward, then decode token by token with both paths on separate caches
    cache_fast, cache_ref = int8.new_kv_cache(1, 64), int8.new_kv_cache(1, 64)
    int8(ids[:, :8], kv_cache=cache_fast)
    int8(ids[:, :8], kv_cache=cache_ref)
    fast_logits, ref_logits = [], []
    for t in range(8, 24):
        fast_logits.append(dec.step(ids[:, t:t + 1], cache_fast))
        ref_logits.append(int8(ids[:, t:t + 1], kv_cache=cache_ref).logits[:, -1])
    fast_logits, ref_logits = torch.cat(fast_logits), torch.cat(ref_logits)
    if dec._layers[0][1].mode in ("weight_only", "dense"):
        assert (fast_logits - ref_logits).abs().max() < 1e-4
    else:
        assert kl_to_reference(fast_logits, ref_logits) < 1e-3
    fp32_logits = fp32(ids).logits[0, 8:24]
    kl = kl_to_reference(fast_logits, fp32_logits)
    assert 0 < kl < 0.01


@torch.no_grad()
def test_decoder_follows_changed_weights():
    model = int8_weight_only(_model())
    ids = torch.tensor([[3, 5, 7]])

    def fast_vs_forward():
        cache_a, cache_b = model.new_kv_cache(1, 8), model.new_kv_cache(1, 8)
        model(ids[:, :2], kv_cache=cache_a)
        model(ids[:, :2], kv_cache=cache_b)
        return fast_decoder(model).step(ids[:, 2:], cache_a), model(ids[:, 2:], kv_cache=cache_b).logits[:, -1]


    before, _ = fast_vs_forward()
    model.layers[0].attn.q_proj.qweight.add_(1)  # in place: the decode copy must notice
    after, reference = fast_vs_forward()
    assert not torch.allclose(before, after)
    assert kl_to_reference(after, reference) < 1e-3


def test_decode_kl_helper():
    from lmstack.compress.measure import decode_kl
    fp32 = _model()
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(2))
    kl = decode_kl(fp32, int8_weight_only(copy.deepcopy(fp32)), ids)
    assert 0 < kl < 0.01


def test_int8_gemm_thread_switch_restores_the_setting():
    model = int8_weight_only(_model())
    w = Int8DecodeWeight([model.layers[0].ffn.down_proj], mode="dynamic")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(1, model.layers[0].ffn.down_proj.in_features)
        y = w(x)
        assert torch.get_num_threads() == 2
        assert torch.allclose(y, Int8DecodeWeight([model.layers[0].ffn.down_proj], mode="dynamic")(x))
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["qlinear", "dynamic"])
def test_batched_int8_decode_stays_close_to_forward(mode, monkeypatch):
    # qlinear rounds the activations with one scale for all rows: a batch of two must still decode closely
    import lmstack.compress.int8 as int8_module
    monkeypatch.setattr(int8_module, "MODE", mode)
    model = int8_weight_only(_model())
    dec = fast_decoder(model)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    cache_fast, cache_ref = model.new_kv_cache(2, 32), model.new_kv_cache(2, 32)
    model(ids[:, :8], kv_cache=cache_fast)
    model(ids[:, :8], kv_cache=cache_ref)
    fast = torch.cat([dec.step(ids[:, t:t + 1], cache_fast) for t in range(8, 16)])
    ref = torch.cat([model(ids[:, t:t + 1], kv_cache=cache_ref).logits[:, -1] for t in range(8, 16)])
    assert kl_to_reference(fast, ref) < 1e-3
