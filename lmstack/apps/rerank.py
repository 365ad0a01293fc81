"""A cross-encoder reranker: the run's decoder reads "question + passage" together and a linear head on the
last token's hidden state scores their relevance (Nogueira & Cho 2019 rerank BM25 candidates this way).
Training is listwise: for each question, softmax cross-entropy over the gold passage and hard negatives
retrieved by BM25."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.runs import atomic_write_bytes, atomic_write_json, read_json


@dataclass
class RerankConfig:
    max_len: int = 96
    # 150 steps at 5e-4 left it near chance on held-out questions (recall@1 after BM25's top 10: 0.22 / 0.35 / 0.18
    # on held-out people / paraphrases / never-seen people); 600 at 2e-3: 0.53 / 0.57 / 0.43; 1000 at 1e-3: 0.53 /
    # 0.77 / 0.47 in twice the time; 10 candidates: no better. BM25 alone is 1.00 / 0.98 / 1.00 here: telling
    # near-miss names apart (Lin Lanwei / Lin Lanqing) at the last token is what it does not learn
    steps: int = 600
    questions_per_batch: int = 4
    candidates: int = 6           # gold + (candidates - 1) negatives per question
    lr: float = 2e-3
    seed: int = 0


class CrossEncoder(nn.Module):
    def __init__(self, model, tokenizer, cfg: RerankConfig | None = None):
        super().__init__()
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg or RerankConfig()
        self.head = nn.Linear(model.config.d_model, 1)
        nn.init.zeros_(self.head.bias)

    def _ids(self, question: str, passage: str) -> list[int]:
        # the question goes last so that truncation cuts the passage's tail, not the question
        limit = min(self.cfg.max_len, self.model.config.max_seq_len)
        q = list(self.tokenizer.encode(f"\nQuestion: {question}"))
        p = list(self.tokenizer.encode(f"Passage: {passage}"))[: max(0, limit - 1 - len(q))]
        return ([self.tokenizer.bos_id] + p + q)[:limit]

    def scores(self, question: str, passages: Sequence[str]) -> torch.Tensor:
        rows = [self._ids(question, p) for p in passages]
        width = max(len(r) for r in rows)
        device = next(self.parameters()).device
        ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
        hidden = self.model(ids.to(device), attention_mask=mask.to(device), return_hidden=True).hidden.float()
        last = hidden[torch.arange(len(rows), device=device), mask.long().sum(1).to(device) - 1]
        return self.head(last).squeeze(-1)

    @torch.no_grad()
    def rerank(self, question: str, hits: list) -> list:
        """``hits`` (objects with ``.text``, e.g. store hits) reordered by the cross-encoder, best first."""
        if not hits:
            return hits
        self.eval()
        s = self.scores(question, [h.text for h in hits]).tolist()
        return [h for _, h in sorted(zip(s, hits), key=lambda x: -x[0])]

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save
        from lmstack.model import save_pretrained

        directory = Path(directory)
        save_pretrained(self.model, directory)
        atomic_write_bytes(directory / "head.safetensors",
                           save({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}))
        atomic_write_json(directory / "rerank.json", asdict(self.cfg))
        return directory

    @classmethod
    def load(cls, directory: str | Path, tokenizer, device: str = "cpu") -> "CrossEncoder":
        from safetensors.torch import load_file
        from lmstack.model import load_pretrained

        directory = Path(directory)
        if not (directory / "rerank.json").exists():
            raise FileNotFoundError(f"{directory}/rerank.json: no reranker here (the apps stage trains one)")
        enc = cls(load_pretrained(directory, device=device), tokenizer, RerankConfig(**read_json(directory / "rerank.json")))
        enc.head.load_state_dict(load_file(str(directory / "head.safetensors"), device=device))
        return enc.to(device).eval()


def train_reranker(encoder: CrossEncoder, examples: Sequence[tuple[str, str, list[str]]],
                   cfg: RerankConfig | None = None, progress: bool = True) -> list[float]:
    """``examples``: (question, gold passage, negative passages). Returns the loss history."""
    from tqdm import tqdm

    cfg = cfg or encoder.cfg
    usable = [e for e in examples if e[2]]
    if not usable:
        raise ValueError("reranker training needs examples with at least one negative passage")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=0.0)
    encoder.train()
    history = []
    for step in tqdm(range(cfg.steps), desc="reranker", disable=not progress):
        loss = 0.0
        for question, gold, negatives in rng.sample(usable, min(cfg.questions_per_batch, len(usable))):
            cands = [gold] + rng.sample(negatives, min(len(negatives), cfg.candidates - 1))
            logits = encoder.scores(question, cands)
            loss = loss + F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long, device=logits.device))
        loss = loss / cfg.questions_per_batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        history.append(float(loss.detach()))
    encoder.eval()
    return history
