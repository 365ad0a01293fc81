"""Merging a QLoRA adapter back into a quantized model: dequantize -> merge -> re-quantize.

A LoRA update ``B A`` is not representable on the 4-bit grid of its base, so merging means
rounding ``W_q + B A`` again, which costs quality (PEFT users report it). The report puts three
perplexities side by side on the same windows: the adapter unmerged on its quantized base (what
was trained), merged into a dense fp32 matrix (no rounding), and merged then re-quantized.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lmstack.align.lora import parent_and_attr

from .evaluate import compare_models
from .quant import QuantLinear, QuantSpec


def attach_qlora(model: nn.Module, r: int = 8, alpha: float = 16.0, block_size: int = 64) -> list[str]:
    """Freeze ``model``, quantize its linears to NF4 and add LoRA adapters (QLoRA), in place."""
    from lmstack.align import lora

    config_cls = lora.LoRAAdapterConfig
    return lora.apply_lora(model, config_cls(r=r, alpha=alpha, qlora=True, qlora_block_size=block_size))


@torch.no_grad()
def merge_and_requantize(model: nn.Module, spec: QuantSpec | None = None, nf4_block_size: int = 64) -> nn.Module:
    """Replace every LoRA-wrapped layer by ``quantize(dequant(W) + scaling * B A)`` in place:
    NF4 (the QLoRA format) when ``spec`` is None, else integer RTN with ``spec``."""
    from lmstack.align.lora import lora_modules
    from lmstack.align.nf4 import NF4Linear

    for name, module in list(lora_modules(model).items()):
        base = module.base
        dense = base.weight if isinstance(base, nn.Linear) else base.dense_weight()
        linear = nn.Linear(module.in_features, module.out_features, bias=getattr(base, "bias", None) is not None,
                           device=dense.device)
        linear.weight.copy_(dense + module.delta_weight().to(dense.dtype))
        if linear.bias is not None:
            linear.bias.copy_(base.bias)
        new = NF4Linear.from_linear(linear, block_size=nf4_block_size) if spec is None else QuantLinear.from_linear(linear, spec)
        parent, child = parent_and_attr(model, name)
        setattr(parent, child, new)
    for attr in ("lora_config", "lora_targets"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


@torch.no_grad()
def qlora_merge_report(model: nn.Module, windows: torch.Tensor, spec: QuantSpec | None = None) -> dict:
    """Perplexity of the adapter unmerged, merged dense, and merged + re-quantized; KL of the last
    two to the unmerged model."""
    from lmstack.align.lora import merge_lora

    model = model.eval()
    unmerged = compare_models(model, None, windows)
    dense = merge_lora(copy.deepcopy(model), dequantize=True).eval()
    requant = merge_and_requantize(copy.deepcopy(model), spec).eval()
    d, r = compare_models(dense, model, windows), compare_models(requant, model, windows)
    return {"ppl_unmerged": unmerged["ppl"], "ppl_merged_dense": d["ppl"], "ppl_merged_requantized": r["ppl"],
            "kl_merged_dense": d["kl"], "kl_merged_requantized": r["kl"],
            "ppl_change_requantized": r["ppl"] - unmerged["ppl"]}


__all__ = ["attach_qlora", "merge_and_requantize", "qlora_merge_report"]
