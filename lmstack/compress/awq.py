"""Activation-aware scaling before quantization: AWQ (weight-only) and SmoothQuant (W8A8).

Both rewrite ``y = W x`` as ``y = (W diag(s)) (x / s)`` before quantizing, which is exact in real
arithmetic and changes only what the rounding hurts.
- AWQ (Lin et al. 2023, arXiv:2306.00978): weights that meet large activations matter most; scaling
  their input channel up (``s_j = mean|x_j|^alpha``) shrinks their relative rounding error. ``alpha``
  is searched on a grid to minimise the layer's output error on calibration inputs (alpha = 0 is
  plain RTN, so the search never does worse than RTN on those inputs). Then, as in the paper's
  code, each group's covered range is shrunk by the ratio that minimises its output error.
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


def clip_search(weight: torch.Tensor, inputs: torch.Tensor, spec: QuantSpec, ratios: int = 10,
                min_ratio: float = 0.5, max_rows: int = 256) -> torch.Tensor:
    """AWQ's range clipping: for every (output row, group) the ratio in [min_ratio, 1] of the weight
    range to cover that minimises the group's own output error ``((Q(w) - w) . x)^2`` on the
    calibration inputs (groups are treated independently, as in the paper). Returns [out, G]."""
    w = weight.detach().float()
    x = inputs.float()[:max_rows]
    out, inp = w.shape
    n_groups = spec.groups_for(inp)
    xg = x.view(x.shape[0], n_groups, inp // n_groups)
    best_err = torch.full((out, n_groups), float("inf"))
    best = torch.ones(out, n_groups)
    for k in range(ratios + 1):
        r = 1.0 - (1.0 - min_ratio) * k / ratios
        clip = torch.full((out, n_groups), r)
        codes, scales, zeros = rtn_quantize(w, spec, clip)
        diff = (_dequant(codes, scales, zeros) - w).view(out, n_groups, -1)
        err = torch.einsum("ogk,ngk->ogn", diff, xg).pow(2).mean(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, clip, best)
    return best


def awq_quantize_linear(linear: torch.nn.Linear, inputs: torch.Tensor, act_abs_mean: torch.Tensor, spec: QuantSpec,
                        grid: int = 20, clip: bool = True) -> tuple[QuantLinear, dict]:
    """AWQ: the scale search, then (``clip``) the per-group range clipping search on the scaled weight."""
    s, alpha, err = awq_search(linear.weight, inputs, act_abs_mean, spec, grid)
    scaled = linear.weight.detach().float() * s[None, :]
    ratios = clip_search(scaled, inputs.float() / s[None, :], spec) if clip else None
    codes, scales, zeros = rtn_quantize(scaled, spec, ratios)
    q = QuantLinear.from_codes(codes, scales, zeros, spec, bias=linear.bias, input_scale=s)
    info = {"alpha": alpha, "rel_error": err}
    if ratios is not None:
        info["mean_clip"] = float(ratios.mean())
    return q, info


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
