"""Batches from memory-mapped token shards.

Every batch is a pure function of ``(seed, data_step)``: the loader keeps no hidden iterator
state, so resuming needs only the data position, and a run on N ranks sees exactly the rows of
the single-process global batch (rank r takes rows ``r*B:(r+1)*B``). That is what makes resume
bit-exact and DDP parity testable.

Modes:
- ``random``: windows of ``seq_len + 1`` tokens starting anywhere (nanoGPT style).
- ``bos``: windows start at a document's BOS token, so a sample never begins mid-document
  (documents are still packed back to back inside the window). A document longer than a
  window also contributes its later chunks (every ``seq_len`` tokens), so every token is
  equally likely to be trained on whether it sits in a short or a long document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

LoaderMode = Literal["random", "bos"]
LOADER_MODES = get_args(LoaderMode)


@dataclass
class Batch:
    inputs: torch.Tensor    # [B, T] int64
    targets: torch.Tensor   # [B, T] int64


class TokenLoader:
    def __init__(self, tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int = 0,
                 mode: str = "random", bos_id: int | None = None, rank: int = 0, world_size: int = 1,
                 name: str = "train"):
        if mode not in LOADER_MODES:
            raise ValueError(f"unknown loader mode {mode!r}; choose one of {', '.join(LOADER_MODES)}")
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size and seq_len must be positive (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        n = len(tokens)
        if n < seq_len + 1:
            raise ValueError(f"{name} shard has {n} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                             f"lower seq_len or add data")
        self.tokens = tokens
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.mode, self.rank, self.world_size = mode, rank, world_size
        self.max_start = n - seq_len - 1  # inclusive
        if mode == "bos":
            if bos_id is None:
                raise ValueError("loader mode 'bos' needs the tokenizer's bos_id")
            starts = bos_aligned_starts(np.asarray(tokens), bos_id, seq_len)
            starts = starts[starts <= self.max_start]
            if starts.size == 0:
                raise ValueError(f"{name} shard: no BOS token (id {bos_id}) starts a full window of "
                                 f"{seq_len + 1} tokens; use loader mode 'random' or a shorter seq_len")
            self.bos_starts = starts
        self.data_step = 0

    def global_offsets(self, data_step: int) -> np.ndarray:
        """Start offsets of the whole global batch (all ranks) for ``data_step``."""
        rng = np.random.default_rng([self.seed, data_step])
        total = self.batch_size * self.world_size
        if self.mode == "random":
            return rng.integers(0, self.max_start + 1, size=total)
        return self.bos_starts[rng.integers(0, self.bos_starts.size, size=total)]

    def batch_at(self, data_step: int) -> Batch:
        offsets = self.global_offsets(data_step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        rows = np.stack([np.asarray(self.tokens[o:o + self.seq_len + 1], dtype=np.int64) for o in offsets])
        t = torch.from_numpy(rows)
        return Batch(inputs=t[:, :-1].contiguous(), targets=t[:, 1:].contiguous())

    def next_batch(self) -> Batch:
        batch = self.batch_at(self.data_step)
        self.data_step += 1
        return batch

    def state_dict(self) -> dict:
        return {"data_step": self.data_step, "seed": self.seed, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        self.data_step = int(state["data_step"])


def bos_aligned_starts(tokens: np.ndarray, bos_id: int, seq_len: int) -> np.ndarray:
    """Window starts: each document's BOS, plus every ``seq_len``-th position inside long documents.

    Sampling only document starts would weight documents equally regardless of length and never
    train on the tail of a long document (a long source file would be seen only by its header).
    """
    doc_starts = np.flatnonzero(tokens == bos_id)
    if doc_starts.size == 0:
        return doc_starts
    doc_ends = np.append(doc_starts[1:], len(tokens))
    chunks = -(-(doc_ends - doc_starts) // seq_len)  # ceil: chunks per document
    first = np.repeat(doc_starts, chunks)
    within = np.arange(chunks.sum()) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    return first + within * seq_len


def eval_windows(tokens: np.ndarray, *, batch_size: int, seq_len: int, max_batches: int | None = None,
                 rank: int = 0, world_size: int = 1):
    """Non-overlapping consecutive windows over a validation shard, split across ranks.

    Yields Batch objects; the same windows every time, so validation losses are comparable.
    """
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows == 0:
        raise ValueError(f"validation shard has {len(tokens)} tokens, too few for one window of {seq_len + 1}")
    per_batch = batch_size * world_size
    n_batches = max(1, n_windows // per_batch) if n_windows >= per_batch else 1
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        idx = [b * per_batch + rank * batch_size + i for i in range(batch_size)]
        idx = [i for i in idx if i < n_windows]
        if not idx:
            continue
        rows = np.stack([np.asarray(tokens[i * seq_len:i * seq_len + seq_len + 1], dtype=np.int64) for i in idx])
        t = torch.from_numpy(rows)
        yield Batch(inputs=t[:, :-1].contiguous(), targets=t[:, 1:].contiguous())
