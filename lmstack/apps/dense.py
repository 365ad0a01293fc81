"""A dense bi-encoder retriever on top of a run's pretrained decoder (DPR-style, Karpukhin et al. 2020).

Questions and passages share one encoder: the transformer's final hidden states, mean-pooled over the real
tokens or taken at the last token, L2-normalized. Training is contrastive with in-batch negatives: for a batch
of (question, passage) pairs the loss is cross-entropy over sim(q_i, p_j) / temperature with the diagonal as
the target (InfoNCE); each batch holds distinct passages so no positive is counted as a negative. With hard
negatives, each question also brings passages a lexical retriever ranks high but that are about something else
(DPR's "in-batch + one BM25 negative" setting), which every question of the batch is scored against too.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lmstack.runs import atomic_write_json, read_json


@dataclass
class DenseConfig:
    pooling: str = "mean"          # "mean" | "last"
    max_len: int = 64              # tokens per text (longer texts are cut)
    temperature: float = 0.05
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-4
    seed: int = 0
    # BM25 negatives per question (train_dense's ``negatives``): the top passages about other entities. Karpukhin
    # et al. 2020 (DPR, table 3) gained most from one per question; here they also teach the encoder to tell a
    # passage about "Lin Lanqing" from one about "Lin Lanzhi", which a retrieval-score cut-off relies on
    hard_negatives: int = 0


class DenseEncoder:
    """``encoder(texts) -> np.ndarray [n, d_model]`` of unit vectors."""

    def __init__(self, model, tokenizer, cfg: DenseConfig | None = None, source: str = ""):
        self.model, self.tokenizer, self.cfg, self.source = model, tokenizer, cfg or DenseConfig(), source
        if self.cfg.pooling not in ("mean", "last"):
            raise ValueError(f"dense pooling {self.cfg.pooling!r}: choose 'mean' or 'last'")

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        limit = min(self.cfg.max_len, self.model.config.max_seq_len)
        rows = [([self.tokenizer.bos_id] + list(self.tokenizer.encode(t)))[:limit] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):  # right padding: causal attention never lets real tokens see it
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = True
        return ids.to(self.device), mask.to(self.device)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable embeddings [n, d] (unit length)."""
        ids, mask = self._batch(texts)
        hidden = self.model(ids, attention_mask=mask, return_hidden=True).hidden.float()
        if self.cfg.pooling == "mean":
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            last = mask.long().sum(1) - 1
            pooled = hidden[torch.arange(len(texts), device=hidden.device), last]
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        out = [self.embed(texts[i:i + batch_size]).cpu().numpy() for i in range(0, len(texts), batch_size)]
        self.model.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.model.config.d_model), np.float32)

    def describe(self) -> dict:
        return {"kind": "dense", "source": self.source, **asdict(self.cfg)}

    def save(self, directory: str | Path) -> Path:
        from lmstack.model import save_pretrained

        directory = Path(directory)
        save_pretrained(self.model, directory)
        atomic_write_json(directory / "dense.json", self.describe())
        return directory

    @classmethod
    def load(cls, directory: str | Path, tokenizer, device: str = "cpu") -> "DenseEncoder":
        from lmstack.model import load_pretrained

        directory = Path(directory)
        meta_path = directory / "dense.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: no dense retriever here (train one with `lmstack rag train-dense`)")
        meta = read_json(meta_path)
        fields = DenseConfig.__dataclass_fields__
        cfg = DenseConfig(**{k: v for k, v in meta.items() if k in fields})
        return cls(load_pretrained(directory, device=device).eval(), tokenizer, cfg, str(directory))


def info_nce(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each question against all passages of the batch; the matching passage is the target.
    ``p`` may hold more rows than ``q`` (hard negatives after the positives)."""
    logits = q @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def _distinct_batches(pairs: Sequence[tuple[str, str]], batch_size: int, rng: random.Random):
    """Endless batches with no passage twice in a batch (a duplicate would be a false negative)."""
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        batch, seen = [], set()
        for i in order:
            if pairs[i][1] in seen:
                continue
            batch.append(pairs[i])
            seen.add(pairs[i][1])
            if len(batch) == batch_size:
                yield batch
                batch, seen = [], set()
        if len(batch) >= 2:
            yield batch


def _with_negatives(batch: list[tuple[str, str]], negatives: dict[str, Sequence[str]], n: int) -> list[str]:
    """The batch's passages, then up to ``n`` hard negatives per question that are not a passage of the batch
    already (one would be another question's positive: a false negative)."""
    passages = [p for _, p in batch]
    seen = set(passages)
    for q, _ in batch:
        for neg in list(negatives.get(q, ()))[:n]:
            if neg not in seen:
                seen.add(neg)
                passages.append(neg)
    return passages


def train_dense(encoder: DenseEncoder, pairs: Sequence[tuple[str, str]], cfg: DenseConfig | None = None,
                progress: bool = True, negatives: dict[str, Sequence[str]] | None = None) -> list[float]:
    """Fine-tune the encoder's model in place on (question, passage) pairs; returns the loss history.
    ``negatives``: question -> hard negative passages (best first), of which ``cfg.hard_negatives`` are used."""
    from tqdm import tqdm

    cfg = cfg or encoder.cfg
    if len({p for _, p in pairs}) < 2:
        raise ValueError("dense training needs pairs with at least 2 distinct passages (in-batch negatives)")
    torch.manual_seed(cfg.seed)
    model = encoder.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    batches = _distinct_batches(pairs, cfg.batch_size, random.Random(cfg.seed))
    history = []
    bar = tqdm(range(cfg.steps), desc="dense retriever", disable=not progress)
    for step in bar:
        batch = next(batches)
        q = encoder.embed([x for x, _ in batch])
        p = encoder.embed(_with_negatives(batch, negatives or {}, cfg.hard_negatives))
        loss = info_nce(q, p, cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:  # linear warm-up over the first 10% of steps, then constant
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.steps // 10))
        optimizer.step()
        history.append(float(loss.detach()))
        bar.set_postfix(loss=f"{history[-1]:.3f}")
    model.eval()
    return history
