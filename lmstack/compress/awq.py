"""Activation-aware scaling before quantization: AWQ (weight-only) and SmoothQuant (W8A8).

Both rewrite ``y = W x`` as ``y = (W diag(s)) (x / s)`` before quantizing, which is exact in real
arithmetic and changes only what the rounding hurts.
- AWQ (Lin et al. 2023, arXiv:2306.00978): weights that meet large activations matter most; scaling
  their input channel up (``s_j = mean|x_j|^alpha``) shrinks their relative rounding error. ``alpha``
  is searched on a grid to minimise the layer's output error on calibration inputs (alpha = 0 is
  plain RTN, so the search never does worse than RTN on those inputs).
- SmoothQuant (Xiao et al. 2022, arXiv:2211.10438): activations have outlier channels that int8
  cannot represent; ``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)`` moves their range into the
  weights, after which both weights (per channel) and activations (per token) are int8.
"""

from __future__ import annotations

import torch

from .quant import QuantLinear, QuantSpec, rtn_quantize


def _dequant(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    out, inp = codes.shape
    n_groups = scales.shape[1]
    c = codes.float().view(out, n_groups, inp // n_groups)
    return ((c - zeros[..., None]) * scales[..., None]).view(out, inp)


def awq_search(weight: torch.Tensor, inputs: torch.Tensor, act_abs_mean: torch.Tensor, spec: QuantSpec,
               grid: int = 20) -> tuple[torch.Tensor, float, float]:
    """Best per-input-channel scale for ``weight [out, in]`` on calibration ``inputs [n, in]``.

    Returns (scale [in], best alpha, relative output error at the best alpha).
    """
    w = weight.detach().float()
    x = inputs.float()
    reference = x @ w.t()
    denom = reference.pow(2).mean().clamp_min(1e-12)
    mean_abs = act_abs_mean.float().clamp_min(1e-8)
    best = (float("inf"), 0.0, torch.ones_like(mean_abs))
    for k in range(grid):
        alpha = k / grid
        s = mean_abs.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # keep scales around 1 (the paper's normalisation)
        s = s.clamp(1e-4, 1e4).half().float()  # stored in fp16: search with exactly the stored value
        codes, scales, zeros = rtn_quantize(w * s[None, :], spec)
        approx = (x / s[None, :]) @ _dequant(codes, scales, zeros).t()
        err = float((approx - reference).pow(2).mean() / denom)
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1], best[0]


def awq_quantize_linear(linear: torch.nn.Linear, inputs: torch.Tensor, act_abs_mean: torch.Tensor, spec: QuantSpec,
                        grid: int = 20) -> tuple[QuantLinear, dict]:
    s, alpha, err = awq_search(linear.weight, inputs, act_abs_mean, spec, grid)
    codes, scales, zeros = rtn_quantize(linear.weight.detach().float() * s[None, :], spec)
    q = QuantLinear.from_codes(codes, scales, zeros, spec, bias=linear.bias, input_scale=s)
    return q, {"alpha": alpha, "rel_error": err}


def smoothquant_linear(linear: torch.nn.Linear, act_abs_max: torch.Tensor, alpha: float = 0.5) -> tuple[QuantLinear, dict]:
    """SmoothQuant W8A8: int8 per-channel symmetric weights of ``W diag(s)``, int8 per-token inputs."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    w = linear.weight.detach().float()
    w_max = w.abs().amax(dim=0).clamp_min(1e-5)
    s = act_abs_max.float().clamp_min(1e-5).pow(alpha) / w_max.pow(1 - alpha)
    s = s.clamp(1e-4, 1e4).half().float()  # stored in fp16
    spec = QuantSpec(bits=8, group_size=0, symmetric=True)
    codes, scales, zeros = rtn_quantize(w * s[None, :], spec)
    q = QuantLinear.from_codes(codes, scales, zeros, spec, bias=linear.bias, input_scale=s, act_bits=8)
    return q, {"max_scale": float(s.max()), "min_scale": float(s.min())}


__all__ = ["awq_search", "awq_quantize_linear", "smoothquant_linear"]
