"""One FLOP count for the whole repository: the trainer's MFU, the report and every benchmark.

Per token, a matmul with an ``[out, in]`` weight costs ``2 * out * in`` FLOPs forward and twice
that backward, so training costs ``6 * N`` for the N weights that tokens are multiplied by
(Kaplan et al. 2020, sec. 2.1). N includes the ``lm_head`` even when it is tied to the
embedding: the tied matrix is stored once but multiplied with every token, and on a small
model it is a large share of the work. Embedding lookups are gathers, not matmuls, so they are
free. A routed MoE layer counts its router, ``top_k`` experts and the shared expert.
Attention adds ``2 * T * d_attn`` forward FLOPs per token and layer for the scores and the
weighted values, halved because a causal mask leaves half of the T x T scores
(PaLM, Chowdhery et al. 2022, appendix B, without the halving), so ``6 * L * T * d_attn`` in
training.
"""

from __future__ import annotations

from torch import nn


def matmul_params(model: nn.Module) -> int:
    """Weights a token is multiplied by in one forward pass (see the module docstring)."""
    from lmstack.model.transformer import MoE

    total = 0

    def visit(module: nn.Module) -> None:
        nonlocal total
        if isinstance(module, MoE):
            total += module.router.weight.numel()
            per_expert = sum(p.numel() for p in module.experts[0].parameters() if p.dim() == 2)
            total += module.top_k * per_expert
            if module.shared_expert is not None:
                total += sum(p.numel() for p in module.shared_expert.parameters() if p.dim() == 2)
            return
        if isinstance(module, nn.Linear):
            total += module.weight.numel()
            return
        if isinstance(module, nn.RNNBase):  # LSTM/GRU: input and recurrent weights, every step
            total += sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight_"))
            return
        for child in module.children():
            visit(child)

    visit(model)
    return total


def flops_per_token(model: nn.Module, seq_len: int, *, training: bool = True) -> float:
    """Matmul FLOPs per token at context ``seq_len``: forward only, or forward + backward."""
    own = getattr(model, "attention_flops_per_token", None)  # families without softmax attention
    if own is not None:
        forward = 2.0 * matmul_params(model) + own(seq_len)
        return 3.0 * forward if training else forward
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "n_layers", 0)
    d_attn = getattr(cfg, "n_heads", 0) * getattr(cfg, "head_dim", 0)
    forward = 2.0 * matmul_params(model) + 2.0 * layers * seq_len * d_attn
    return 3.0 * forward if training else forward
