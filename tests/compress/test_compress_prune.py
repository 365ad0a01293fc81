"""Pruning masks have exactly the requested sparsity / N:M pattern; calibrated pruning beats magnitude."""

import pytest
import torch

from lmstack.compress import (CompressConfig, HessianAccumulator, compress_model, magnitude_score, make_mask,
                              parse_n_m, sparsegpt_prune, wanda_score)
from lmstack.model import ModelConfig, Transformer


def _layer(seed=0, out=32, inp=128, n=512):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    x = torch.randn(n, inp, generator=g) * torch.exp(torch.randn(inp, generator=g))  # uneven channel norms
    acc = HessianAccumulator(inp)
    acc.add(x)
    return w, x, acc


def _assert_pattern(keep, sparsity=None, n_m=None, per_row=True):
    out, inp = keep.shape
    if n_m is not None:
        n, m = n_m
        per_group = keep.reshape(out, inp // m, m).sum(-1)
        assert (per_group == n).all()
    else:
        if per_row:
            assert (keep.sum(1) == inp - round(sparsity * inp)).all()  # every row, hence the whole matrix
        assert abs(1 - keep.float().mean().item() - sparsity) < 1e-9


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("kind", ["magnitude", "wanda"])
def test_unstructured_masks_exact(kind, sparsity):
    w, _, acc = _layer()
    score = magnitude_score(w) if kind == "magnitude" else wanda_score(w, acc.channel_sq_norm())
    keep = make_mask(score, sparsity, None)
    _assert_pattern(keep, sparsity)
    # the dropped weights are the lowest-scoring ones of their row
    assert (score.masked_fill(~keep, float("inf")).amin(1) >= score.masked_fill(keep, -float("inf")).amax(1)).all()


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("kind", ["magnitude", "wanda", "sparsegpt"])
def test_n_m_masks_exact(kind, pattern):
    w, _, acc = _layer(seed=1)
    n_m = parse_n_m(pattern)
    if kind == "sparsegpt":
        new_w, keep = sparsegpt_prune(w, acc.hessian, n_m=n_m, block_size=32)
        assert torch.equal(new_w == 0, ~keep)
    else:
        score = magnitude_score(w) if kind == "magnitude" else wanda_score(w, acc.channel_sq_norm())
        keep = make_mask(score, 0.0, n_m)
    _assert_pattern(keep, n_m=n_m)


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_sparsegpt_exact_sparsity(sparsity):
    w, _, acc = _layer(seed=2)
    new_w, keep = sparsegpt_prune(w, acc.hessian, sparsity, block_size=64)
    # the mask is chosen per block of 64 columns over all rows (the paper's): exact per block, not per row
    for block in keep.split(64, dim=1):
        _assert_pattern(block, sparsity, per_row=False)
    assert keep.sum(1).unique().numel() > 1
    assert ((new_w == 0) == ~keep).all()


def test_calibrated_pruning_beats_magnitude_on_layer_output():
    w, x, acc = _layer(seed=3)
    ref = x @ w.t()

    def err(pruned):
        return float((x @ pruned.t() - ref).pow(2).mean())

    mag = w * make_mask(magnitude_score(w), 0.5, None)
    wanda = w * make_mask(wanda_score(w, acc.channel_sq_norm()), 0.5, None)
    sgpt, _ = sparsegpt_prune(w, acc.hessian, 0.5)
    assert err(wanda) < 0.8 * err(mag)
    assert err(sgpt) < err(wanda)


def test_bad_patterns():
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_n_m("4:2")
    with pytest.raises(ValueError, match="'N:M'"):
        parse_n_m("half")
    with pytest.raises(ValueError, match="sparsity"):
        make_mask(torch.rand(2, 8), 1.0, None)


@pytest.mark.parametrize("prune", ["magnitude", "wanda", "sparsegpt"])
def test_prune_model_then_quantize_keeps_zeros(prune):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    model = Transformer(cfg).eval()
    calib = torch.randint(0, 97, (8, 32), generator=torch.Generator().manual_seed(0))
    details = compress_model(model, CompressConfig(prune=prune, sparsity=0.5, quantize="rtn", bits=8, group_size=32),
                             calib=calib, log=lambda s: None)
    assert all(abs(d["sparsity"] - 0.5) < 1e-9 for d in details.values())
    for name, m in model.named_modules():
        if getattr(m, "is_quantized_linear", False):
            # pruned weights stay exactly zero (0 is on every grid); a few kept ones may also round to 0
            zeros = (m.dense_weight() == 0).float().mean().item()
            assert 0.5 <= zeros < 0.51, name
