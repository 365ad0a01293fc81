"""Position encodings: sinusoidal (Vaswani et al. 2017), rotary (Su et al. 2021) with context-extension
scalings (PI: Chen et al. 2023; NTK-aware: bloc97 2023; YaRN: Peng et al. 2023), and ALiBi (Press et al. 2022)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal table added to token embeddings (Attention Is All You Need, sec. 3.5).

    PE[pos, 2i] = sin(pos / 10000^(2i/d)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).
    Two properties follow: every value lies in [-1, 1], and PE[pos+k] = M_k @ PE[pos] where M_k is a
    block-diagonal rotation that depends on k only (see ``shift_matrix``), which is what lets
    attention learn relative offsets from absolute encodings.
    """

    def __init__(self, d_model: int, max_len: int = 4096, base: float = 10000.0):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"PositionalEncoding needs an even d_model, got {d_model}")
        self.d_model, self.base = d_model, base
        self.register_buffer("pe", self._table(max_len), persistent=False)

    def frequencies(self) -> torch.Tensor:
        return self.base ** (-torch.arange(0, self.d_model, 2, dtype=torch.float64) / self.d_model)

    def _table(self, length: int) -> torch.Tensor:
        angles = torch.arange(length, dtype=torch.float64)[:, None] * self.frequencies()[None, :]
        pe = torch.empty(length, self.d_model, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(angles)
        pe[:, 1::2] = torch.cos(angles)
        return pe.float()

    def shift_matrix(self, k: int) -> torch.Tensor:
        """The [d, d] matrix M_k with PE[pos + k] = M_k @ PE[pos] for every pos."""
        m = torch.zeros(self.d_model, self.d_model, dtype=torch.float64)
        for i, w in enumerate(self.frequencies().tolist()):
            c, s = math.cos(k * w), math.sin(k * w)
            # sin(a+b) = sin a cos b + cos a sin b ; cos(a+b) = cos a cos b - sin a sin b
            m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = c, s
            m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -s, c
        return m

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """[..., T] integer positions -> [..., T, d_model] encodings."""
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 0
        if needed > self.pe.shape[0]:
            self.pe = self._table(max(needed, 2 * self.pe.shape[0])).to(self.pe.device)
        return self.pe[position_ids]


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                             original_max_len: int = 2048, beta_fast: float = 32.0,
                             beta_slow: float = 1.0) -> tuple[torch.Tensor, float]:
    """Per-pair rotation speeds for RoPE and the cos/sin magnitude (YaRN's attention temperature).

    Returns (inv_freq [head_dim/2], attention_scale).
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    if scaling == "ntk":
        # NTK-aware: stretch the base so the lowest frequency is interpolated by `factor` while the
        # highest stays (almost) unchanged: theta' = theta * factor^(d/(d-2)).
        theta = theta * factor ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (theta ** exponents)
    if scaling == "none" or factor == 1.0:
        return inv_freq, 1.0
    if scaling == "linear":
        # Position interpolation: positions are squeezed by `factor` into the trained range.
        return inv_freq / factor, 1.0
    if scaling == "ntk":
        return inv_freq, 1.0
    if scaling == "yarn":
        # YaRN "NTK-by-parts": dimensions that rotate fewer than beta_slow times over the original
        # context are interpolated, those rotating more than beta_fast times are kept, a linear ramp
        # blends the ones between; logits get a temperature sqrt(1/t) = 0.1 ln(s) + 1 (eq. 22).
        def correction_dim(rotations: float) -> float:
            return head_dim * math.log(original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        keep = 1.0 - ramp  # 1 = extrapolate (keep the original speed), 0 = interpolate
        inv_freq = (inv_freq / factor) * (1 - keep) + inv_freq * keep
        return inv_freq, 0.1 * math.log(factor) + 1.0
    raise ValueError(f"unknown RoPE scaling {scaling!r}; choose none, linear, ntk or yarn")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # Pairs (i, i + d/2) rotate together: the "half" layout used by GPT-NeoX and HF Llama, so
    # exported q/k weights need no permutation.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh]; cos/sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Caches cos/sin tables for RoPE; grows them on demand for longer contexts."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0, scaling: str = "none",
                 factor: float = 1.0, original_max_len: int = 0, beta_fast: float = 32.0,
                 beta_slow: float = 1.0):
        super().__init__()
        self.head_dim = head_dim
        self.configure(theta, scaling, factor, original_max_len or max_len, beta_fast, beta_slow,
                       max_len=max_len)

    def configure(self, theta: float, scaling: str, factor: float, original_max_len: int,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, max_len: int | None = None) -> None:
        """(Re)build the tables, e.g. to switch context-extension method on a trained model."""
        inv_freq, self.attention_scale = rope_inverse_frequencies(
            self.head_dim, theta, scaling, factor, original_max_len, beta_fast, beta_slow)
        old = getattr(self, "cos", None)
        device = old.device if old is not None else None
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        length = max_len if max_len is not None else old.shape[0]
        self._build(length)

    def _build(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(positions, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * self.attention_scale, persistent=False)
        self.register_buffer("sin", emb.sin() * self.attention_scale, persistent=False)

    def ensure_length(self, length: int) -> None:
        if length > self.cos.shape[0]:
            self._build(max(length, 2 * self.cos.shape[0]))

    def tables(self, seq_len: int, position_ids: torch.Tensor | None, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin shaped to broadcast over [B, H, T, Dh]."""
        if position_ids is None:
            self.ensure_length(seq_len)
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]  # [T, Dh]
        else:
            if position_ids.numel():
                self.ensure_length(int(position_ids.max()) + 1)
            cos, sin = self.cos[position_ids][:, None], self.sin[position_ids][:, None]  # [B,1,T,Dh]
        return cos.to(dtype), sin.to(dtype)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head-specific slopes m_h, a geometric sequence starting at 2^(-8/n) (ALiBi, sec. 3)."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads))
    # Non-power-of-two head counts: interleave slopes from the next power of two (paper's appendix).
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes)
