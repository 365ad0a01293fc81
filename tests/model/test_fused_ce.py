"""The fused, chunked linear + cross-entropy equals the plain computation: loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lmstack.model import ModelConfig, Transformer
from lmstack.model.fused_ce import linear_cross_entropy


@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize("chunk_rows", [1, 64, 1000])
def test_matches_unfused_loss_and_gradients_in_float64(softcap, chunk_rows):
    torch.manual_seed(0)
    h = torch.randn(300, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(97, 32, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 97, (300,))
    t[::7] = -100  # ignored positions contribute neither loss nor gradient
    fused = linear_cross_entropy(h, w, t, softcap=softcap, chunk_rows=chunk_rows)
    z = h @ w.t()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    plain = F.cross_entropy(z, t, ignore_index=-100, reduction="sum")
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-10)
    for a, b in zip(torch.autograd.grad(0.7 * fused, (h, w)), torch.autograd.grad(0.7 * plain, (h, w))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="must be \\[N, d\\] and \\[V, d\\]"):
        linear_cross_entropy(torch.zeros(4, 8), torch.zeros(10, 9), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("tied", [True, False])
def test_transformer_fused_loss_equals_plain_loss(tied):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=16, tie_embeddings=tied, logit_softcap=10.0)
    model = Transformer(cfg).double()
    x = torch.randint(0, 300, (3, 16))
    y = torch.randint(0, 300, (3, 16))
    y[0, :5] = -100
    plain = model(x, targets=y)
    grads_plain = torch.autograd.grad(plain.loss, list(model.parameters()))
    fused = model(x, targets=y, fused_loss=True)
    assert fused.logits is None
    # the plain path takes its cross-entropy in float32, so compare at float32 precision
    torch.testing.assert_close(fused.loss, plain.loss.double(), rtol=1e-6, atol=1e-7)
    for a, b in zip(torch.autograd.grad(fused.loss, list(model.parameters())), grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fused_loss_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=256, d_model=32, n_layers=1, n_heads=4,
                                           n_kv_heads=2, max_seq_len=16))
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(x, targets=y).loss
        fused = model(x, targets=y, fused_loss=True).loss
    assert abs(plain.item() - fused.item()) < 2e-2
    fused.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
