"""Next-item recommendation: ranking metrics, classic baselines, and three ways to use a language model.

Every method returns a score matrix [n_users, n_items]; ``rank_unseen`` masks each user's history and
ranks the rest (ties broken by the lower item id, so results are deterministic).

- ``recall_at_k`` / ``ndcg_at_k``: Recall@K and NDCG@K of a ranking against the held-out targets.
- ``popularity_scores``: training-interaction counts.
- ``item_knn_scores``: cosine similarity of items' user co-occurrence columns, summed over a user's history.
- ``ImplicitALS``: matrix factorisation for implicit feedback, Hu, Koren & Volinsky 2008 ("Collaborative
  Filtering for Implicit Feedback Datasets"), exact per-user / per-item least squares.
- Language models: ``score_continuations`` (log-likelihood of candidate texts after a prompt, for the
  prompt-based and the title fine-tuned recommenders), ``text_examples`` / ``train_text_recommender``
  (SFT on history -> next title), and ``add_item_tokens`` / ``train_item_id_recommender`` /
  ``item_id_scores`` (one new vocabulary token per item, P5 / TIGER style: Geng et al. 2022, Rajput et al. 2023).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------- metrics


def recall_at_k(ranked: Sequence[int], targets: Sequence[int] | int, k: int = 10) -> float:
    """|top-k ∩ targets| / |targets|."""
    targets = {targets} if isinstance(targets, int) else set(targets)
    if not targets:
        raise ValueError("recall_at_k: no targets")
    return len(set(ranked[:k]) & targets) / len(targets)


def ndcg_at_k(ranked: Sequence[int], targets: Sequence[int] | int, k: int = 10) -> float:
    """Binary-relevance NDCG (Järvelin & Kekäläinen 2002): sum over hits at 1-based rank r <= k of
    1/log2(r+1), divided by the same sum for a perfect ranking of min(k, |targets|) hits."""
    targets = {targets} if isinstance(targets, int) else set(targets)
    if not targets:
        raise ValueError("ndcg_at_k: no targets")
    dcg = sum(1.0 / math.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in targets)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(targets))))
    return dcg / ideal


def rank_unseen(scores: np.ndarray, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
    """Top-k item ids per user, never recommending an item already in the user's history."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if scores.shape[0] != len(histories):
        raise ValueError(f"rank_unseen: {scores.shape[0]} score rows for {len(histories)} users")
    for u, seen in enumerate(histories):
        scores[u, list(seen)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    return [row[:k].tolist() for row in order]


def evaluate_scores(scores: np.ndarray, histories, targets: Sequence[int], k: int = 10) -> dict:
    """Mean Recall@k and NDCG@k with their standard errors over users."""
    ranked = rank_unseen(scores, histories, k)
    rec = np.array([recall_at_k(r, t, k) for r, t in zip(ranked, targets)])
    ndcg = np.array([ndcg_at_k(r, t, k) for r, t in zip(ranked, targets)])
    se = lambda a: float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")  # noqa: E731
    return {f"recall@{k}": float(rec.mean()), f"recall@{k}_se": se(rec),
            f"ndcg@{k}": float(ndcg.mean()), f"ndcg@{k}_se": se(ndcg), "n_users": len(targets)}


# ---------------------------------------------------------------------------------------------- baselines


def interaction_matrix(histories: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """Dense users x items matrix of interaction counts."""
    r = np.zeros((len(histories), n_items), dtype=np.float64)
    for u, hist in enumerate(histories):
        for i in hist:
            r[u, i] += 1.0
    return r


def popularity_scores(train: Sequence[Sequence[int]], n_items: int, n_users: int) -> np.ndarray:
    counts = interaction_matrix(train, n_items).sum(0)
    return np.tile(counts, (n_users, 1))


def item_knn_scores(train: Sequence[Sequence[int]], n_items: int, histories: Sequence[Sequence[int]],
                    neighbours: int = 0) -> np.ndarray:
    """score(u, j) = sum over i in u's history of cos(i, j), cosine of the items' user columns of the training
    interaction matrix (Sarwar et al. 2001). ``neighbours`` > 0 keeps only each item's top neighbours."""
    r = (interaction_matrix(train, n_items) > 0).astype(np.float64)
    co = r.T @ r
    norms = np.sqrt(np.diag(co))
    sim = co / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(sim, 0.0)
    if neighbours > 0:
        cut = np.sort(sim, axis=1)[:, -neighbours][:, None]
        sim = np.where(sim >= cut, sim, 0.0)
    return interaction_matrix(histories, n_items) @ sim


class ImplicitALS:
    """Weighted matrix factorisation for implicit feedback (Hu, Koren & Volinsky 2008).

    Preference p_ui = [r_ui > 0], confidence c_ui = 1 + alpha * r_ui; minimise
    sum_ui c_ui (p_ui - x_u·y_i)^2 + reg (|X|^2 + |Y|^2) by alternating exact least squares, each user's
    system written as (YᵀY + Yᵀ(C_u - I)Y + reg I) x_u = Yᵀ C_u p_u (the paper's speed-up, Section 4).
    """

    def __init__(self, factors: int = 32, regularization: float = 0.1, alpha: float = 10.0, iterations: int = 15,
                 seed: int = 0):
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.losses: list[float] = []

    def solve(self, counts: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """Rows of ``counts`` (r values, one row per solved vector) against the ``fixed`` other side's factors."""
        gram = fixed.T @ fixed
        eye = self.regularization * np.eye(fixed.shape[1])
        out = np.zeros((counts.shape[0], fixed.shape[1]))
        for row in range(counts.shape[0]):
            idx = np.nonzero(counts[row])[0]
            conf = 1.0 + self.alpha * counts[row, idx]
            y = fixed[idx]
            a = gram + (y.T * (conf - 1.0)) @ y + eye
            out[row] = np.linalg.solve(a, y.T @ conf)
        return out

    def loss(self, counts: np.ndarray) -> float:
        conf = 1.0 + self.alpha * counts
        pred = self.user_factors @ self.item_factors.T
        err = (conf * ((counts > 0) - pred) ** 2).sum()
        return float(err + self.regularization * ((self.user_factors ** 2).sum() + (self.item_factors ** 2).sum()))

    def fit(self, counts: np.ndarray) -> "ImplicitALS":
        rng = np.random.default_rng(self.seed)
        n_users, n_items = counts.shape
        self.user_factors = rng.normal(0, 0.01, (n_users, self.factors))
        self.item_factors = rng.normal(0, 0.01, (n_items, self.factors))
        self.losses = []
        for _ in range(self.iterations):
            self.user_factors = self.solve(counts, self.item_factors)
            self.item_factors = self.solve(counts.T, self.user_factors)
            self.losses.append(self.loss(counts))
        return self

    def scores(self, counts: np.ndarray) -> np.ndarray:
        """Scores for users given as interaction rows (fold-in: their factors are solved afresh)."""
        if self.item_factors is None:
            raise RuntimeError("ImplicitALS.scores: call fit() first")
        return self.solve(counts, self.item_factors) @ self.item_factors.T


# ------------------------------------------------------------------------------------- language models


def _pad_batch(seqs: Sequence[list[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


@torch.no_grad()
def score_continuations(model, prefix: list[int], continuations: Sequence[list[int]], batch_size: int = 128,
                        pad_id: int = 0) -> torch.Tensor:
    """Sum of log p(continuation tokens | prefix) for each continuation. The prefix runs once into a KV cache
    that is then copied for a batch of continuations (right padding: causal, so a row's padding never
    affects its own positions)."""
    model.eval()
    if not prefix or any(not c for c in continuations):
        raise ValueError("score_continuations: the prefix and every continuation need at least one token")
    scores = []
    for start in range(0, len(continuations), batch_size):
        chunk = continuations[start:start + batch_size]
        width = max(len(c) for c in chunk)
        cache = model.new_kv_cache(1, len(prefix) + width)
        first = F.log_softmax(model(torch.tensor([prefix]), kv_cache=cache).logits[0, -1].float(), dim=-1)
        cache.reorder(torch.zeros(len(chunk), dtype=torch.long))
        logp = F.log_softmax(model(_pad_batch(chunk, pad_id), kv_cache=cache).logits.float(), dim=-1)
        for row, c in enumerate(chunk):
            rest = logp[row, torch.arange(len(c) - 1), torch.tensor(c[1:], dtype=torch.long)].sum()
            scores.append(first[c[0]] + rest)
    return torch.stack(scores)


def history_prompt(titles: Sequence[str]) -> str:
    """The history as text, shared by the prompt-based and the title fine-tuned recommenders."""
    return "Liked: " + "; ".join(titles) + ". Next:"


def text_examples(train: Sequence[Sequence[int]], max_history: int) -> list[tuple[list[int], int]]:
    """(history window, next item) for every position >= 1 of every training history."""
    return [(list(hist[max(0, t - max_history):t]), hist[t]) for hist in train for t in range(1, len(hist))]


def prompt_and_answer_batches(tokenizer, examples, titles: Sequence[str], batch_size: int,
                              rng: random.Random) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded "history prompt -> ' title\\n'" sequences with the loss on the answer tokens only."""
    while True:
        seqs = []
        for hist, target in (examples[rng.randrange(len(examples))] for _ in range(batch_size)):
            prompt = [tokenizer.bos_id] + tokenizer.encode(history_prompt([titles[i] for i in hist]))
            seqs.append((prompt, answer_tokens(tokenizer, titles[target])))
        width = max(len(p) + len(a) for p, a in seqs) - 1
        x = torch.full((batch_size, width), tokenizer.eos_id, dtype=torch.long)
        y = torch.full((batch_size, width), -100, dtype=torch.long)
        for row, (p, a) in enumerate(seqs):
            ids = torch.tensor(p + a)
            x[row, :len(ids) - 1] = ids[:-1]
            y[row, len(p) - 1:len(ids) - 1] = ids[len(p):]
        yield x, y


def answer_tokens(tokenizer, title: str) -> list[int]:
    return tokenizer.encode(" " + title) + tokenizer.encode("\n")


def text_scores(model, tokenizer, titles: Sequence[str], histories: Sequence[Sequence[int]], max_history: int,
                batch_size: int = 128) -> np.ndarray:
    """Log-likelihood of every item's title after each user's history prompt: [n_users, n_items]."""
    from tqdm import tqdm

    answers = [answer_tokens(tokenizer, t) for t in titles]
    rows = []
    for hist in tqdm(histories, desc="score titles", leave=False, mininterval=2.0, disable=None):
        prompt = [tokenizer.bos_id] + tokenizer.encode(history_prompt([titles[i] for i in hist[-max_history:]]))
        rows.append(score_continuations(model, prompt, answers, batch_size, tokenizer.eos_id).numpy())
    return np.stack(rows)


# --------------------------------------------------------------------------------------- item-ID tokens


def add_item_tokens(model, tokenizer, descriptions: Sequence[str], init: str = "description") -> int:
    """Append one token per item to the model's vocabulary; returns the first item token id.

    ``init="description"`` starts each row at the mean input embedding of the item's description tokens, so
    items described alike start alike (and, with tied embeddings, are predicted alike); ``"random"`` draws
    rows with the embedding's own standard deviation (the ablation)."""
    from lmstack.model.resize import extend_vocabulary

    table = model.embed.weight.detach()
    if init == "description":
        rows = torch.stack([table[torch.tensor(tokenizer.encode(d))].mean(0) for d in descriptions])
    elif init == "random":
        gen = torch.Generator().manual_seed(len(descriptions))
        rows = torch.randn(len(descriptions), table.shape[1], generator=gen) * table.std()
    else:
        raise ValueError(f"add_item_tokens: init={init!r}, expected 'description' or 'random'")
    return extend_vocabulary(model, rows).start


def item_sequence(tokenizer, first_item_token: int, items: Sequence[int]) -> list[int]:
    return [tokenizer.bos_id] + tokenizer.encode("Liked:") + [first_item_token + i for i in items]


def item_id_batches(tokenizer, first_item_token: int, train: Sequence[Sequence[int]], max_history: int,
                    batch_size: int, rng: random.Random) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows of up to max_history+1 consecutive training items; every item position is a target
    (given as an item index, -100 elsewhere), the causal-LM way of SASRec-like sequence models."""
    usable = [h for h in train if len(h) >= 2]
    if not usable:
        raise ValueError("item_id_batches: no training history has 2 or more items")
    n_prefix = len(item_sequence(tokenizer, first_item_token, []))
    while True:
        rows = []
        for _ in range(batch_size):
            hist = usable[rng.randrange(len(usable))]
            end = rng.randint(2, len(hist))
            window = hist[max(0, end - max_history - 1):end]
            rows.append((item_sequence(tokenizer, first_item_token, window[:-1]), window))
        x = _pad_batch([s for s, _ in rows], tokenizer.eos_id)
        y = torch.full(x.shape, -100, dtype=torch.long)
        for row, (_, window) in enumerate(rows):
            y[row, n_prefix - 1:n_prefix - 1 + len(window)] = torch.tensor(window)
        yield x, y


def item_loss(first_item_token: int, n_items: int):
    """Cross-entropy over the item tokens only: the model ranks items, not words."""
    def loss_fn(model, x, y):
        hidden = model(x, return_hidden=True).hidden
        logits = hidden @ model.lm_head.weight[first_item_token:first_item_token + n_items].T
        return F.cross_entropy(logits.reshape(-1, n_items).float(), y.reshape(-1), ignore_index=-100)
    return loss_fn


@torch.no_grad()
def item_id_scores(model, tokenizer, first_item_token: int, n_items: int, histories: Sequence[Sequence[int]],
                   max_history: int, batch_size: int = 64) -> np.ndarray:
    """Item-token logits at the last position of each user's history: [n_users, n_items]."""
    model.eval()
    head = model.lm_head.weight[first_item_token:first_item_token + n_items]
    out = []
    for start in range(0, len(histories), batch_size):
        seqs = [item_sequence(tokenizer, first_item_token, list(h[-max_history:]))
                for h in histories[start:start + batch_size]]
        hidden = model(_pad_batch(seqs, tokenizer.eos_id), return_hidden=True).hidden
        last = torch.stack([hidden[row, len(s) - 1] for row, s in enumerate(seqs)])
        out.append((last @ head.T).float().numpy())
    return np.concatenate(out)
