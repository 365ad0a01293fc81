"""Linear layer + cross-entropy fused and chunked: the ``[tokens x vocab]`` logits never exist whole.

The usual training step computes ``logits = hidden @ W.T`` for every token, keeps them (and a
float copy, the softmax and its gradient) for the backward pass, then multiplies the gradient back
through ``W``. On a small model that is the largest tensor of the step by far: 4,096 tokens x a
4,096-token vocabulary is 64 MB in fp32, written and read several times, while the whole
transformer's activations are a fraction of that.

Here the rows are processed in chunks that fit in the CPU's cache. For each chunk the forward pass
computes the logits, the loss, and at once the gradient of the loss with respect to the logits
(softmax minus one-hot, known in closed form), and multiplies it into the gradients of the hidden
states and of ``W``. Only those two gradients (``[tokens x d]`` and ``[vocab x d]``) are kept for
the backward pass, which just scales them. The matmul FLOPs are the same as the unfused step (one
forward and two gradient matmuls per chunk); the memory traffic of the logits is what goes away.
The idea is the one behind Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy
(Wijmans et al. 2024), written here in plain torch so that it runs on CPUs and GPUs alike.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# Rows per chunk: the chunk's fp32 logits take CHUNK_ELEMENTS * 4 bytes (here 2 MB), which stays in
# a CPU's L2/L3 cache while the loss and its gradient are computed from them.
CHUNK_ELEMENTS = 1 << 19


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_rows):
        n = hidden.shape[0]
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_grad else None
        grad_weight = (torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                                   device=weight.device) if want_grad else None)
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows]
            t = targets[start:start + chunk_rows]
            z = h @ weight.t()                                 # [c, V]
            z = z.to(torch.promote_types(z.dtype, torch.float32))
            squash = None
            if softcap > 0:                                    # Gemma 2's logit soft-capping
                squash = torch.tanh(z / softcap)
                z = softcap * squash
            lse = torch.logsumexp(z, dim=-1)
            valid = t != IGNORE_INDEX
            safe_t = torch.where(valid, t, torch.zeros_like(t))
            picked = z.gather(1, safe_t[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
            if not want_grad:
                continue
            # d(loss)/d(logits) = softmax - onehot(target), zero for ignored rows.
            g = z.sub_(lse[:, None]).exp_()
            g[torch.arange(g.shape[0], device=g.device), safe_t] -= 1.0
            g.mul_(valid[:, None])
            if squash is not None:
                g.mul_(1.0 - squash * squash)                  # through c * tanh(z / c)
            g = g.to(h.dtype if not torch.is_autocast_enabled(h.device.type) else
                     torch.get_autocast_dtype(h.device.type))
            grad_hidden[start:start + chunk_rows] = g @ weight.to(g.dtype)
            grad_weight += g.t() @ h.to(g.dtype)
        if want_grad:
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total.to(grad_hidden.dtype), (grad_weight * grad_total).to(ctx.weight_dtype),
                None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         softcap: float = 0.0, chunk_rows: int | None = None) -> torch.Tensor:
    """Sum over tokens of ``cross_entropy(hidden @ weight.T, targets)`` (``-100`` targets ignored),
    without materialising the logits. ``hidden`` is ``[N, d]``, ``weight`` ``[V, d]``, ``targets``
    ``[N]``. Equal to the unfused computation up to float rounding, gradients included."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
                         "must be [N, d] and [V, d]")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: targets {tuple(targets.shape)} must be [{hidden.shape[0]}]")
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, float(softcap), int(rows))
