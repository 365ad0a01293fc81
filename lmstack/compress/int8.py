"""Int8 weight-only matmul for the fast decode step.

At batch 1 a decode step reads every weight once per token, so it is bound by memory traffic:
int8 weights move a quarter of the bytes of fp32. ``torch._weight_int8pack_mm`` (the CPU kernel
behind torch's own int8 weight-only examples) multiplies fp32 activations by int8 weights with a
per-output-channel scale without materialising a float copy. Where it is missing, the product
falls back to dequantize-then-matmul (same result, no speed-up).

Only layers whose stored form *is* plain int8 per channel qualify: 8-bit, symmetric, one scale per
output row, no act-order permutation, no input scaling, no activation quantization, no bias.
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import QuantLinear

_KERNEL = getattr(torch, "_weight_int8pack_mm", None)


def int8_decodable(module: nn.Module) -> bool:
    if not isinstance(module, QuantLinear):
        return False
    spec = module.spec
    return (spec.bits == 8 and spec.symmetric and spec.group_size in (0, module.in_features)
            and module.perm is None and module.input_scale is None and module.act_bits == 0 and module.bias is None)


class Int8DecodeWeight:
    """``w(x [M, in]) -> [M, out]`` for one or more int8 QuantLinears stacked along their outputs."""

    __slots__ = ("weight", "scales", "use_kernel")

    def __init__(self, modules: list[nn.Module]):
        bad = [type(m).__name__ for m in modules if not int8_decodable(m)]
        if bad:
            raise TypeError(f"Int8DecodeWeight needs int8 per-channel symmetric QuantLinears, got {bad}")
        with torch.no_grad():
            # stored codes are offset by 2^(b-1) = 128: subtracting it gives the signed int8 value
            self.weight = torch.cat([(m.qweight.to(torch.int16) - 128).to(torch.int8) for m in modules]).contiguous()
            self.scales = torch.cat([m.scales.float().reshape(-1) for m in modules]).contiguous()
        self.use_kernel = _KERNEL is not None and self.weight.device.type == "cpu"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.dtype == torch.float32:
            return _KERNEL(x.contiguous(), self.weight, self.scales)
        return (x @ self.weight.t().to(x.dtype)) * self.scales.to(x.dtype)


def int8_weight_only(model: nn.Module, target_modules: list[str] | None = None) -> nn.Module:
    """Quantize ``model``'s block linears to int8 per channel (RTN) in place: the form the fast
    decode step runs with the int8 kernel."""
    from .api import CompressConfig, compress_model

    cfg = CompressConfig(quantize="rtn", bits=8, group_size=0, symmetric=True,
                         target_modules=target_modules or ["all-linear"])
    compress_model(model, cfg, log=lambda s: None)
    return model


__all__ = ["Int8DecodeWeight", "int8_decodable", "int8_weight_only"]
