"""Int8 matmuls for the fast decode step.

At batch 1 a decode step reads every weight once per token, so it is bound by memory traffic:
int8 weights move a quarter of the bytes of fp32. Two ways to multiply by them:
- ``"dynamic"`` (default): each activation row is also rounded to int8 (symmetric, one scale per
  row, as llama.cpp does for its Q8_0 dot products) and the product runs as an int8 x int8 -> int32
  GEMM (``torch._int_mm``), then is rescaled. Slightly different numbers from the weight-only
  forward pass (the activation rounding), measured by the KL test.
- ``"weight_only"``: fp32 activations times int8 weights (``torch._weight_int8pack_mm``): the same
  function as ``QuantLinear.forward`` up to float rounding.
On the 2-core CI machine (AMD EPYC, torch 2.13 CPU) a 1 x 4096 x 4096 product took about 1.0 ms
with ``_int_mm``, 7.3 ms in fp32 and 24 ms with ``_weight_int8pack_mm`` (contended, indicative
only), hence the default. Set ``lmstack.compress.int8.MODE`` before decoding to switch.

Only layers whose stored form *is* plain int8 per channel qualify: 8-bit, symmetric, one scale per
output row, no act-order permutation, no input scaling, no activation quantization, no bias.
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import QuantLinear

MODE = "dynamic"  # "dynamic" (int8 activations too, int8 GEMM) | "weight_only"
# Threads for one int8 GEMM call (0 = torch's setting). With 2 threads on the loaded CI machine a
# one-row ``_int_mm`` took ~10 ms whatever its size (1 thread: 4 us for 768 x 256, 0.4-2 ms for
# 4096 x 4096), while switching the thread count around the call costs ~12 us; so by default the
# call runs on one thread. Worth re-measuring on an idle many-core machine (THREADS = 0).
THREADS = 1
MODES = ("dynamic", "weight_only")
_WEIGHT_ONLY_KERNEL = getattr(torch, "_weight_int8pack_mm", None)
_INT_MM = getattr(torch, "_int_mm", None)


def int8_decodable(module: nn.Module) -> bool:
    if not isinstance(module, QuantLinear):
        return False
    spec = module.spec
    return (spec.bits == 8 and spec.symmetric and spec.group_size in (0, module.in_features)
            and module.perm is None and module.input_scale is None and module.act_bits == 0 and module.bias is None)


def decode_kind(module: nn.Module) -> str | None:
    """How the fast decode step can run a quantized linear: "int8" (int8 GEMM), "dense" (from its
    dequantized weight, in float), or None (it must go through ``forward``: biases, SmoothQuant's
    activation rounding)."""
    if getattr(module, "bias", None) is not None:
        return None
    if int8_decodable(module):
        return "int8"
    if isinstance(module, QuantLinear):
        return "dense" if module.act_bits == 0 else None
    if type(module).__name__ == "NF4Linear":
        return "dense"
    return None


def decode_dense_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] float matrix a "dense"-kind quantized linear computes with."""
    if isinstance(module, QuantLinear):
        return module.effective_weight()
    return module.dense_weight()


class Int8DecodeWeight:
    """``w(x [M, in]) -> [M, out]`` for one or more int8 QuantLinears stacked along their outputs."""

    __slots__ = ("weight", "scales", "scales_127", "mode")

    def __init__(self, modules: list[nn.Module], mode: str | None = None):
        bad = [type(m).__name__ for m in modules if not int8_decodable(m)]
        if bad:
            raise TypeError(f"Int8DecodeWeight needs int8 per-channel symmetric QuantLinears, got {bad}")
        mode = mode or MODE
        if mode not in MODES:
            raise ValueError(f"lmstack.compress.int8.MODE must be one of {MODES}, got {mode!r}")
        with torch.no_grad():
            # stored codes are offset by 2^(b-1) = 128: subtracting it gives the signed int8 value
            self.weight = torch.cat([(m.qweight.to(torch.int16) - 128).to(torch.int8) for m in modules]).contiguous()
            self.scales = torch.cat([m.scales.float().reshape(-1) for m in modules]).contiguous()
            self.scales_127 = self.scales / 127.0  # folds the activation scale's 1/127 into the output rescale
        on_cpu = self.weight.device.type == "cpu"
        if mode == "dynamic" and not (_INT_MM is not None and on_cpu):
            mode = "weight_only"
        self.mode = mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic" and x.dtype == torch.float32:
            # Written for few aten calls (each costs microseconds, comparable to a small model's whole matmul):
            # |x / scale| <= 127 by construction, so no clamp; int32 * float promotes to float in one mul.
            amax = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-12)
            x_int8 = torch.mul(x, 127.0 / amax).round_().to(torch.int8)
            # [in, out] as a transposed view of the row-major [out, in] weight: the fast layout for _int_mm
            before = torch.get_num_threads()
            if THREADS and before != THREADS:
                torch.set_num_threads(THREADS)
                try:
                    product = _INT_MM(x_int8, self.weight.t())
                finally:
                    torch.set_num_threads(before)
            else:
                product = _INT_MM(x_int8, self.weight.t())
            return product * (amax * self.scales_127)
        if _WEIGHT_ONLY_KERNEL is not None and x.dtype == torch.float32 and self.weight.device.type == "cpu":
            return _WEIGHT_ONLY_KERNEL(x.contiguous(), self.weight, self.scales)
        return (x @ self.weight.t().to(x.dtype)) * self.scales.to(x.dtype)


def int8_weight_only(model: nn.Module, target_modules: list[str] | None = None) -> nn.Module:
    """Quantize ``model``'s block linears to int8 per channel (RTN) in place: the form the fast
    decode step runs with the int8 kernel."""
    from .api import CompressConfig, compress_model

    cfg = CompressConfig(quantize="rtn", bits=8, group_size=0, symmetric=True,
                         target_modules=target_modules or ["all-linear"])
    compress_model(model, cfg, log=lambda s: None)
    return model



__all__ = ["decode_kind", "decode_dense_weight", "Int8DecodeWeight", "int8_decodable", "int8_weight_only", "MODE",
           "MODES", "THREADS"]
