"""A document store for retrieval: files -> chunks -> BM25 (+ optional dense vectors), saved in a directory
as ``store.json`` (documents, chunks, settings) and ``vectors.safetensors`` (chunk embeddings).

Documents come from a directory of ``.txt`` / ``.md`` files (one document per file) and ``.jsonl`` files
(one document per line: ``{"text": ..., "id"?: ..., "title"?: ...}``). Adding the same directory again
re-indexes only files whose content changed; ``delete`` drops documents by id. BM25 statistics are
recomputed from the stored chunk texts on load (they are a deterministic function of them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from lmstack.apps.bm25 import BM25, search_tokens
from lmstack.apps.chunking import chunk_by_sentences, chunk_by_tokens
from lmstack.apps.vectors import make_index, reciprocal_rank_fusion
from lmstack.runs import atomic_write_bytes, atomic_write_json, read_json

STORE_FORMAT = "lmstack-docstore/1"
SUFFIXES = (".txt", ".md", ".jsonl")


@dataclass
class StoreConfig:
    chunking: str = "sentences"      # "sentences" | "tokens" (needs a tokenizer)
    max_chars: int = 400             # sentence chunking: chunk size
    overlap_sentences: int = 1
    chunk_tokens: int = 128          # token chunking: window and overlap
    overlap_tokens: int = 32
    k1: float = 1.5
    b: float = 0.75
    bm25_variant: str = "lucene"
    backend: str = "exact"           # dense vector index: "exact" | "faiss"


@dataclass
class Hit:
    chunk_id: int
    doc_id: str
    text: str
    score: float
    meta: dict = field(default_factory=dict)


def read_documents(path: str | Path) -> list[dict]:
    """Documents of a file or a directory (recursively, sorted): [{"id", "text", "source", "hash", ...}]."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no {', '.join(SUFFIXES)} files to index")
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}")
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such file or directory")
    docs = []
    for f in files:
        raw = f.read_text(encoding="utf-8")
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]
        if f.suffix != ".jsonl":
            docs.append({"id": str(f), "text": raw, "source": str(f), "hash": digest})
            continue
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{f} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{f} line {n}: field 'text' missing or not a string")
            doc_id = str(row.get("id", f"{f}#{n}"))
            meta = {k: v for k, v in row.items() if k not in ("text", "id")}
            line_hash = hashlib.sha256(line.encode("utf-8")).hexdigest()[:16]
            docs.append({"id": doc_id, "text": row["text"], "source": str(f), "hash": line_hash, "meta": meta})
    return docs


class DocumentStore:
    """Chunks with BM25 and (when an ``encoder`` is given) dense vectors; see the module docstring.

    ``encoder``: a callable ``list[str] -> np.ndarray [n, dim]`` of normalized embeddings (``DenseEncoder``).
    ``tokenizer``: needed only for token chunking."""

    def __init__(self, cfg: StoreConfig | None = None, encoder: Callable | None = None, tokenizer=None):
        self.cfg = cfg or StoreConfig()
        if self.cfg.chunking not in ("sentences", "tokens"):
            raise ValueError(f"chunking {self.cfg.chunking!r}: choose 'sentences' or 'tokens'")
        self.encoder, self.tokenizer = encoder, tokenizer
        self.docs: dict[str, dict] = {}     # doc id -> {"source", "hash", "chunks": [chunk ids], "meta"}
        self.chunks: dict[int, dict] = {}   # chunk id -> {"doc", "text"}
        self.next_id = 0
        self._bm25: BM25 | None = None
        self._order: list[int] = []
        self.index = None
        self.has_vectors = False  # loaded from a store saved with vectors (even if no encoder was given)
        self.encoder_info = None  # the encoder description a loaded store was saved with

    # ------------------------------------------------------------------ building
    def _chunk(self, text: str) -> list[str]:
        c = self.cfg
        if c.chunking == "tokens":
            if self.tokenizer is None:
                raise ValueError("this store chunks by tokens: adding documents needs its tokenizer "
                                 "(pass tokenizer=, or --run RUN on the command line)")
            return chunk_by_tokens(text, self.tokenizer.encode, self.tokenizer.decode, c.chunk_tokens, c.overlap_tokens)
        return chunk_by_sentences(text, c.max_chars, c.overlap_sentences)

    def add_documents(self, docs: Iterable[dict]) -> dict[str, int]:
        """Add or update documents ({"id", "text", "hash"?, "source"?, "meta"?}); an unchanged hash is skipped.
        Returns counts of added / updated / unchanged documents and new chunks."""
        stats = {"added": 0, "updated": 0, "unchanged": 0, "chunks": 0}
        new_ids, new_texts = [], []
        for d in docs:
            doc_id = d["id"]
            digest = d.get("hash") or hashlib.sha256(d["text"].encode("utf-8")).hexdigest()[:16]
            old = self.docs.get(doc_id)
            if old is not None and old["hash"] == digest:
                stats["unchanged"] += 1
                continue
            if old is not None:
                self.delete([doc_id])
                stats["updated"] += 1
            else:
                stats["added"] += 1
            chunk_ids = []
            for text in self._chunk(d["text"]):
                cid = self.next_id
                self.next_id += 1
                self.chunks[cid] = {"doc": doc_id, "text": text}
                chunk_ids.append(cid)
                new_ids.append(cid)
                new_texts.append(text)
            self.docs[doc_id] = {"source": d.get("source", ""), "hash": digest, "chunks": chunk_ids,
                                 "meta": d.get("meta", {})}
        stats["chunks"] = len(new_ids)
        if new_ids and self.encoder is None and self.has_vectors:
            raise ValueError("this store holds dense vectors: adding documents needs its encoder "
                             "(DocumentStore.load(..., encoder=), or --run RUN on the command line)")
        if new_ids and self.encoder is not None:
            vectors = self._ensure_index(self.encoder(new_texts))
            self.index.add(vectors, new_ids)
        self._bm25 = None
        return stats

    def _ensure_index(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.index is None:
            self.index = make_index(vectors.shape[1], self.cfg.backend)
        return vectors

    def add_path(self, path: str | Path) -> dict[str, int]:
        return self.add_documents(read_documents(path))

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents and their chunks; returns the number of chunks removed."""
        missing = [d for d in doc_ids if d not in self.docs]
        if missing:
            raise KeyError(f"no document with id {missing[0]!r} in the store ({len(self.docs)} documents)")
        removed = []
        for d in doc_ids:
            for cid in self.docs.pop(d)["chunks"]:
                del self.chunks[cid]
                removed.append(cid)
        if self.index is not None:
            self.index.remove(removed)
        self._bm25 = None
        return len(removed)

    # ------------------------------------------------------------------ search
    def _bm25_index(self) -> BM25:
        if self._bm25 is None:
            self._order = sorted(self.chunks)
            self._bm25 = BM25(self.cfg.k1, self.cfg.b, self.cfg.bm25_variant)
            self._bm25.add(search_tokens(self.chunks[c]["text"]) for c in self._order)
        return self._bm25

    def _hit(self, cid: int, score: float) -> Hit:
        c = self.chunks[cid]
        return Hit(cid, c["doc"], c["text"], float(score), self.docs[c["doc"]].get("meta", {}))

    def search_bm25(self, query: str, k: int = 5) -> list[Hit]:
        bm25 = self._bm25_index()
        return [self._hit(self._order[i], s) for i, s in bm25.top_k(search_tokens(query), k)]

    def search_dense(self, query: str, k: int = 5) -> list[Hit]:
        if self.encoder is None or self.index is None:
            raise ValueError("dense search needs an encoder: build the store with a DenseEncoder "
                             "(lmstack rag build --dense) or search with mode='bm25'")
        scores, ids = self.index.search(self.encoder([query]), k)
        return [self._hit(int(i), s) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def search(self, query: str, k: int = 5, mode: str = "bm25", depth: int = 50) -> list[Hit]:
        """``mode``: "bm25", "dense" or "hybrid" (reciprocal rank fusion of the top ``depth`` of both)."""
        if mode == "bm25":
            return self.search_bm25(query, k)
        if mode == "dense":
            return self.search_dense(query, k)
        if mode != "hybrid":
            raise ValueError(f"search mode {mode!r}: choose 'bm25', 'dense' or 'hybrid'")
        sparse = [h.chunk_id for h in self.search_bm25(query, depth)]
        dense = [h.chunk_id for h in self.search_dense(query, depth)]
        return [self._hit(cid, s) for cid, s in reciprocal_rank_fusion([sparse, dense])[:k]]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save

        directory = Path(directory)
        if self.has_vectors and self.index is None:
            raise ValueError(f"{directory}: this store was loaded without its dense encoder; saving it would drop "
                             "its vectors (load it with encoder=, or --run RUN on the command line)")
        directory.mkdir(parents=True, exist_ok=True)
        if self.index is not None and len(self.index):
            blob = save({"vectors": np.ascontiguousarray(self.index.vectors), "ids": self.index.ids})
            atomic_write_bytes(directory / "vectors.safetensors", blob)
        elif (directory / "vectors.safetensors").exists():
            (directory / "vectors.safetensors").unlink()
        encoder_info = getattr(self.encoder, "describe", lambda: None)() or self.encoder_info
        atomic_write_json(directory / "store.json", {
            "format": STORE_FORMAT, "config": asdict(self.cfg), "next_id": self.next_id, "encoder": encoder_info,
            "docs": self.docs, "chunks": {str(k): v for k, v in self.chunks.items()}})
        return directory

    @classmethod
    def load(cls, directory: str | Path, encoder: Callable | None = None, tokenizer=None) -> "DocumentStore":
        from safetensors.numpy import load_file

        directory = Path(directory)
        path = directory / "store.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no document store here (build one with `lmstack rag build`)")
        data = read_json(path)
        if data.get("format") != STORE_FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r}, this lmstack reads {STORE_FORMAT!r}")
        store = cls(StoreConfig(**data["config"]), encoder=encoder, tokenizer=tokenizer)
        store.docs, store.next_id = data["docs"], data["next_id"]
        store.chunks = {int(k): v for k, v in data["chunks"].items()}
        vec_path = directory / "vectors.safetensors"
        store.has_vectors = vec_path.exists()
        store.encoder_info = data.get("encoder")
        if encoder is not None and vec_path.exists():
            arrays = load_file(str(vec_path))
            store.index = make_index(arrays["vectors"].shape[1], store.cfg.backend)
            store.index.add(arrays["vectors"], arrays["ids"])
        elif encoder is not None and store.chunks:
            order = sorted(store.chunks)  # stored without vectors: embed now
            vectors = store._ensure_index(encoder([store.chunks[c]["text"] for c in order]))
            store.index.add(vectors, order)
        return store
