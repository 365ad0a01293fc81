"""Grow a Transformer's vocabulary by appending rows to its embedding (and its lm_head).

New token ids are ``old_vocab .. old_vocab + n - 1``. Existing rows are copied unchanged, so the model
gives exactly the same logits on old tokens as before (plus n new logits). A tied lm_head stays tied to
the grown embedding; an untied one gets the same new rows as its initial output vectors.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .transformer import Transformer


def extend_vocabulary(model: Transformer, new_rows: torch.Tensor) -> range:
    """Append ``new_rows`` [n, d_model] to the embedding in place; returns the new token ids."""
    old = model.embed.weight
    if new_rows.dim() != 2 or new_rows.shape[1] != old.shape[1]:
        raise ValueError(f"extend_vocabulary: new_rows must be [n, d_model={old.shape[1]}], "
                         f"got {tuple(new_rows.shape)}")
    if type(model.lm_head) is not nn.Linear:
        raise ValueError(f"extend_vocabulary: lm_head is {type(model.lm_head).__name__} (quantized or wrapped); "
                         "grow the vocabulary before quantizing or adding adapters")
    n_old, n_new = old.shape[0], new_rows.shape[0]
    rows = new_rows.detach().to(device=old.device, dtype=old.dtype)
    tied = model.config.tie_embeddings
    embed = nn.Embedding(n_old + n_new, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        embed.weight.copy_(torch.cat([old.detach(), rows]))
    head = nn.Linear(old.shape[1], n_old + n_new, bias=False, device=old.device, dtype=old.dtype)
    if tied:
        head.weight = embed.weight
    else:
        with torch.no_grad():
            head.weight.copy_(torch.cat([model.lm_head.weight.detach(), rows]))
    model.embed, model.lm_head = embed, head
    model.config = dataclasses.replace(model.config, vocab_size=n_old + n_new)
    return range(n_old, n_old + n_new)
