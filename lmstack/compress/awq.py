"""Activation-aware scaling before quantization: AWQ (weight-only) and SmoothQuant (W8A8).

Both rewrite ``y = W x`` as ``y = (W diag(s)) (x / s)`` before quantizing, which is exact in real
arithmetic and changes only what the rounding hurts.
- AWQ (Lin et al. 2023, arXiv:2306.00978): weights that meet large activations matter most; scaling
  their input channel up (``s_j = mean|x_j|^alpha``) shrinks their relative rounding error. ``alpha``
  is searched on a grid to minimise the layer's output error on calibration inputs (alpha = 0 is
  plain RTN, so the search never does worse than RTN on those inputs). The grid also holds
  AutoAWQ's weight-aware candidates ``mean|x|^alpha / w_mean^(1 - alpha)`` (its default
  ``duo_scaling``; llm-compressor's ``duo_scaling="both"`` searches both families like here).
  Then, as in the paper's code, each group's covered range is shrunk by the ratio that minimises
  its output error. Scope "linear" (default) gives each linear its own scale, applied to its input at
  run time; scope "group" is the paper's deployment form: one scale for all linears reading one
  norm's output (q/k/v, gate/up), chosen on the attention / FFN output and folded into the norm.
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
               grid: int = 20, duo: bool = True) -> tuple[torch.Tensor, float, float]:
    """Best per-input-channel scale for ``weight [out, in]`` on calibration ``inputs [n, in]``
    (``duo``: also AutoAWQ's weight-aware candidates, see :func:`scale_candidates`).

    Returns (scale [in], best alpha, relative output error at the best alpha).
    """
    w = weight.detach().float()
    x = inputs.float()
    reference = x @ w.t()
    denom = reference.pow(2).mean().clamp_min(1e-12)
    mean_abs = act_abs_mean.float().clamp_min(1e-8)

    def output_error(s: torch.Tensor) -> float:
        approx = (x / s[None, :]) @ _dequant(*rtn_quantize(w * s[None, :], spec)).t()
        return float((approx - reference).pow(2).mean() / denom)

    return best_scale(mean_abs, weight_group_mean([w], [spec]) if duo else None, grid, output_error)


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
                        grid: int = 20, clip: bool = True, duo: bool = True) -> tuple[QuantLinear, dict]:
    """AWQ: the scale search, then (``clip``) the per-group range clipping search on the scaled weight."""
    s, alpha, err = awq_search(linear.weight, inputs, act_abs_mean, spec, grid, duo)
    q, info = awq_quantize_scaled(linear, s, inputs, spec, clip)
    return q, {"alpha": alpha, "rel_error": err, **info}


def _candidate_scale(mean_abs: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    s = mean_abs.pow(alpha)
    if w_mean is not None:
        s = s / w_mean.pow(1 - alpha)
    s = s / (s.max() * s.min()).sqrt()  # keep scales around 1 (the paper's normalisation)
    return s.clamp(1e-4, 1e4).half().float()


def weight_group_mean(weights: list[torch.Tensor], specs: list[QuantSpec]) -> torch.Tensor:
    """Per input channel: ``|W|`` relative to its quantization group's max, averaged over the output
    rows of all ``weights`` (AutoAWQ's ``w_mean``, for its "duo" scales ``mean|x|^a / w_mean^(1-a)``)."""
    parts = []
    for w, spec in zip(weights, specs):
        out, inp = w.shape
        g = inp // spec.groups_for(inp)
        wg = w.detach().float().abs().view(out, inp // g, g)
        parts.append((wg / wg.amax(-1, keepdim=True).clamp_min(1e-8)).view(out, inp))
    return torch.cat(parts).mean(0).clamp_min(1e-4)


def scale_candidates(mean_abs: torch.Tensor, w_mean: torch.Tensor | None, grid: int):
    """(alpha, duo, scale) for alpha on ``grid`` points in [0, 1): the paper's ``s = mean|x|^alpha`` and,
    with ``w_mean``, also AutoAWQ's ``mean|x|^alpha / w_mean^(1 - alpha)`` (its default search). alpha = 0
    of the first family is s = 1: plain RTN stays a candidate."""
    for k in range(grid):
        alpha = k / grid
        yield alpha, False, _candidate_scale(mean_abs, alpha)
        if w_mean is not None:
            yield alpha, True, _candidate_scale(mean_abs, alpha, w_mean)


def best_scale(mean_abs: torch.Tensor, w_mean: torch.Tensor | None, grid: int, error_of) -> tuple[torch.Tensor, float, float]:
    """The candidate scale (``scale_candidates``; fp16-rounded, exactly the stored value) with the lowest
    ``error_of(scale)``; the first wins a tie. Returns (scale, its alpha, its error)."""
    best = (float("inf"), 0.0, torch.ones_like(mean_abs))
    for alpha, _, s in scale_candidates(mean_abs, w_mean, grid):
        err = error_of(s)
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], best[1], best[0]


class ModuleOutputLoss:
    """Relative squared error of a module's output on recorded calls when some of its linears
    compute with other weights: the loss AWQ's scale search minimises for a group of linears that
    share an input (AutoAWQ inspects the attention module for q/k/v and the FFN for gate/up)."""

    def __init__(self, module: torch.nn.Module, linears: list[torch.nn.Linear], calls: list[tuple[tuple, dict]]):
        if not calls:
            raise ValueError("AWQ group search: no recorded calls of the module (calibration data too small?)")
        self.module, self.linears, self.calls = module, linears, calls
        with torch.no_grad():
            self.reference = [module(*args, **kwargs).float() for args, kwargs in calls]
        self.power = sum(float(r.pow(2).sum()) for r in self.reference)

    @torch.no_grad()
    def __call__(self, weights: list[torch.Tensor]) -> float:
        originals = [lin.weight.data for lin in self.linears]
        try:
            for lin, w in zip(self.linears, weights):
                lin.weight.data = w.to(lin.weight.dtype)
            err = sum(float((self.module(*a, **kw).float() - ref).pow(2).sum())
                      for (a, kw), ref in zip(self.calls, self.reference))
        finally:
            for lin, w in zip(self.linears, originals):
                lin.weight.data = w
        return err / max(self.power, 1e-12)


def awq_group_search(weights: list[torch.Tensor], specs: list[QuantSpec], act_abs_mean: torch.Tensor,
                     loss: "ModuleOutputLoss", grid: int = 20, duo: bool = True) -> tuple[torch.Tensor, float, float]:
    """One scale per input channel shared by every linear reading that input (Lin et al. 2023, Sec. 3.2:
    the scale is chosen per input and folded into the op that produces it). Each candidate
    ``s = mean|x|^alpha`` (alpha on ``grid`` points in [0, 1)) is judged by ``loss`` with every
    weight replaced by ``Q(W diag(s)) diag(s)^-1``, what the scaled layers compute (``duo``: also
    AutoAWQ's weight-aware candidates). alpha = 0 is RTN.
    Returns (scale [in], best alpha, relative module output error)."""
    mean_abs = act_abs_mean.float().clamp_min(1e-8)
    ws = [w.detach().float() for w in weights]

    def module_error(s: torch.Tensor) -> float:
        return loss([_dequant(*rtn_quantize(w * s[None, :], spec)) / s[None, :] for w, spec in zip(ws, specs)])

    return best_scale(mean_abs, weight_group_mean(ws, specs) if duo else None, grid, module_error)


def fold_scale_into_norm(norm: torch.nn.Module, scale: torch.Tensor) -> None:
    """``norm(x) / s``: divide the norm's affine weight (and bias) by ``scale``, so the linears that read
    it need no runtime input scale (AWQ folds its scales into the previous op)."""
    with torch.no_grad():
        norm.weight.div_(scale.to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(scale.to(norm.bias.dtype))


def awq_quantize_scaled(linear: torch.nn.Linear, scale: torch.Tensor, inputs: torch.Tensor, spec: QuantSpec,
                        clip: bool = True, runtime_scale: bool = True) -> tuple[QuantLinear, dict]:
    """Quantize ``W diag(scale)`` (clipping searched on the scaled inputs ``x / scale``, as in the paper:
    clipping after scaling). ``runtime_scale``: store ``scale`` as the layer's input scale; without it the
    caller has folded ``1 / scale`` into whatever produces the input."""
    scaled = linear.weight.detach().float() * scale[None, :]
    ratios = clip_search(scaled, inputs.float() / scale[None, :], spec) if clip else None
    codes, scales, zeros = rtn_quantize(scaled, spec, ratios)
    q = QuantLinear.from_codes(codes, scales, zeros, spec, bias=linear.bias,
                               input_scale=scale if runtime_scale else None)
    return q, ({"mean_clip": float(ratios.mean())} if ratios is not None else {})


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


__all__ = ["awq_search", "best_scale", "awq_quantize_linear", "awq_group_search", "awq_quantize_scaled", "scale_candidates", "weight_group_mean", "fold_scale_into_norm",
           "ModuleOutputLoss", "smoothquant_linear"]
