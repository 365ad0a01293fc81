"""LoRA / QLoRA: init, exact merge/unmerge, target selection, adapter I/O, PEFT logits oracle, NF4 bounds."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from lmstack.align.lora import (LoRAAdapterConfig, LoRALinear, apply_lora, count_parameters, export_peft_adapter,
                                find_target_linears, load_adapter, lora_modules, lora_parameters, merge_lora,
                                save_adapter, unmerge_lora)
from lmstack.align.nf4 import (NF4_CODE_BOOK, NF4Linear, bits_per_parameter, nf4_error_bound, quantize_nf4)
from lmstack.model import ModelConfig, Transformer





def tiny_model(preset="llama-style", **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2 if preset == "llama-style" else 4,
                             max_seq_len=32, **kw)
    return Transformer(cfg).eval()


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in lora_modules(model).values():
        with torch.no_grad():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


def test_lora_linear_init_and_scaling():
    base = nn.Linear(16, 8)
    lora = LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = torch.randn(3, 16)
    torch.testing.assert_close(lora(x), base(x))  # B = 0: the adapter starts as the identity update
    assert lora.scaling == 2.0
    assert float(lora.lora_B.weight.detach().abs().sum()) == 0.0 and float(lora.lora_A.weight.detach().abs().sum()) > 0
    bound = 1 / math.sqrt(16)  # kaiming_uniform(a=sqrt(5)) on fan_in 16
    assert float(lora.lora_A.weight.detach().abs().max()) <= bound + 1e-6
    assert LoRALinear(nn.Linear(16, 8), r=4, alpha=8, rslora=True).scaling == 4.0  # alpha / sqrt(r)
    assert not lora.base.weight.requires_grad and lora.lora_A.weight.requires_grad
    with pytest.raises(ValueError):
        LoRALinear(base, r=0, alpha=1)


def test_merge_equals_unmerged_forward_and_unmerge_restores():
    model = tiny_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAAdapterConfig(r=4, alpha=8, target_modules=["all-linear"]))
    randomize_lora(model)
    ids = torch.randint(0, 97, (2, 12))
    unmerged = model(ids).logits
    for m in lora_modules(model).values():
        m.merge()
    torch.testing.assert_close(model(ids).logits, unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for name, m in lora_modules(model).items():
        torch.testing.assert_close(m.base.weight, original[f"{name}.weight"], rtol=0, atol=1e-6)
    merged = merge_lora(copy.deepcopy(model))
    assert not lora_modules(merged)
    assert set(merged.state_dict()) == set(original)  # a plain model again, same keys as before LoRA
    torch.testing.assert_close(merged(ids).logits, unmerged, rtol=1e-5, atol=1e-5)


def test_target_modules_patterns_and_freezing():
    model = tiny_model()
    assert find_target_linears(model, ["q_proj"]) == ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]
    assert find_target_linears(model, [r"layers\.1\.ffn\..*"]) == ["layers.1.ffn.gate_proj", "layers.1.ffn.up_proj", "layers.1.ffn.down_proj"]
    all_linear = find_target_linears(model, ["all-linear"])
    assert "lm_head" not in all_linear and len(all_linear) == 2 * 7
    names = apply_lora(model, LoRAAdapterConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    assert len(names) == 4
    assert find_target_linears(model, ["all-linear"]) == [n for n in all_linear if n not in names]  # no double wrap
    trainable, total = count_parameters(model)
    expected = sum(2 * (m.in_features + m.out_features) for m in lora_modules(model).values())
    assert trainable == expected == sum(p.numel() for p in lora_parameters(model))
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny_model(), LoRAAdapterConfig(r=2, target_modules=["lm_head"]))  # lm_head shares the embedding
    with pytest.raises(ValueError, match="matched no linear layer"):
        apply_lora(tiny_model(), LoRAAdapterConfig(r=2, target_modules=["nonexistent_proj"]))
    with pytest.raises(ValueError, match="r must be >= 0"):
        LoRAAdapterConfig(r=-1).validate()
    with pytest.raises(ValueError, match="qlora"):
        LoRAAdapterConfig(r=0, qlora=True).validate()


def test_adapter_saved_alone_and_reloaded(tmp_path):
    model = tiny_model()
    base_state = copy.deepcopy(model.state_dict())
    apply_lora(model, LoRAAdapterConfig(r=4, alpha=16, target_modules=["q_proj", "down_proj"], rslora=True))
    randomize_lora(model)
    save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["use_rslora"] is True
    assert sorted(cfg["target_modules"]) == ["down_proj", "q_proj"]
    from safetensors.torch import load_file

    keys = sorted(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.layers.0.attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.layers.1.ffn.down_proj.lora_B.weight" in keys
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys) and len(keys) == 8

    fresh = tiny_model()
    fresh.load_state_dict(base_state)
    load_adapter(fresh, tmp_path)
    ids = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits)


def test_peft_loads_exported_adapter_with_same_logits(tmp_path):
    """Oracle: our adapter + our HF export of the base give the same logits under transformers + PEFT."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lmstack.model.hf import export_hf

    model = tiny_model()
    export_hf(model, tmp_path / "base")
    apply_lora(model, LoRAAdapterConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]))
    randomize_lora(model)
    export_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", torch_dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # and the adapter really changes the output (the comparison is not vacuous)
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(input_ids=ids).logits
    assert float((plain - theirs).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- NF4 / QLoRA

PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_nf4_code_book_matches_paper():
    torch.testing.assert_close(NF4_CODE_BOOK, torch.tensor(PAPER_NF4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_round_trip_within_code_book_bound(double_quant):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(130, 77, generator=g) * 0.05
    w[3, :10] = 2.0  # an outlier block: its error scales with its own absmax only
    q = quantize_nf4(w, block_size=64, double_quant=double_quant)
    deq = q.dequantize()
    err = (w - deq).abs()
    assert bool((err <= nf4_error_bound(w, q)).all())
    # zero is a code point: an all-zero block round-trips exactly
    z = quantize_nf4(torch.zeros(64, 2)).dequantize()
    assert float(z.abs().max()) == 0.0
    # values that are exactly code points times absmax come back exactly (up to scale quantization)
    exact = (NF4_CODE_BOOK * 0.5).repeat(4)
    rt = quantize_nf4(exact, double_quant=False).dequantize()
    torch.testing.assert_close(rt, exact)
    # NF4 beats uniform int4 absmax on normal weights (its raison d'etre)
    absmax = w.view(-1)[: (w.numel() // 64) * 64].view(-1, 64).abs().amax(1, keepdim=True)
    blocks = w.view(-1)[: (w.numel() // 64) * 64].view(-1, 64)
    int4 = torch.round(blocks / absmax * 7) / 7 * absmax
    nf4_mse = ((deq.view(-1)[: blocks.numel()].view(-1, 64) - blocks) ** 2).mean()
    assert float(nf4_mse) < float(((int4 - blocks) ** 2).mean())


def test_nf4_storage_is_about_4_127_bits():
    lin = nn.Linear(256, 256)
    q = NF4Linear.from_linear(lin)
    bits = 8 * q.qweight().nbytes() / lin.weight.numel()
    assert abs(bits - bits_per_parameter()) < 0.01
    assert abs(bits_per_parameter() - 4.127) < 1e-3


def test_qlora_linear_trains_adapter_only():
    torch.manual_seed(0)
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 10))
    ref = model(ids).logits
    apply_lora(model, LoRAAdapterConfig(r=4, alpha=8, qlora=True))
    out = model(ids).logits
    # 4-bit base: close to, not equal to, the float model
    diff = float((out - ref).detach().abs().max())
    assert 0 < diff < 0.5
    loss = out.logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    merged = merge_lora(copy.deepcopy(model), dequantize=True)
    torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError):
        merge_lora(copy.deepcopy(model))


def test_nf4_linear_backward_matches_dense_dequantized():
    lin = nn.Linear(64, 32)
    q = NF4Linear.from_linear(lin)
    dense = q.to_linear()
    x = torch.randn(5, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    q(x).sum().backward()
    dense(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
