"""Exact nearest-neighbour search over embeddings (numpy), with faiss as an optional backend,
and reciprocal rank fusion of several rankings."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ExactIndex:
    """Brute-force inner-product search (use normalized vectors for cosine similarity).

    ``ids`` are the caller's integer keys of the rows; add/remove work by key."""

    backend = "exact"

    def __init__(self, dim: int):
        if dim <= 0:
            raise ValueError(f"vector dimension must be > 0, got {dim}")
        self.dim = dim
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.ids = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, vectors: np.ndarray, ids: Sequence[int]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be [n, {self.dim}], got {tuple(vectors.shape)}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        clash = np.intersect1d(ids, self.ids)
        if len(clash) or len(np.unique(ids)) != len(ids):
            raise ValueError(f"ids already in the index or repeated: {clash[:5].tolist() or 'repeated in input'}")
        self.vectors = np.concatenate([self.vectors, vectors])
        self.ids = np.concatenate([self.ids, ids])

    def remove(self, ids: Sequence[int]) -> int:
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        removed = int((~keep).sum())
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], ids [q, k]) best first; ties broken by insertion order; -1 ids pad short results."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        sims = queries @ self.vectors.T
        k_eff = min(k, len(self.ids))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k_eff]
        scores = np.take_along_axis(sims, order, axis=1)
        ids = self.ids[order]
        if k_eff < k:
            pad = k - k_eff
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids


class FaissIndex(ExactIndex):
    """The same API on ``faiss.IndexFlatIP`` (exact inner product) wrapped in an IndexIDMap.
    Needs the optional ``faiss-cpu`` package."""

    backend = "faiss"

    def __init__(self, dim: int):
        try:
            import faiss
        except ImportError:
            raise ImportError("the faiss backend needs `pip install faiss-cpu` (or use backend='exact')") from None
        super().__init__(dim)
        self._faiss = faiss
        self._index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))

    def add(self, vectors: np.ndarray, ids: Sequence[int]) -> None:
        super().add(vectors, ids)
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: Sequence[int]) -> int:
        removed = super().remove(ids)
        self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = self._index.search(queries, k)
        return scores, ids


def make_index(dim: int, backend: str = "exact") -> ExactIndex:
    if backend == "exact":
        return ExactIndex(dim)
    if backend == "faiss":
        return FaissIndex(dim)
    raise ValueError(f"vector index backend {backend!r}: choose 'exact' or 'faiss'")


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60) -> list[tuple[int, float]]:
    """Fuse ranked lists of ids: score(d) = sum over lists of 1 / (k + rank), rank from 1
    (Cormack, Clarke & Buettcher 2009). Returns (id, score) best first; ties keep first-seen order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            if doc < 0:
                continue
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
