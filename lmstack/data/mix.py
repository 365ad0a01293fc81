"""Mixing and curriculum: document-level train/val split, per-source weights (down-sampling,
up-sampling = extra epochs), ordering (deterministic shuffle, short->long, by quality score) and the
mix table (source, documents, bytes, share).

Every random decision is a function of (seed, source, document id) through a stable hash, so the same
recipe gives the same corpus on any machine and in any process, and a document's split never depends on
which other documents survived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from lmstack.data.dedup import stable_hash64

MixOrder = Literal["shuffled", "short_to_long", "long_to_short", "score", "none"]
ORDERS = get_args(MixOrder)


@dataclass
class MixConfig:
    val_fraction: float = 0.05      # share of documents (per source) held out for validation
    order: MixOrder = "shuffled"    # score: best first; none: input order
    weights: dict[str, float] = field(default_factory=dict)   # per source name; overrides the source's own weight
    min_val_docs: int = 1           # every source with >= 2 documents gets at least this many val docs
    # > 0: the world's copy pages leave the train split (validation keeps them) and this many distinct, freshly
    # generated copy pages join train as the source "copy_pages" (weight 1 unless weights says otherwise, no val
    # share). Repeated pages get memorised instead of copied; a page seen once can only be predicted by copying.
    copy_pages: int = 0

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order {self.order!r} is not one of {', '.join(ORDERS)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.copy_pages < 0:
            raise ValueError(f"copy_pages must be >= 0, got {self.copy_pages}")
        for k, w in self.weights.items():
            if w < 0:
                raise ValueError(f"weight of source {k!r} must be >= 0, got {w}")


def unit_hash(seed: int, *parts) -> float:
    """A deterministic number in [0, 1) from the seed and any parts."""
    return stable_hash64("\x1f".join([str(seed), *map(str, parts)])) / 2.0**64


def is_val(seed: int, source: str, doc_id: str, val_fraction: float) -> bool:
    return unit_hash(seed, "split", source, doc_id) < val_fraction


def copies(seed: int, source: str, doc_id: str, weight: float) -> int:
    """How many times a training document appears: floor(weight), plus one more with probability
    frac(weight). weight 0.3 keeps ~30% of the source, 2.5 gives every document 2 or 3 epochs."""
    base = math.floor(weight)
    return base + (1 if unit_hash(seed, "copy", source, doc_id) < weight - base else 0)


def plan_mix(sources: list[str], ids: list[str], lengths: np.ndarray, scores: np.ndarray | None,
             weights: dict[str, float], cfg: MixConfig, seed: int,
             train_only: frozenset[str] = frozenset()) -> tuple[list[int], list[int]]:
    """Return (train order, val order) as lists of document indices (train may repeat indices).

    The split happens before the weights, so copies of a validation document never reach train;
    validation is not re-weighted (it measures each source as it is), but sources with weight 0 are left out.
    Sources in ``train_only`` give validation nothing (generated text whose val counterpart lives elsewhere)."""
    val_idx, train_pool = [], []
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    for s, members in by_source.items():
        if weights.get(s, 1.0) == 0:
            continue
        if s in train_only:
            train_pool.extend(members)
            continue
        chosen = [i for i in members if is_val(seed, s, ids[i], cfg.val_fraction)]
        if cfg.val_fraction > 0 and len(chosen) < cfg.min_val_docs and len(members) >= 2:
            # Tiny sources: take the documents with the smallest split hash so val is never empty.
            ranked = sorted(members, key=lambda i: unit_hash(seed, "split", s, ids[i]))
            chosen = ranked[: cfg.min_val_docs]
        chosen_set = set(chosen)
        val_idx.extend(chosen)
        train_pool.extend(i for i in members if i not in chosen_set)
    train = []
    for i in train_pool:
        train.extend([i] * copies(seed, sources[i], ids[i], weights.get(sources[i], 1.0)))
    return order_docs(train, sources, ids, lengths, scores, cfg.order, seed), \
        order_docs(sorted(val_idx), sources, ids, lengths, scores, "none" if cfg.order == "none" else "shuffled", seed)


def order_docs(idx: list[int], sources: list[str], ids: list[str], lengths: np.ndarray,
               scores: np.ndarray | None, order: str, seed: int) -> list[int]:
    if order == "none":
        return list(idx)
    # Repeated copies of a document get distinct keys (their copy number) so they spread out.
    seen: dict[int, int] = {}
    keyed = []
    for i in idx:
        c = seen.get(i, 0)
        seen[i] = c + 1
        keyed.append((i, unit_hash(seed, "order", sources[i], ids[i], c)))
    if order == "shuffled":
        keyed.sort(key=lambda t: t[1])
    elif order == "short_to_long":
        keyed.sort(key=lambda t: (lengths[t[0]], t[1]))
    elif order == "long_to_short":
        keyed.sort(key=lambda t: (-lengths[t[0]], t[1]))
    elif order == "score":
        if scores is None:
            raise ValueError("order='score' needs the quality classifier (data.quality.enabled = true)")
        keyed.sort(key=lambda t: (-scores[t[0]], t[1]))
    return [i for i, _ in keyed]


def mix_table(train: list[int], val: list[int], sources: list[str], nbytes: np.ndarray,
              available: dict[str, tuple[int, int]], weights: dict[str, float]) -> list[dict]:
    """Rows: source, weight, available docs/bytes (after cleaning), train docs/bytes, share of train bytes, val docs."""
    rows: dict[str, dict] = {}
    for s, (n, b) in available.items():
        rows[s] = {"source": s, "weight": weights.get(s, 1.0), "available_docs": n, "available_bytes": b,
                   "train_docs": 0, "train_bytes": 0, "val_docs": 0, "val_bytes": 0}
    for i in train:
        r = rows[sources[i]]
        r["train_docs"] += 1
        r["train_bytes"] += int(nbytes[i])
    for i in val:
        r = rows[sources[i]]
        r["val_docs"] += 1
        r["val_bytes"] += int(nbytes[i])
    total = sum(r["train_bytes"] for r in rows.values()) or 1
    for r in rows.values():
        r["share"] = r["train_bytes"] / total
        r["epochs"] = r["train_docs"] / max(1, r["available_docs"] - r["val_docs"])
    return list(rows.values())
