"""Weight pruning masks: magnitude, Wanda, and N:M patterns (SparseGPT lives in gptq.py).

Every mask is computed per output row (each row loses the same number of weights), which is what
Wanda found works best for LLMs and what makes the requested sparsity exact:
- magnitude: score ``|W_ij|`` (the classic baseline);
- Wanda (Sun et al. 2023, arXiv:2306.11695): score ``|W_ij| * ||X_j||_2``, the weight times the
  norm of its input feature over the calibration tokens; no weight update;
- N:M: in every M consecutive input columns of a row, keep the N highest scores (2:4 is what
  sparse tensor cores run).
A mask is ``True`` where the weight is kept.
"""

from __future__ import annotations

import torch


def parse_n_m(text: str) -> tuple[int, int] | None:
    """"2:4" -> (2, 4) (keep 2 of every 4); "" -> None."""
    if not text:
        return None
    try:
        n, m = (int(p) for p in text.split(":"))
    except ValueError:
        raise ValueError(f"n_m={text!r}: expected 'N:M' such as '2:4' (keep N of every M weights)") from None
    if not 0 < n < m:
        raise ValueError(f"n_m={text!r}: need 0 < N < M")
    return n, m


def unstructured_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``round(sparsity * in)`` lowest scores of each row."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    out, inp = score.shape
    keep = torch.ones_like(score, dtype=torch.bool)
    n_drop = int(round(sparsity * inp))
    if n_drop:
        drop = torch.topk(score, n_drop, dim=1, largest=False).indices
        keep.scatter_(1, drop, False)
    return keep


def n_m_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive scores in each row."""
    out, inp = score.shape
    if inp % m:
        raise ValueError(f"N:M sparsity {n}:{m} needs in_features ({inp}) divisible by {m}")
    groups = score.reshape(out, inp // m, m)
    keep_idx = torch.topk(groups, n, dim=2).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, keep_idx, True)
    return keep.reshape(out, inp)


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_score(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||``; ``input_sq_norm[j]`` is the (mean) squared norm of input feature j."""
    return weight.detach().abs().float() * input_sq_norm.float().clamp_min(0).sqrt()[None, :]


def make_mask(score: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None) -> torch.Tensor:
    return n_m_mask(score, *n_m) if n_m is not None else unstructured_mask(score, sparsity)


def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).float().mean())


__all__ = ["parse_n_m", "unstructured_mask", "n_m_mask", "magnitude_score", "wanda_score", "make_mask", "sparsity_of"]
