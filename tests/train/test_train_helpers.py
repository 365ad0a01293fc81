"""Shared helpers for the trainer tests: a tiny stand-in language model and a learnable token stream
(no dependency on lmstack.model). Collected by pytest but holds no tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyConfig:
    vocab_size: int = 32
    d_model: int = 16
    n_layers: int = 1
    n_heads: int = 1
    head_dim: int = 16


@dataclass
class Out:
    logits: torch.Tensor
    loss: torch.Tensor | None
    aux_loss: torch.Tensor | None = None


class TinyLM(nn.Module):
    """Bigram-ish model with one hidden matrix, a norm and dropout: enough for every optimizer group."""

    def __init__(self, cfg: TinyConfig | None = None, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg or TinyConfig()
        c = self.cfg
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(c.d_model, c.d_model), nn.GELU())
                                     for _ in range(c.n_layers)])
        self.norm = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(dropout)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def forward(self, input_ids, *, targets=None, **_):
        h = self.drop(self.embed(input_ids))
        for b in self.blocks:
            h = h + b(h)
        logits = self.lm_head(self.norm(h))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return Out(logits=logits, loss=loss, aux_loss=torch.zeros(()))


def periodic_tokens(n: int = 4000, vocab: int = 32, seed: int = 0, bos: int = 0):
    """A learnable token stream: documents starting with BOS followed by a repeating pattern."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        start = int(rng.integers(1, vocab))
        length = int(rng.integers(8, 40))
        out.append(bos)
        out.extend(1 + (start + 3 * i) % (vocab - 1) for i in range(length))
    return np.array(out[:n], dtype=np.uint16)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torch.distributed's rendezvous)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
