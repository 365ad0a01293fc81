"""FP8 training for linear layers: E4M3 for weights and activations, E5M2 for gradients.

Micikevicius et al. 2022, "FP8 Formats for Deep Learning": E4M3 (max 448) has the precision the
forward pass needs; E5M2 (max 57344) has the range gradients need. Each GEMM operand is scaled
into the format's range before the cast, either with one scale per tensor (``amax / fp8_max``)
or row-wise (one scale per row of the left operand and per column of the right one, i.e. along
the dimensions that are *not* summed over, so the scales factor out of the dot products).

Speed: the benefit needs an H100-class GPU (CUDA compute capability 8.9 or newer, with FP8
tensor cores). There the three GEMMs of a linear layer (forward, grad-input, grad-weight) run
through ``torch._scaled_mm``. Everywhere else, the CPU included, the casts are *emulated*: the
operands are rounded through ``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` and multiplied in
fp32. That reproduces FP8 numerics (to study loss curves) but is slower than plain fp32.

Master weights, optimizer state and the non-linear layers stay in higher precision; the
embeddings and the output head are not converted (as in common FP8 recipes: they are small
and the most sensitive).
"""

from __future__ import annotations

import torch
from torch import nn

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
SCALINGS = ("tensor", "row")
SKIP_NAME_PARTS = ("lm_head", "embed", "wte", "wpe", "router")


def fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def quantize(t: torch.Tensor, dtype: torch.dtype, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``t`` into ``dtype``'s range and cast. ``dim=None``: one scale for the tensor; otherwise
    one scale per slice, reduced over ``dim`` (kept as a size-1 dim so it broadcasts back)."""
    t = t.float()
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = amax.clamp_min(1e-12) / fp8_max(dtype)
    q = (t / scale).clamp(-fp8_max(dtype), fp8_max(dtype)).to(dtype)
    return q, scale


def hardware_fp8(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.get_device_capability(t.device) >= (8, 9)


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, a_dtype: torch.dtype, b_dtype: torch.dtype,
               scaling: str) -> torch.Tensor:
    """``a @ b`` (a: M x K, b: K x N) with both operands in FP8; returns fp32."""
    rowwise = scaling == "row"
    qa, sa = quantize(a, a_dtype, dim=-1 if rowwise else None)   # per row of a: (M, 1)
    qb, sb = quantize(b, b_dtype, dim=0 if rowwise else None)    # per column of b: (1, N)
    k = a.shape[1]
    n = b.shape[1]
    # cuBLAS FP8 GEMMs: dims multiple of 16, never E5M2 x E5M2; row-wise scales only for E4M3 x E4M3
    supported = k % 16 == 0 and n % 16 == 0 and E4M3 in (a_dtype, b_dtype) and (
        not rowwise or a_dtype == b_dtype == E4M3)
    if hardware_fp8(a) and supported:
        # the left operand row-major, the right one column-major; a bf16 output (row-wise needs it)
        out = torch._scaled_mm(qa.contiguous(), qb.t().contiguous().t(), scale_a=sa, scale_b=sb,
                               out_dtype=torch.bfloat16)
        return out.float()
    return (qa.float() * sa) @ (qb.float() * sb)


class _FP8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scaling: str):
        x2d = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2d, weight)
        ctx.scaling, ctx.x_shape, ctx.has_bias = scaling, x.shape, bias is not None
        y = fp8_matmul(x2d, weight.t(), E4M3, E4M3, scaling)
        if bias is not None:
            y = y + bias.float()
        return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x2d, weight = ctx.saved_tensors
        g2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = fp8_matmul(g2d, weight, E5M2, E4M3, ctx.scaling).reshape(ctx.x_shape).to(x2d.dtype)
        grad_w = fp8_matmul(g2d.t(), x2d, E5M2, E4M3, ctx.scaling).to(weight.dtype)
        grad_b = g2d.float().sum(0).to(weight.dtype) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class FP8Linear(nn.Linear):
    """An ``nn.Linear`` whose three GEMMs run in FP8 (emulated off FP8 hardware). Same parameters and
    state-dict keys as ``nn.Linear``, so checkpoints load into the unconverted model."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scaling: str = "tensor",
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if scaling not in SCALINGS:
            raise ValueError(f"FP8 scaling={scaling!r}: choose one of {', '.join(SCALINGS)}")
        self.scaling = scaling

    @classmethod
    def from_linear(cls, linear: nn.Linear, scaling: str = "tensor") -> "FP8Linear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features, new.scaling = linear.in_features, linear.out_features, scaling
        new.weight, new.bias = linear.weight, linear.bias   # share: optimizer and ties keep working
        if scaling not in SCALINGS:
            raise ValueError(f"FP8 scaling={scaling!r}: choose one of {', '.join(SCALINGS)}")
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _FP8LinearFunction.apply(x, self.weight, self.bias, self.scaling)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp8 scaling={self.scaling}"


def convert_to_fp8(model: nn.Module, scaling: str = "tensor",
                   skip: tuple[str, ...] = SKIP_NAME_PARTS) -> list[str]:
    """Swap every ``nn.Linear`` whose name contains none of ``skip`` for an :class:`FP8Linear`
    (in place); returns the converted names."""
    if scaling not in SCALINGS:
        raise ValueError(f"FP8 scaling={scaling!r}: choose one of {', '.join(SCALINGS)}")
    targets = [name for name, m in model.named_modules()
               if type(m) is nn.Linear and not any(part in name for part in skip)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear.from_linear(getattr(parent, child), scaling))
    return targets
