"""GPTQ and SparseGPT: one layer at a time, columns in order, errors pushed onto later columns.

Both minimise ``||W X - W' X||^2`` for calibration inputs ``X`` of one linear layer, whose
Hessian is ``H = 2 X X^T``. Quantizing (or pruning) column ``j`` leaves an error ``e``; the
optimal compensation of the not-yet-processed columns is ``-e / [H^-1]_jj * [H^-1]_{j, j+1:}``
(Optimal Brain Surgeon). GPTQ (Frantar et al. 2022, arXiv:2210.17323, Alg. 1) makes this fast:
- the rows of the upper Cholesky factor of ``H^-1`` are exactly the ``[H^-1]_{j, j:}`` rows of the
  successively reduced inverses, so no inverse needs updating;
- "lazy batch" updates: inside a block of B columns updates go to the block only; the rest of the
  matrix gets one rank-B update per block;
- "act order": process columns by decreasing ``diag(H)`` (largest activations first).
SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774) is the same loop with "set to zero" in
place of "round to the grid", choosing the mask per block by ``w^2 / [H^-1]_jj^2``.
"""

from __future__ import annotations

import torch

from .quant import QuantSpec, group_params, quantize_codes


class HessianAccumulator:
    """Running ``H = 2/n sum_i x_i x_i^T`` over calibration inputs of one linear layer (float64),
    plus the per-channel squared norms (Wanda) and absolute maxima (SmoothQuant) for free."""

    def __init__(self, in_features: int, device="cpu"):
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.abs_max = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        rows = x.shape[0]
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        # one batch's x^T x in the input's precision (fp32 activations: 2-4x faster than fp64), summed in fp64;
        # incremental mean of 2 x x^T
        self.hessian *= self.n / (self.n + rows)
        self.n += rows
        self.hessian += (2.0 / self.n) * (x.t() @ x).double()
        self.abs_max = torch.maximum(self.abs_max, x.abs().amax(dim=0).float())
        self.abs_sum += x.abs().sum(dim=0).double()

    def channel_sq_norm(self) -> torch.Tensor:
        """``||X_j||^2 / n`` per input channel (the Hessian's diagonal / 2)."""
        return (torch.diagonal(self.hessian) / 2).float()

    def channel_abs_mean(self) -> torch.Tensor:
        return (self.abs_sum / max(self.n, 1)).float()


def _prepare(weight: torch.Tensor, hessian: torch.Tensor, percdamp: float, act_order: bool):
    """Dead inputs, optional act-order permutation, damping; returns (W, upper Cholesky of H^-1, perm)."""
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0  # an input that is always zero carries no information
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    damp = percdamp * torch.diagonal(h).mean()
    h += damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        lower = torch.linalg.cholesky(h)
        h_inv = torch.cholesky_inverse(lower)
        upper = torch.linalg.cholesky(h_inv, upper=True)
    except torch.linalg.LinAlgError as e:
        raise ValueError(f"GPTQ/SparseGPT: the calibration Hessian is not positive definite even after "
                         f"damping {percdamp}; raise percdamp or use more calibration data ({e})") from None
    return w, upper, perm


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, *, block_size: int = 128,
                  percdamp: float = 0.01, act_order: bool = False):
    """GPTQ one weight matrix ``[out, in]`` given its layer-input Hessian ``[in, in]``.

    Returns (codes [out, in], scales [out, G], zeros [out, G], perm or None); codes and groups are in
    processing order (``perm``'s) when ``act_order``. A group's scale is set when its first column
    is reached, from the weights as updated by then.
    """
    out, inp = weight.shape
    n_groups = spec.groups_for(inp)
    g = inp // n_groups
    if spec.group_size:
        # blocks hold whole groups, so a group's scale sees all its (already updated) columns
        block_size = max(block_size // g, 1) * g
    w, hinv, perm = _prepare(weight, hessian, percdamp, act_order)
    codes = torch.zeros(out, inp, dtype=torch.int16, device=w.device)
    scales = torch.zeros(out, n_groups, dtype=torch.float32, device=w.device)
    zeros = torch.zeros(out, n_groups, dtype=torch.float32, device=w.device)
    scale = zero = None
    if not spec.group_size:
        scale, zero = group_params(w, spec)
        scale, zero = scale.double(), zero.double()
        scales[:, 0], zeros[:, 0] = scale.float(), zero.float()
    for i1 in range(0, inp, block_size):
        i2 = min(i1 + block_size, inp)
        block = w[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        h_block = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if spec.group_size and col % g == 0:
                scale, zero = group_params(block[:, i:i + g], spec)
                scale, zero = scale.double(), zero.double()
                scales[:, col // g], zeros[:, col // g] = scale.float(), zero.float()
            column = block[:, i]
            q = quantize_codes(column[:, None], scale, zero, spec.max_code)[:, 0]
            codes[:, col] = q.to(torch.int16)
            dequant = (q.double() - zero) * scale
            err = (column - dequant) / h_block[i, i]
            block[:, i:] -= err[:, None] * h_block[i, i:][None, :]
            errors[:, i] = err
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]
    return codes, scales, zeros, perm


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5, *, n_m: tuple[int, int] | None = None,
                    block_size: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: returns (pruned weight [out, in] in the input dtype, keep-mask [out, in] bool).

    Unstructured: every block of ``block_size`` columns drops exactly ``round(sparsity * out * block)``
    weights, those with the smallest ``w^2 / [H^-1]_jj^2`` over all its rows (as in the paper: rows
    need not lose the same number; the layer's sparsity is exact). ``n_m = (n, m)``:
    in every m consecutive columns of a row, n weights are kept (2:4 keeps 2 of 4).
    """
    out, inp = weight.shape
    if n_m is not None:
        keep_n, group_m = n_m
        block_size = max(block_size // group_m, 1) * group_m
        if inp % group_m:
            raise ValueError(f"N:M sparsity {keep_n}:{group_m} needs in_features ({inp}) divisible by {group_m}")
    w, hinv, _ = _prepare(weight, hessian, percdamp, act_order=False)
    keep = torch.ones(out, inp, dtype=torch.bool, device=w.device)
    for i1 in range(0, inp, block_size):
        i2 = min(i1 + block_size, inp)
        block = w[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        h_block = hinv[i1:i2, i1:i2]
        block_keep = torch.ones_like(block, dtype=torch.bool)
        if n_m is None:
            # the paper's adaptive mask: the lowest scores of the whole block (all rows together), so
            # rows whose weights matter less lose more of them
            score = block ** 2 / torch.diagonal(h_block)[None, :] ** 2
            n_drop = int(round(sparsity * score.numel()))
            if n_drop:
                drop = torch.topk(score.flatten(), n_drop, largest=False).indices
                block_keep.view(-1)[drop] = False
        for i in range(i2 - i1):
            if n_m is not None and i % group_m == 0:
                cols = slice(i, i + group_m)
                score = block[:, cols] ** 2 / torch.diagonal(h_block)[None, cols] ** 2
                drop = torch.topk(score, group_m - keep_n, dim=1, largest=False).indices
                block_keep[:, cols].scatter_(1, drop, False)  # view into block_keep
            column = block[:, i]
            pruned = torch.where(block_keep[:, i], column, torch.zeros_like(column))
            err = (column - pruned) / h_block[i, i]
            block[:, i:] -= err[:, None] * h_block[i, i:][None, :]
            block[:, i] = pruned
            errors[:, i] = err
        w[:, i1:i2] = block
        keep[:, i1:i2] = block_keep
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]
    w = w * keep
    return w.to(weight.dtype), keep


__all__ = ["HessianAccumulator", "gptq_quantize", "sparsegpt_prune"]
