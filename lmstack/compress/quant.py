"""Integer weight quantization: one storage format for RTN, GPTQ, AWQ and SmoothQuant.

A weight ``W [out, in]`` is cut into groups of ``group_size`` consecutive input columns per row
(``group_size = 0``: one group per row, i.e. per-channel). Each group has a scale ``s`` (fp16) and,
when asymmetric, an integer zero point ``z``; a value is stored as the unsigned code
``q = clamp(round(w / s) + z, 0, 2^b - 1)`` and read back as ``(q - z) * s``.

- asymmetric: ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``: the grid covers [min, max];
- symmetric: ``z = 2^(b-1)`` for every group (not stored), ``s = absmax / (2^(b-1) - 1)``: the grid
  covers [-absmax, absmax] and has one spare negative level.

Codes are bit-packed (b = 2, 3, 4 or 8 bits per weight, no padding inside a row beyond the last
byte), so a 4-bit group-128 matrix costs 4 + 16/128 bits per weight (+ 8/128 for the zero points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is quantized."""

    bits: int = 4
    group_size: int = 128  # input columns per scale; 0 = one scale per output row (per-channel)
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"quantization bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.group_size < 0:
            raise ValueError(f"group_size must be >= 0 (0 = per output channel), got {self.group_size}")

    @property
    def max_code(self) -> int:
        return 2 ** self.bits - 1

    def groups_for(self, in_features: int) -> int:
        g = self.group_size or in_features
        if in_features % g:
            raise ValueError(f"group_size={g} does not divide the layer's {in_features} input features; "
                             f"pick a divisor (or 0 for per-channel)")
        return in_features // g

    def fitted(self, in_features: int) -> "QuantSpec":
        """This spec, or with the largest halving of ``group_size`` (>= 8) that divides ``in_features``
        (per-channel if none does): e.g. a SwiGLU down projection with 704 inputs gets groups of 64."""
        g = self.group_size
        while g and in_features % g:
            g = g // 2 if g // 2 >= 8 and g % 2 == 0 else 0
        return self if g == self.group_size else QuantSpec(self.bits, g, self.symmetric)

    def to_dict(self) -> dict:
        return asdict(self)


def group_params(w: torch.Tensor, spec: QuantSpec, clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of ``w [rows, cols]`` (one group): shapes [rows].

    ``clip [rows]`` (in (0, 1]) shrinks the covered range (values beyond it saturate), as AWQ's
    clipping search chooses. The scale is rounded to fp16 *before* it is used, so the codes are
    computed against exactly the scale that will be stored.
    """
    w = w if w.is_floating_point() and w.dtype != torch.float16 else w.float()
    shrink = clip.to(w.dtype) if clip is not None else 1.0
    if spec.symmetric:
        absmax = w.abs().amax(dim=1) * shrink
        scale = absmax / (2 ** (spec.bits - 1) - 1)
        zero = torch.full_like(scale, float(2 ** (spec.bits - 1)))
    else:
        lo = w.amin(dim=1).clamp(max=0) * shrink  # keep 0 on the grid (padding and pruned zeros stay exact)
        hi = w.amax(dim=1).clamp(min=0) * shrink
        scale = (hi - lo) / spec.max_code
        zero = None
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).clamp(6.1e-5, 6.5e4)
    # stored as fp16, rounded up so the grid still spans the group's range
    half = scale.to(torch.float16)
    half = torch.where(half.to(scale.dtype) < scale, torch.nextafter(half, torch.full_like(half, float("inf"))), half)
    scale = half.to(w.dtype)
    if zero is None:
        zero = torch.round(-lo / scale).clamp(0, spec.max_code)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, max_code: int) -> torch.Tensor:
    """Codes of ``w [rows, cols]`` with per-row ``scale``/``zero`` (shape [rows] or [rows, 1])."""
    if scale.dim() == 1:
        scale, zero = scale[:, None], zero[:, None]
    w = w if w.is_floating_point() else w.float()
    return torch.clamp(torch.round(w / scale) + zero, 0, max_code)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, max_code: int) -> torch.Tensor:
    if scale.dim() == 1:
        scale, zero = scale[:, None], zero[:, None]
    return (quantize_codes(w, scale, zero, max_code) - zero) * scale


def rtn_quantize(weight: torch.Tensor, spec: QuantSpec,
                 clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest (``clip [out, G]``: per-group range ratios). Returns (codes [out, in] int16,
    scales [out, G], zeros [out, G])."""
    out, inp = weight.shape
    n_groups = spec.groups_for(inp)
    g = inp // n_groups
    grouped = weight.detach().float().reshape(out * n_groups, g)
    scale, zero = group_params(grouped, spec, None if clip is None else clip.reshape(-1))
    codes = quantize_codes(grouped, scale, zero, spec.max_code)
    return codes.reshape(out, inp).to(torch.int16), scale.view(out, n_groups), zero.view(out, n_groups)


# ----------------------------------------------------------------------------- bit packing


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit codes [rows, cols] into bytes [rows, ceil(cols * bits / 8)]."""
    rows, cols = codes.shape
    c = codes.to(torch.int32)
    if bits == 8:
        return c.to(torch.uint8)
    pad = (-cols) % 8
    if pad:
        c = F.pad(c, (0, pad))
    # every value becomes `bits` little-endian bits; the bit stream is cut into bytes
    shifts = torch.arange(bits, dtype=torch.int32, device=c.device)
    bit_stream = ((c[..., None] >> shifts) & 1).reshape(rows, -1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=c.device))
    packed = (bit_stream * weights).sum(-1).to(torch.uint8)
    return packed[:, : (cols * bits + 7) // 8]


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 codes [rows, cols]."""
    p = packed.to(torch.int32)
    if bits == 8:
        return p[:, :cols]
    rows = p.shape[0]
    bit_stream = (p[..., None] >> torch.arange(8, dtype=torch.int32, device=p.device)) & 1
    bit_stream = bit_stream.reshape(rows, -1)
    n = (bit_stream.shape[1] // bits) * bits
    values = bit_stream[:, :n].reshape(rows, -1, bits)
    codes = (values << torch.arange(bits, dtype=torch.int32, device=p.device)).sum(-1)
    return codes[:, :cols]


# ----------------------------------------------------------------------------- the module


class QuantLinear(nn.Module):
    """A frozen linear layer stored as packed integer codes + per-group fp16 scales.

    Optional extras, used by the calibrated methods:
    - ``perm``: GPTQ with act-order quantizes columns in a permuted order; codes and groups are
      stored in that order and ``perm`` maps them back (``W[:, perm] = stored``);
    - ``input_scale``: AWQ and SmoothQuant compute ``(W diag(s)) (x / s)``; the stored weight is
      ``W diag(s)`` and the input is divided by ``s`` here;
    - ``act_bits = 8``: SmoothQuant W8A8: each input row is quantized to int8 (dynamic, per token,
      symmetric) before the product.
    The forward pass dequantizes the weight (cached until the buffers change; see ``cache_dense``).
    """

    is_quantized_linear = True
    # Keep the dequantized matrix between calls (fast, but as much memory as the fp32 layer while in
    # use); set False on the class or an instance to dequantize at every call instead.
    cache_dense = True

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = False,
                 act_order: bool = False, input_scaled: bool = False, act_bits: int = 0):
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        self.act_bits = act_bits
        if act_bits not in (0, 8):
            raise ValueError(f"act_bits must be 0 (weight-only) or 8 (W8A8), got {act_bits}")
        n_groups = spec.groups_for(in_features)
        self.register_buffer("qweight", torch.zeros(out_features, (in_features * spec.bits + 7) // 8, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float16))
        self.register_buffer("zeros", None if spec.symmetric else torch.zeros(out_features, n_groups, dtype=torch.uint8))
        perm_dtype = torch.int16 if in_features <= 32767 else torch.int32
        self.register_buffer("perm", torch.arange(in_features, dtype=perm_dtype) if act_order else None)
        # fp16 like the group scales; AWQ/SmoothQuant round their scales to fp16 before using them
        self.register_buffer("input_scale", torch.ones(in_features, dtype=torch.float16) if input_scaled else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._cache: tuple | None = None

    # -- construction
    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, spec: QuantSpec,
                   bias: torch.Tensor | None = None, perm: torch.Tensor | None = None,
                   input_scale: torch.Tensor | None = None, act_bits: int = 0) -> "QuantLinear":
        """``codes [out, in]`` (in stored column order), ``scales``/``zeros`` [out, G]."""
        out, inp = codes.shape
        m = cls(inp, out, spec, bias=bias is not None, act_order=perm is not None,
                input_scaled=input_scale is not None, act_bits=act_bits)
        if int(codes.min()) < 0 or int(codes.max()) > spec.max_code:
            raise ValueError(f"codes outside [0, {spec.max_code}] for {spec.bits}-bit quantization")
        m.qweight.copy_(pack_codes(codes, spec.bits))
        m.scales.copy_(scales.to(torch.float16))
        if not spec.symmetric:
            m.zeros.copy_(zeros.round().to(torch.uint8))
        if perm is not None:
            m.perm.copy_(perm.to(m.perm.dtype))
        if input_scale is not None:
            if not torch.equal(input_scale.to(torch.float16).to(input_scale.dtype), input_scale):
                raise ValueError("input_scale must be representable in fp16 (round it with .half() before quantizing)")
            m.input_scale.copy_(input_scale.to(torch.float16))
        if bias is not None:
            m.bias.copy_(bias.detach().float())
        return m.to(codes.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        """Round-to-nearest quantization of an ``nn.Linear``."""
        codes, scales, zeros = rtn_quantize(linear.weight, spec)
        return cls.from_codes(codes, scales, zeros, spec, bias=linear.bias)

    # -- reading
    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, self.spec.bits, self.in_features)

    def zero_points(self) -> torch.Tensor:
        if self.spec.symmetric:
            return torch.full(self.scales.shape, float(2 ** (self.spec.bits - 1)), device=self.scales.device)
        return self.zeros.float()

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the layer computes with, ``[out, in]``, with ``input_scale`` NOT folded in."""
        key = (self.qweight._version, self.scales._version, self.qweight.data_ptr(), dtype)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        n_groups = self.scales.shape[1]
        g = self.in_features // n_groups
        codes = self.codes().float().view(self.out_features, n_groups, g)
        w = ((codes - self.zero_points()[..., None]) * self.scales.float()[..., None]).view(self.out_features, -1)
        if self.perm is not None:
            unpermuted = torch.empty_like(w)
            unpermuted[:, self.perm.long()] = w
            w = unpermuted
        w = w.to(dtype)
        self._cache = (key, w) if self.cache_dense else None
        return w

    def effective_weight(self) -> torch.Tensor:
        """The dense matrix ``W`` with ``y = x W^T + b`` (input scaling folded back in)."""
        w = self.dense_weight()
        return w / self.input_scale.float()[None, :] if self.input_scale is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if self.act_bits == 8:
            x = quantize_activations_int8(x)
        y = F.linear(x, self.dense_weight(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.qweight.device)
        with torch.no_grad():
            linear.weight.copy_(self.effective_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def storage_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers() if b is not None)

    def quant_meta(self) -> dict:
        return {"kind": "int", **self.spec.to_dict(), "act_order": self.perm is not None,
                "input_scaled": self.input_scale is not None, "act_bits": self.act_bits,
                "bias": self.bias is not None, "in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_meta(cls, meta: dict) -> "QuantLinear":
        spec = QuantSpec(meta["bits"], meta["group_size"], meta["symmetric"])
        return cls(meta["in_features"], meta["out_features"], spec, bias=meta["bias"], act_order=meta["act_order"],
                   input_scaled=meta["input_scaled"], act_bits=meta["act_bits"])

    def extra_repr(self) -> str:
        bits = 8 * self.storage_bytes() / (self.in_features * self.out_features)
        return (f"in={self.in_features}, out={self.out_features}, bits={self.spec.bits}, group={self.spec.group_size}, "
                f"sym={self.spec.symmetric}, act_bits={self.act_bits}, bits/weight={bits:.3f}")


def quantize_activations_int8(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token symmetric int8 (SmoothQuant's activation side), returned dequantized:
    ``round(x / s) * s`` with ``s = absmax(row) / 127``."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.round(x / scale).clamp(-127, 127) * scale


__all__ = ["QuantSpec", "QuantLinear", "SUPPORTED_BITS", "rtn_quantize", "group_params", "quantize_codes",
           "fake_quantize", "pack_codes", "unpack_codes", "quantize_activations_int8"]
