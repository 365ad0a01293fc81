"""FP8 linear (E4M3 forward, E5M2 gradients; per-tensor and row-wise scales), emulated on CPU, and the
trainer's dtype="fp8" tracking fp32 on a short run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmstack.train.fp8 import E4M3, E5M2, FP8Linear, convert_to_fp8, fp8_matmul, hardware_fp8, quantize
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer
from test_train_helpers import periodic_tokens


def test_quantize_round_trip_precision_and_range():
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    for dtype, mantissa_bits in ((E4M3, 3), (E5M2, 2)):
        q, s = quantize(x, dtype, dim=None)
        assert q.dtype == dtype and s.numel() == 1
        back = q.float() * s
        normal = x.abs() > x.abs().max() * 2.0 ** -6          # inside the normal range of both formats
        rel = ((back - x).abs() / x.abs())[normal]
        assert rel.max() <= 2.0 ** -(mantissa_bits + 1) + 1e-6  # round-to-nearest: half an ulp
        assert rel.max() > 2.0 ** -(mantissa_bits + 3)           # it really rounds
    # row-wise: a row 1e-6 times smaller than the rest keeps its precision; per tensor it flushes to 0
    x[0] *= 1e-6
    q_t, s_t = quantize(x, E4M3, dim=None)
    q_r, s_r = quantize(x, E4M3, dim=-1)
    assert s_r.shape == (64, 1)
    assert (q_t[0].float() * s_t).abs().max() == 0
    torch.testing.assert_close(q_r[0].float() * s_r[0], x[0], rtol=0.07, atol=0)


@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_fp8_linear_forward_and_grads_are_fp8_rounded_fp32(scaling):
    torch.manual_seed(0)
    ref = nn.Linear(48, 32)
    fp8 = FP8Linear.from_linear(nn.Linear(48, 32), scaling)
    fp8.load_state_dict(ref.state_dict())
    x = torch.randn(4, 5, 48, requires_grad=True)
    x8 = x.detach().clone().requires_grad_(True)
    y_ref, y8 = ref(x), fp8(x8)
    # exactly the product of the E4M3-rounded operands
    rowwise = scaling == "row"
    qx, sx = quantize(x.detach().reshape(-1, 48), E4M3, dim=-1 if rowwise else None)
    qw, sw = quantize(ref.weight.detach().t(), E4M3, dim=0 if rowwise else None)
    expected = ((qx.float() * sx) @ (qw.float() * sw) + ref.bias.detach()).reshape(4, 5, 32)
    torch.testing.assert_close(y8.detach(), expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(y8, y_ref)
    assert (y8 - y_ref).norm() < 0.05 * y_ref.norm()
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y8.backward(grad)
    for got, want in ((x8.grad, x.grad), (fp8.weight.grad, ref.weight.grad), (fp8.bias.grad, ref.bias.grad)):
        assert (got - want).norm() < 0.1 * want.norm()
    # grad-input really goes through E5M2 for the gradient
    qg, sg = quantize(grad.reshape(-1, 32), E5M2, dim=-1 if rowwise else None)
    qw2, sw2 = quantize(ref.weight.detach(), E4M3, dim=0 if rowwise else None)
    torch.testing.assert_close(x8.grad, ((qg.float() * sg) @ (qw2.float() * sw2)).reshape(4, 5, 48),
                               rtol=1e-6, atol=1e-6)


def make_model():
    from lmstack.model import ModelConfig, Transformer
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=64, n_layers=2, n_heads=4,
                                          n_kv_heads=2, max_seq_len=32))


def test_convert_swaps_block_linears_only_and_keeps_state_dict_keys():
    model = make_model()
    keys = list(model.state_dict())
    converted = convert_to_fp8(model, "row")
    assert len(converted) == 2 * 7 and all("lm_head" not in n for n in converted)
    assert isinstance(model.layers[0].attn.q_proj, FP8Linear) and isinstance(model.layers[1].ffn.down_proj, FP8Linear)
    assert type(model.lm_head) is nn.Linear
    assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="scaling='col'"):
        convert_to_fp8(make_model(), "col")
    with pytest.raises(ValueError, match="fp8_scaling='col'"):
        TrainConfig(dtype="fp8", fp8_scaling="col").validate()


def train_losses(dtype: str, scaling: str = "tensor") -> list[float]:
    records = []
    cfg = TrainConfig(steps=25, batch_size=8, seq_len=32, loader="random", eval_every=0, ckpt_every=0,
                      log_every=1, dtype=dtype, fp8_scaling=scaling, peak_flops=1e9,
                      optim=OptimConfig(lr=3e-3), schedule=ScheduleConfig(warmup_steps=3))
    Trainer(make_model(), cfg, train_tokens=periodic_tokens(6000, vocab=64), seed=2, progress=False,
            metrics_sink=records.append).train()
    return [r["loss"] for r in records if "loss" in r]


def test_emulated_fp8_training_tracks_fp32():
    ref = train_losses("fp32")
    assert len(ref) == 25 and ref[-1] < 0.7 * ref[0]
    for scaling in ("tensor", "row"):
        got = train_losses("fp8", scaling)
        assert got != ref                                   # FP8 rounding changes the numbers...
        diffs = [abs(a - b) for a, b in zip(ref, got)]
        assert max(diffs) < 0.03 * ref[0], (scaling, diffs)  # ...but not the trajectory
        assert abs(got[-1] - ref[-1]) < 0.03 * ref[-1], scaling


@pytest.mark.skipif(not (torch.cuda.is_available() and hardware_fp8(torch.zeros(1, device="cuda"))),
                    reason="needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+, e.g. H100)")
@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_scaled_mm_matches_emulation_on_fp8_hardware(scaling):
    torch.manual_seed(0)
    a, b = torch.randn(64, 128, device="cuda"), torch.randn(128, 96, device="cuda")
    hw = fp8_matmul(a, b, E4M3, E4M3, scaling)
    emulated = fp8_matmul(a.cpu(), b.cpu(), E4M3, E4M3, scaling)
    torch.testing.assert_close(hw.cpu(), emulated, rtol=2e-2, atol=2e-2)   # bf16 output rounding
    assert (F.linear(a, b.t()) - hw).norm() < 0.05 * hw.norm()
