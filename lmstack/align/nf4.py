"""NF4 (4-bit NormalFloat) quantization with double-quantized scales, for QLoRA.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314):
- weights are split into blocks of 64; each block is divided by its absmax so it lies in [-1, 1];
- each value is rounded to the nearest of 16 levels that are quantiles of N(0, 1), built so that
  zero is represented exactly (Sec. 3, "4-bit NormalFloat Quantization");
- double quantization: the fp32 absmax constants are themselves quantized to 8 bits in blocks of
  256 after subtracting their mean, which cuts the scale overhead from 0.5 to ~0.127 bit/param.
Computation dequantizes the weight on the fly; the backward pass dequantizes again instead of
keeping a dense copy, so only 4.13 bits per base parameter stay resident.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# QLoRA Sec. 3: the outermost quantile is 1 - (1/32 + 1/30)/2 = 0.9677083 rather than 1, so that
# the extreme levels stay finite (the mean of the two half-bin widths for 16 and 15 levels).
_NF4_OFFSET = 0.9677083


def nf4_code_book() -> torch.Tensor:
    """The 16 NF4 levels, computed from normal quantiles the way the paper describes.

    8 positive quantiles and 7 negative ones are taken from N(0,1) (asymmetric so that 0 is a level),
    then everything is normalized to [-1, 1]. The result equals the table in the paper / bitsandbytes.
    """
    positive = torch.linspace(_NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1]
    negative = torch.linspace(_NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1]
    values = torch.cat([torch.special.ndtri(positive), torch.zeros(1, dtype=torch.float64), -torch.special.ndtri(negative)])
    values = values / values.abs().max()
    return torch.sort(values).values.to(torch.float32)


NF4_CODE_BOOK = nf4_code_book()
# Worst-case rounding error in normalized units: half of the widest gap between neighbouring levels.
NF4_MAX_HALF_GAP = float((NF4_CODE_BOOK[1:] - NF4_CODE_BOOK[:-1]).max() / 2)


class NF4Tensor:
    """A weight matrix stored as packed 4-bit codes + double-quantized block scales."""

    def __init__(self, codes: torch.Tensor, scale_codes: torch.Tensor, scale_scales: torch.Tensor,
                 scale_mean: torch.Tensor, shape: tuple[int, ...], numel: int, block_size: int, scale_block_size: int,
                 absmax: torch.Tensor | None = None):
        self.codes = codes                  # uint8 [ceil(n/2)], two 4-bit indices per byte
        self.scale_codes = scale_codes      # int8 [n_blocks] or None (no double quantization)
        self.scale_scales = scale_scales    # fp32 [ceil(n_blocks/scale_block_size)]
        self.scale_mean = scale_mean        # fp32 scalar
        self.absmax = absmax                # fp32 [n_blocks], kept only without double quantization
        self.shape = tuple(shape)
        self.numel = numel
        self.block_size = block_size
        self.scale_block_size = scale_block_size

    def nbytes(self) -> int:
        total = self.codes.numel() * self.codes.element_size() + 4  # + the scale mean
        if self.scale_codes is not None:
            total += self.scale_codes.numel() + self.scale_scales.numel() * 4
        else:
            total += self.absmax.numel() * 4
        return total

    def block_absmax(self) -> torch.Tensor:
        if self.scale_codes is None:
            return self.absmax
        groups = self.scale_codes.float().view(-1, self.scale_block_size) / 127.0
        return (groups * self.scale_scales[:, None]).reshape(-1) + self.scale_mean

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        high = (self.codes >> 4).long()
        low = (self.codes & 0x0F).long()
        idx = torch.stack([high, low], dim=1).reshape(-1)
        book = NF4_CODE_BOOK.to(self.codes.device)
        values = book[idx].view(-1, self.block_size)
        absmax = self.block_absmax()[: values.shape[0]]
        return (values * absmax[:, None]).reshape(-1)[: self.numel].view(self.shape).to(dtype)


def quantize_nf4(weight: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                 scale_block_size: int = 256) -> NF4Tensor:
    """Block-wise absmax NF4 quantization of ``weight`` (any shape)."""
    if block_size <= 0 or block_size % 2:
        raise ValueError(f"NF4 block_size must be a positive even number, got {block_size}")
    w = weight.detach().float().reshape(-1)
    n = w.numel()
    pad = (-n) % block_size
    if pad:
        w = torch.cat([w, w.new_zeros(pad)])
    blocks = w.view(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normalized = blocks / safe[:, None]
    book = NF4_CODE_BOOK.to(w.device)
    # Nearest level = bucket index over the midpoints between consecutive levels.
    midpoints = (book[1:] + book[:-1]) / 2
    idx = torch.bucketize(normalized.reshape(-1), midpoints).to(torch.uint8)
    codes = (idx[0::2] << 4) | idx[1::2]

    if not double_quant:
        return NF4Tensor(codes, None, None, torch.zeros(()), weight.shape, n, block_size, scale_block_size, absmax=absmax)

    # Double quantization: int8 absmax-quantize the mean-centred scales, 256 per group.
    mean = absmax.mean()
    centred = absmax - mean
    pad2 = (-centred.numel()) % scale_block_size
    if pad2:
        centred = torch.cat([centred, centred.new_zeros(pad2)])
    groups = centred.view(-1, scale_block_size)
    scale_scales = groups.abs().amax(dim=1).clamp_min(1e-12)
    scale_codes = torch.round(groups / scale_scales[:, None] * 127.0).clamp(-127, 127).to(torch.int8).reshape(-1)
    return NF4Tensor(codes, scale_codes, scale_scales, mean, weight.shape, n, block_size, scale_block_size)


class _NF4LinearFunction(torch.autograd.Function):
    """y = x W^T + b with W dequantized in forward AND again in backward (nothing dense is saved)."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        w = module.dense_weight(x.dtype)
        return F.linear(x, w, None)

    @staticmethod
    def backward(ctx, grad_out):
        w = ctx.module.dense_weight(grad_out.dtype)
        return grad_out @ w, None


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight lives in NF4. The bias (if any) stays in full precision."""

    is_quantized_linear = True

    def __init__(self, in_features: int, out_features: int, qweight: NF4Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = qweight.block_size
        self.register_buffer("codes", qweight.codes)
        self.register_buffer("scale_codes", qweight.scale_codes if qweight.scale_codes is not None else qweight.absmax)
        self.register_buffer("scale_scales", qweight.scale_scales if qweight.scale_scales is not None else torch.zeros(0))
        self.register_buffer("scale_mean", qweight.scale_mean.reshape(()))
        self._double_quant = qweight.scale_codes is not None
        self._scale_block_size = qweight.scale_block_size
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True) -> "NF4Linear":
        q = quantize_nf4(linear.weight, block_size=block_size, double_quant=double_quant)
        return cls(linear.in_features, linear.out_features, q, linear.bias)

    def qweight(self) -> NF4Tensor:
        if self._double_quant:
            return NF4Tensor(self.codes, self.scale_codes, self.scale_scales, self.scale_mean,
                             (self.out_features, self.in_features), self.out_features * self.in_features,
                             self.block_size, self._scale_block_size)
        return NF4Tensor(self.codes, None, None, self.scale_mean, (self.out_features, self.in_features),
                         self.out_features * self.in_features, self.block_size, self._scale_block_size,
                         absmax=self.scale_codes)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.qweight().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _NF4LinearFunction.apply(x, self)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.codes.device)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def storage_bytes(self) -> int:
        return self.qweight().nbytes() + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        bits = 8 * self.qweight().nbytes() / (self.in_features * self.out_features)
        return f"in={self.in_features}, out={self.out_features}, block={self.block_size}, bits/param={bits:.3f}"


def nf4_error_bound(weight: torch.Tensor, q: NF4Tensor) -> torch.Tensor:
    """Element-wise worst-case |w - dequant(q)|.

    w = (w/a) a and dequant = c * a_hat with |w/a - c| <= max half gap and |c| <= 1, so
    |w - c a_hat| <= half_gap * a + |a - a_hat|.
    """
    w = weight.detach().float().reshape(-1)
    pad = (-w.numel()) % q.block_size
    if pad:
        w = torch.cat([w, w.new_zeros(pad)])
    a = w.view(-1, q.block_size).abs().amax(dim=1)
    a_hat = q.block_absmax()[: a.numel()]
    per_block = NF4_MAX_HALF_GAP * a + (a - a_hat).abs()
    bound = per_block[:, None].expand(-1, q.block_size).reshape(-1)[: q.numel]
    # float32 rounding of the products above
    return (bound * (1 + 1e-5) + 1e-7).view(q.shape)


def bits_per_parameter(block_size: int = 64, scale_block_size: int = 256, double_quant: bool = True) -> float:
    """4 bits + scale overhead: 32/64 = 0.5 without, 8/64 + 32/(64*256) = 0.127 with double quant."""
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * scale_block_size)
    return 4 + 32 / block_size


__all__ = ["NF4_CODE_BOOK", "NF4Linear", "NF4Tensor", "quantize_nf4", "nf4_code_book", "nf4_error_bound",
           "bits_per_parameter"]
