"""Plant activation outlier channels in a model without changing what it computes.

Large LLMs develop a few hidden channels whose activations are tens of times larger than the rest
("emergent features", Dettmers et al. 2022, LLM.int8()); the weights that read those channels are
correspondingly small. AWQ and Wanda are built for that regime: they weigh each input channel by its
activation size, where RTN and magnitude pruning look at the weights alone. lmstack's small models have
no such channels (the largest input-channel norm is 2-17x the median), so there the methods tie.

``plant_outlier_channels`` builds the regime on purpose with an exact identity: multiplying channel j of
a norm's gain (and bias) by s and dividing column j of every linear that reads that norm by s leaves each
linear's output unchanged, while the activation on channel j grows s-fold and its weights shrink s-fold.
The same holds between ``up_proj`` (row j times s) and ``down_proj`` (column j divided by s) of a SwiGLU
FFN, whose hidden unit is linear in ``up_proj``'s output. Wanda's score |W_ij| * ||x_j|| is unchanged by
the rescaling, so its mask is too; magnitude pruning's is not. The benchmark measures both on the planted
model beside the natural one.
"""

from __future__ import annotations

import torch
from torch import nn


def _outlier_scale(width: int, n_channels: int, factor: float, generator: torch.Generator) -> torch.Tensor:
    scale = torch.ones(width)
    scale[torch.randperm(width, generator=generator)[:n_channels]] = factor
    return scale


def _scale_columns(linears: list[nn.Linear], scale: torch.Tensor) -> None:
    for linear in linears:
        linear.weight.div_(scale.to(linear.weight.dtype))


def _scale_norm(norm: nn.Module, scale: torch.Tensor) -> None:
    if getattr(norm, "weight", None) is None:
        raise ValueError(f"{type(norm).__name__} has no gain to rescale: plant_outlier_channels needs an affine norm")
    norm.weight.mul_(scale.to(norm.weight.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.mul_(scale.to(norm.bias.dtype))


@torch.no_grad()
def plant_outlier_channels(model: nn.Module, n_channels: int = 4, factor: float = 20.0, seed: int = 0) -> dict:
    """Rescale ``model`` in place (see the module docstring): in every block, ``n_channels`` random channels of
    the attention and FFN norms' outputs, and of a SwiGLU FFN's hidden units, grow ``factor``-fold and the
    weights reading them shrink as much. Returns what was planted."""
    blocks = getattr(model, "layers", None)
    if blocks is None or not all(hasattr(b, "attn_norm") and hasattr(b.ffn, "up_proj") for b in blocks):
        raise ValueError("plant_outlier_channels needs the dense llama-style Transformer (layers with attn_norm, "
                         "attn.q/k/v_proj, ffn_norm and an MLP); MoE and the other families are not supported")
    if n_channels < 1 or factor <= 0:
        raise ValueError(f"n_channels must be >= 1 and factor > 0, got {n_channels} and {factor}")
    g = torch.Generator().manual_seed(seed)
    d = model.config.d_model
    swiglu = 0
    for block in blocks:
        attn, ffn = block.attn, block.ffn
        s = _outlier_scale(d, n_channels, factor, g)
        _scale_norm(block.attn_norm, s)
        _scale_columns([attn.q_proj, attn.k_proj, attn.v_proj], s)
        s = _outlier_scale(d, n_channels, factor, g)
        _scale_norm(block.ffn_norm, s)
        _scale_columns([m for m in (getattr(ffn, "gate_proj", None), ffn.up_proj) if m is not None], s)
        if getattr(ffn, "ffn_type", None) == "swiglu":
            s = _outlier_scale(ffn.up_proj.out_features, n_channels, factor, g)
            ffn.up_proj.weight.mul_(s.to(ffn.up_proj.weight.dtype)[:, None])
            if ffn.up_proj.bias is not None:
                ffn.up_proj.bias.mul_(s.to(ffn.up_proj.bias.dtype))
            _scale_columns([ffn.down_proj], s)
            swiglu += 1
    return {"blocks": len(blocks), "channels_per_site": n_channels, "factor": factor, "ffn_hidden_sites": swiglu}


__all__ = ["plant_outlier_channels"]
