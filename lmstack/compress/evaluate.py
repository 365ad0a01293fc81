"""Quality of a compressed model against its uncompressed original, on the same tokens."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(reference || compressed), in nats (llama.cpp's `perplexity --kl-divergence`)."""
    ref = F.log_softmax(reference_logits.float(), dim=-1)
    got = F.log_softmax(logits.float(), dim=-1)
    return (ref.exp() * (ref - got)).sum(-1).mean()


def evaluation_windows(tokens: np.ndarray, seq_len: int, max_windows: int) -> torch.Tensor:
    """Consecutive non-overlapping windows of ``seq_len + 1`` tokens from the start of a shard."""
    n = min(max_windows, (len(tokens) - 1) // seq_len)
    if n <= 0:
        raise ValueError(f"validation shard has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    return torch.from_numpy(np.stack([np.asarray(tokens[i * seq_len:i * seq_len + seq_len + 1], dtype=np.int64)
                                      for i in range(n)]))


@torch.no_grad()
def reference_logits(reference: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """The reference model's logits per batch of ``windows``, computed once and reused for every
    compressed variant (pass the list to :func:`compare_models` as ``reference``)."""
    first = next(iter(reference.parameters()))
    return [reference(windows[i:i + batch_size, :-1].to(first.device)).logits
            for i in range(0, windows.shape[0], batch_size)]


@torch.no_grad()
def compare_models(model: nn.Module, reference: nn.Module | list | None, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """Loss / perplexity of ``model`` on ``windows [n, T+1]`` and, with a reference (a model, or its
    :func:`reference_logits` with the same batch size), the mean KL to it."""
    total_loss = total_kl = 0.0
    count = 0
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    for i in range(0, windows.shape[0], batch_size):
        batch = windows[i:i + batch_size].to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
        total_loss += float(loss)
        if reference is not None:
            ref_logits = reference[i // batch_size] if isinstance(reference, list) else reference(inputs).logits
            total_kl += float(kl_to_reference(logits, ref_logits)) * targets.numel()
        count += targets.numel()
    loss = total_loss / count
    out = {"loss": loss, "ppl": math.exp(loss)}
    if reference is not None:
        out["kl"] = total_kl / count
    return out



__all__ = ["kl_to_reference", "evaluation_windows", "compare_models", "reference_logits"]
