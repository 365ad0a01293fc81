"""Int8 matmuls for the fast decode step, with the fastest kernel picked by timing it.

At batch 1 a decode step reads every weight once per token: for a model whose weights do not fit
in the CPU caches it is bound by memory traffic, and int8 weights move a quarter of fp32's bytes.
For a small model whose weights stay in cache it is bound by per-op overhead instead, and every
extra op of an int8 path (rounding the activations, rescaling) costs more than it saves. Which
wins depends on the shape, the CPU and torch's build, so :class:`Int8DecodeWeight` times the
kernels it can use on its own shape (once per shape and thread count) and keeps the fastest
(``MODE = "auto"``, the default). The kernels:
- ``"qlinear"``: torch's fused dynamic-quantization linear (``quantized::linear_dynamic``, fbgemm
  or oneDNN): activations rounded to uint8 per tensor (one scale for all rows), int8 GEMM and
  rescale in one op. On CPUs without VNNI the activations use 7 bits (fbgemm's reduce_range, which
  avoids int16 saturation there).
- ``"dynamic"``: the same in separate ops: each activation row rounded to int8 (symmetric, one
  scale per row, as llama.cpp does for its Q8_0 dot products), ``torch._int_mm``, rescale.
- ``"weight_only"``: fp32 activations times int8 weights (``torch._weight_int8pack_mm``): the same
  function as ``QuantLinear.forward`` up to float rounding (slow on the x86 builds measured).
- ``"dense"``: the dequantized fp32 weight through the fp32 decode matmul: exact, no speed-up, no
  memory saving; it wins when int8's extra ops cost more than the weight traffic they save.
The first two round the activations, so they compute slightly different numbers than the model's
forward pass (measured by the KL tests). Set ``lmstack.compress.int8.MODE`` to one kernel's name
before decoding to force it; :func:`kernel_choices` tells what "auto" picked for each shape.

Only layers whose stored form *is* plain int8 per channel qualify: 8-bit, symmetric, one scale per
output row, no act-order permutation, no input scaling, no activation quantization, no bias.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch
from torch import nn

from .quant import QuantLinear

MODE = "auto"  # "auto" (time the kernels, keep the fastest) | one of KERNELS
# Threads for one ``_int_mm`` call ("dynamic"; 0 = torch's setting). With 2 threads on the loaded CI
# machine a one-row ``_int_mm`` took ~10 ms whatever its size (1 thread: 4 us for 768 x 256), while
# switching the thread count around the call costs ~12 us; so by default that call runs on one thread.
THREADS = 1
KERNELS = ("qlinear", "dynamic", "weight_only", "dense")
MODES = ("auto",) + KERNELS
_WEIGHT_ONLY_KERNEL = getattr(torch, "_weight_int8pack_mm", None)
_INT_MM = getattr(torch, "_int_mm", None)
_CHOICES: dict[tuple, str] = {}  # (out, in, threads, device) -> the kernel "auto" picked
_VNNI: bool | None = None


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


def _cpu_has_vnni() -> bool:
    """Whether the CPU has VNNI dot products (Linux flags; False elsewhere: the safe answer)."""
    global _VNNI
    if _VNNI is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
            _VNNI = "avx512_vnni" in flags or "avx_vnni" in flags
        except OSError:
            _VNNI = False
    return _VNNI


def _pack_qlinear(weight_int8: torch.Tensor, scales: torch.Tensor):
    """The fused dynamic-int8 linear's packed weight, or None where this torch build has none."""
    ops = getattr(torch.ops, "quantized", None)
    if ops is None or weight_int8.device.type != "cpu":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensor creation warns it is deprecated
            q = torch._make_per_channel_quantized_tensor(weight_int8, scales.double(),
                                                         torch.zeros_like(scales, dtype=torch.long), 0)
            return ops.linear_prepack(q, None)
    except (RuntimeError, AttributeError):
        return None


def _plain_matmul(weight: torch.Tensor) -> Callable:
    return lambda x: x @ weight.t()


def kernel_choices() -> dict[tuple, str]:
    """{(out_features, in_features, threads, device): kernel} for every shape "auto" has timed."""
    return dict(_CHOICES)


class Int8DecodeWeight:
    """``w(x [M, in]) -> [M, out]`` for one or more int8 QuantLinears stacked along their outputs.
    ``dense``: builds the fp32 decode matmul of a float weight (the "dense" kernel; fast.py passes its
    own), default a plain ``x @ w.T``."""

    __slots__ = ("weight", "scales", "scales_127", "mode", "_packed", "_reduce_range", "_dense", "_run")

    def __init__(self, modules: list[nn.Module], mode: str | None = None,
                 dense: Callable[[torch.Tensor], Callable] | None = None):
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
        self._packed = self._dense = None
        self._reduce_range = not _cpu_has_vnni()
        builders, built = self._builders(dense or _plain_matmul), {}
        if mode == "auto":
            key = (*self.weight.shape, torch.get_num_threads(), self.weight.device.type)
            if key not in _CHOICES:
                # first weight of this shape: build every kernel and time them; later ones build only the winner
                built = {name: kernel for name, build in builders.items() if (kernel := build()) is not None}
                _CHOICES[key] = _fastest(built, self.weight.shape[1], self.weight.device)
            mode = _CHOICES[key]
        run = built.get(mode) or (builders[mode]() if mode in builders else None)
        if run is None:
            mode, run = "weight_only", self._weight_only  # e.g. "dynamic" asked for on a GPU: the exact kernel
        self.mode, self._run = mode, run
        if mode != "dense":
            self._dense = None  # the fp32 copy only stays when it is used
        if mode != "qlinear":
            self._packed = None

    def _builders(self, dense) -> dict[str, Callable[[], Callable | None]]:
        """Kernel name -> a function that prepares the kernel (packs the weight, makes the fp32 copy) and
        returns it, or None where this torch build lacks it. Only the kernels that are used get built."""
        def qlinear():
            self._packed = _pack_qlinear(self.weight, self.scales)
            return self._qlinear if self._packed is not None else None

        def dense_kernel():
            self._dense = dense(self.weight.float() * self.scales[:, None])
            return self._dense

        builders = {"weight_only": lambda: self._weight_only}
        if self.weight.device.type == "cpu":
            builders["qlinear"] = qlinear
            if _INT_MM is not None:
                builders["dynamic"] = lambda: self._dynamic
        builders["dense"] = dense_kernel
        return builders

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 and self.mode != "dense":
            return self._in_dtype(x)
        return self._run(x)

    def _in_dtype(self, x: torch.Tensor) -> torch.Tensor:
        """The product in x's own dtype (the int8 kernels take fp32 activations only)."""
        return (x @ self.weight.t().to(x.dtype)) * self.scales.to(x.dtype)

    def _qlinear(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, self._reduce_range)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
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

    def _weight_only(self, x: torch.Tensor) -> torch.Tensor:
        if _WEIGHT_ONLY_KERNEL is not None and self.weight.device.type == "cpu":
            return _WEIGHT_ONLY_KERNEL(x.contiguous(), self.weight, self.scales)
        return self._in_dtype(x)


def _fastest(kernels: dict[str, Callable], in_features: int, device, rounds: int = 5, budget_s: float = 2e-3) -> str:
    """The kernel with the lowest best-of-``rounds`` time on one row (a batch-1 decode step); rounds
    interleave the kernels so that a burst of load elsewhere hits them alike."""
    x = torch.randn(1, in_features, device=device)
    calls = {}
    for name, run in kernels.items():
        run(x)  # warm-up (first calls allocate, pack, pick code paths)
        t0 = time.perf_counter()
        run(x)
        calls[name] = max(1, min(50, int(budget_s / max(time.perf_counter() - t0, 1e-7))))
    best = {name: float("inf") for name in kernels}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # GPU kernels run asynchronously
    with torch.no_grad():
        for _ in range(rounds):
            for name, run in kernels.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(calls[name]):
                    run(x)
                sync()
                best[name] = min(best[name], (time.perf_counter() - t0) / calls[name])
    return min(best, key=best.get)


def int8_weight_only(model: nn.Module, target_modules: list[str] | None = None) -> nn.Module:
    """Quantize ``model``'s block linears to int8 per channel (RTN) in place: the form the fast
    decode step runs with the int8 kernel."""
    from .api import CompressConfig, compress_model

    cfg = CompressConfig(quantize="rtn", bits=8, group_size=0, symmetric=True,
                         target_modules=target_modules or ["all-linear"])
    compress_model(model, cfg, log=lambda s: None)
    return model



__all__ = ["decode_kind", "decode_dense_weight", "Int8DecodeWeight", "int8_decodable", "int8_weight_only",
           "kernel_choices", "KERNELS", "MODE", "MODES", "THREADS"]
