"""Deduplication: exact (document hash; line / sentence / paragraph level across the corpus),
near-duplicate (MinHash-LSH over word n-gram shingles, union-find clusters) and dataset-level
decontamination against reference sets such as evaluation data.

MinHash (Broder 1997): the probability that two sets share their minimum under a random permutation
equals their Jaccard similarity; ``num_perm`` independent hash functions estimate it. LSH banding
(Indyk & Motwani 1998; Leskovec et al., "Mining of Massive Datasets", ch. 3) splits the signature
into ``bands`` x ``rows``; two documents become candidates when all rows of at least one band agree,
which happens with probability ``1 - (1 - J^rows)^bands``. Defaults follow FineWeb (Penedo et al. 2024):
word 5-gram shingles, 14 bands x 8 rows = 112 permutations.

Everything per shingle is vectorised in numpy: tokens are hashed once (cached), shingle hashes are
combined from token hashes with wrapping uint64 arithmetic, and the permutations are
multiply-shift hashes ``h_i(x) = (a_i * x + b_i) mod 2^64 >> 32`` (Dietzfelbinger et al. 1997)
applied to a whole batch of documents at once, with ``np.minimum.reduceat`` per document.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence, get_args

import numpy as np

from lmstack.data.text import shingle_tokens, split_sentences

_TOKEN_CACHE_MAX = 2_000_000


class _TokenHashCache(dict):
    """token -> stable 64-bit hash; a miss computes and stores it (so map(cache.__getitem__) is fast)."""

    def __missing__(self, token: str) -> int:
        h = self[token] = stable_hash64(token)
        return h


_TOKEN_CACHE = _TokenHashCache()


def stable_hash64(s: str) -> int:
    """A process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def text_hash(text: str) -> int:
    """Exact-dedup key: the hash of the text with runs of whitespace collapsed and ends stripped."""
    return stable_hash64(" ".join(text.split()))


def token_hashes(tokens: list[str]) -> np.ndarray:
    if len(_TOKEN_CACHE) > _TOKEN_CACHE_MAX:
        _TOKEN_CACHE.clear()
    return np.fromiter(map(_TOKEN_CACHE.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014): spreads every input bit over the 64 output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# Odd multipliers, one per position inside an n-gram (so "a b" and "b a" differ).
POSITION_MULT = mix64(np.arange(1, 65, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)


ShingleUnit = Literal["word", "char"]
SHINGLE_UNITS = get_args(ShingleUnit)


def shingle_units(text: str, unit: str = "word") -> list[str]:
    """The sequence shingles are built from: words (CJK: characters; lower-cased, punctuation dropped)
    or characters (lower-cased, whitespace runs collapsed to one space)."""
    if unit == "word":
        return shingle_tokens(text)
    if unit == "char":
        return list(" ".join(text.lower().split()))
    raise ValueError(f"shingle unit {unit!r} is not one of {', '.join(SHINGLE_UNITS)}")


def shingle_hashes(text: str, ngram: int = 5, tokens: list[str] | None = None, unit: str = "word") -> np.ndarray:
    """Unique uint64 hashes of the word n-gram shingles of ``text`` (CJK: one character = one word,
    so Chinese gets character n-grams). A text shorter than ``ngram`` words is one shingle."""
    toks = shingle_units(text, unit) if tokens is None else tokens
    if not toks:
        return np.zeros(0, dtype=np.uint64)
    th = token_hashes(toks)
    n = min(ngram, len(th))
    m = len(th) - n + 1
    with np.errstate(over="ignore"):
        acc = th[:m] * POSITION_MULT[0]
        for j in range(1, n):
            acc = acc + th[j:j + m] * POSITION_MULT[j]
        return np.unique(mix64(acc))


def shingle_strings(text: str, ngram: int = 5, unit: str = "word") -> list[str]:
    """The same shingles as strings (for peers such as datasketch and for exact Jaccard)."""
    toks = shingle_units(text, unit)
    if not toks:
        return []
    n = min(ngram, len(toks))
    sep = "" if unit == "char" else " "
    return sorted({sep.join(toks[i:i + n]) for i in range(len(toks) - n + 1)})


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class MinHasher:
    """Vectorised MinHash signatures: ``signatures(texts) -> uint32 [N, num_perm]``."""

    EMPTY = np.uint32(0xFFFFFFFF)

    def __init__(self, num_perm: int = 112, ngram: int = 5, seed: int = 1, chunk_shingles: int = 32768,
                 unit: str = "word"):
        if num_perm < 1:
            raise ValueError("num_perm must be >= 1")
        self.num_perm = num_perm
        self.ngram = ngram
        self.unit = unit
        self.chunk_shingles = chunk_shingles
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def signature_from_shingles(self, sh: np.ndarray) -> np.ndarray:
        return self.signatures_from_shingles([sh])[0]

    def signatures_from_shingles(self, shingle_sets: Sequence[np.ndarray]) -> np.ndarray:
        n = len(shingle_sets)
        out = np.full((n, self.num_perm), self.EMPTY, dtype=np.uint32)
        i = 0
        while i < n:
            # Pack documents until ~chunk_shingles shingles, hash them in one [S, num_perm] product.
            j, total = i, 0
            while j < n and (total == 0 or total + len(shingle_sets[j]) <= self.chunk_shingles):
                total += len(shingle_sets[j])
                j += 1
            batch = [s for s in shingle_sets[i:j]]
            lengths = np.array([len(s) for s in batch])
            nonempty = np.nonzero(lengths)[0]
            if len(nonempty):
                flat = np.concatenate([batch[k] for k in nonempty])
                starts = np.concatenate([[0], np.cumsum(lengths[nonempty])[:-1]])
                out[i + nonempty] = self._min_hash(flat, starts)
            i = j
        return out

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """Signatures straight from texts. MinHash needs no unique shingles (a repeated shingle cannot
        change a minimum), so the n-gram hashes of a whole batch are built on one flat token array."""
        texts = list(texts)
        out = np.full((len(texts), self.num_perm), self.EMPTY, dtype=np.uint32)
        batch_tokens: list[np.ndarray] = []
        batch_ids: list[int] = []
        budget = 0
        for i, t in enumerate(texts):
            th = token_hashes(shingle_units(t, self.unit))
            if len(th) == 0:
                continue
            batch_tokens.append(th)
            batch_ids.append(i)
            budget += len(th)
            if budget >= self.chunk_shingles:
                out[batch_ids] = self._batch_signatures(batch_tokens)
                batch_tokens, batch_ids, budget = [], [], 0
        if batch_tokens:
            out[batch_ids] = self._batch_signatures(batch_tokens)
        return out

    def _batch_signatures(self, token_arrays: list[np.ndarray]) -> np.ndarray:
        lengths = np.array([len(a) for a in token_arrays], dtype=np.int64)
        flat = np.concatenate(token_arrays)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        n = self.ngram
        # Shingle k of document d starts at token starts[d] + k; there are max(1, len - n + 1) per doc.
        counts = np.maximum(1, lengths - n + 1)
        sh_doc = np.repeat(np.arange(len(lengths)), counts)
        sh_first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = starts[sh_doc] + (np.arange(counts.sum()) - sh_first[sh_doc])
        end = (starts + lengths)[sh_doc]
        padded = np.concatenate([flat, np.zeros(n, dtype=np.uint64)])
        with np.errstate(over="ignore"):
            acc = np.zeros(len(pos), dtype=np.uint64)
            for j in range(n):
                term = padded[pos + j] * POSITION_MULT[j]
                term[pos + j >= end] = 0  # short documents: a single shingle of all their tokens
                acc += term
            shingles = mix64(acc)
        return self._min_hash(shingles, sh_first)

    def _min_hash(self, shingles: np.ndarray, doc_starts: np.ndarray) -> np.ndarray:
        """Per-document minimum of every permutation over a flat shingle array, in cache-sized chunks."""
        n_docs = len(doc_starts)
        out = np.empty((n_docs, self.num_perm), dtype=np.uint64)
        bounds = np.concatenate([doc_starts, [len(shingles)]])
        step = 4096
        d = 0
        buf = np.empty((step, self.num_perm), dtype=np.uint64)
        while d < n_docs:
            # Take whole documents up to ~step shingles (at least one document).
            e = int(np.searchsorted(bounds, bounds[d] + step, side="right")) - 1
            e = max(e, d + 1)
            lo, hi = int(bounds[d]), int(bounds[e])
            m = hi - lo
            hv = buf[:m] if m <= step else np.empty((m, self.num_perm), dtype=np.uint64)
            with np.errstate(over="ignore"):
                np.multiply(shingles[lo:hi, None], self.a[None, :], out=hv)
                np.add(hv, self.b[None, :], out=hv)
            np.right_shift(hv, np.uint64(32), out=hv)
            out[d:e] = np.minimum.reduceat(hv, bounds[d:e] - lo, axis=0)
            d = e
        return out.astype(np.uint32)


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def shared_key_groups(idx: np.ndarray, keys: np.ndarray) -> Iterable[np.ndarray]:
    """The entries of ``idx`` grouped by equal ``keys`` (one LSH band's bucket keys), for every key
    that two or more entries share; each group in ascending order of ``idx``."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    if len(ks) < 2:
        return
    boundaries = np.nonzero(ks[1:] != ks[:-1])[0] + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(ks)]])
    for s, e in zip(starts[(ends - starts) >= 2], ends[(ends - starts) >= 2]):
        yield idx[order[s:e]]


def union_bucket(uf: "UnionFind", sigs: np.ndarray, members: np.ndarray, verify_threshold: float = 0.0) -> None:
    """Join a bucket's members to its first one. With ``verify_threshold > 0`` a member joins only if its
    estimated Jaccard with the first reaches the threshold (drops LSH false positives)."""
    first = int(members[0])
    if verify_threshold > 0:
        agree = (sigs[members[1:]] == sigs[first]).mean(axis=1)
        members = np.concatenate([[first], members[1:][agree >= verify_threshold]])
    for other in members[1:]:
        uf.union(first, int(other))


class MinHashLSH:
    """Banded LSH over a whole signature matrix at once (no per-document Python insert)."""

    def __init__(self, bands: int = 14, rows: int = 8):
        self.bands, self.rows = bands, rows
        rng = np.random.default_rng(12345)
        self._mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """uint64 [N, bands]: one bucket key per band."""
        if sigs.shape[1] < self.bands * self.rows:
            raise ValueError(f"signatures have {sigs.shape[1]} permutations, LSH needs bands*rows = "
                             f"{self.bands}*{self.rows} = {self.bands * self.rows}")
        s = sigs[:, : self.bands * self.rows].astype(np.uint64).reshape(len(sigs), self.bands, self.rows)
        with np.errstate(over="ignore"):
            return mix64((s * self._mult[None, None, :]).sum(axis=2, dtype=np.uint64))

    def buckets(self, sigs: np.ndarray, valid: np.ndarray | None = None) -> Iterable[np.ndarray]:
        """Yield the member indices (ascending) of every bucket with >= 2 documents, band by band."""
        keys = self.band_keys(sigs)
        idx_all = np.arange(len(sigs)) if valid is None else np.nonzero(valid)[0]
        for b in range(self.bands):
            yield from shared_key_groups(idx_all, keys[idx_all, b])

    def candidate_pairs(self, sigs: np.ndarray, valid: np.ndarray | None = None) -> set[tuple[int, int]]:
        pairs: set[tuple[int, int]] = set()
        for members in self.buckets(sigs, valid):
            m = members.tolist()
            for x in range(len(m)):
                for y in range(x + 1, len(m)):
                    pairs.add((m[x], m[y]))
        return pairs

    def clusters(self, sigs: np.ndarray, valid: np.ndarray | None = None, verify_threshold: float = 0.0) -> UnionFind:
        """Union documents that share a bucket. With ``verify_threshold > 0`` a member joins only if its
        estimated Jaccard with the bucket's first member reaches the threshold (drops LSH false positives)."""
        uf = UnionFind(len(sigs))
        for members in self.buckets(sigs, valid):
            union_bucket(uf, sigs, members, verify_threshold)
        return uf


@dataclass
class MinHashConfig:
    enabled: bool = True
    ngram: int = 5              # FineWeb: word 5-grams
    unit: ShingleUnit = "word"  # shingle unit; a CJK character counts as a word
    num_perm: int = 112         # FineWeb: 14 bands x 8 rows
    bands: int = 14
    rows: int = 8
    seed: int = 1
    verify_threshold: float = 0.0   # FineWeb keeps raw LSH clusters; > 0 checks the estimated Jaccard too

    def __post_init__(self):
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.ngram < 1:
            raise ValueError("ngram must be >= 1")
        if self.unit not in SHINGLE_UNITS:
            raise ValueError(f"unit {self.unit!r} is not one of {', '.join(SHINGLE_UNITS)}")


class MinHashDeduplicator:
    """Near-duplicate removal: cluster with LSH + union-find and keep the first document of each cluster."""

    def __init__(self, cfg: MinHashConfig | None = None):
        self.cfg = cfg or MinHashConfig()
        self.hasher = MinHasher(self.cfg.num_perm, self.cfg.ngram, self.cfg.seed, unit=self.cfg.unit)
        self.lsh = MinHashLSH(self.cfg.bands, self.cfg.rows)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        return self.hasher.signatures(texts)

    def find_duplicates(self, sigs: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, list[int]]]:
        """Return (keep mask, clusters {kept index: [all member indices]} for clusters of size >= 2).
        Documents with no shingles (``valid`` False) are always kept and never clustered."""
        n = len(sigs)
        if valid is None:
            valid = ~(sigs == MinHasher.EMPTY).all(axis=1)
        uf = self.lsh.clusters(sigs, valid, self.cfg.verify_threshold)
        labels = uf.labels()
        keep = np.ones(n, dtype=bool)
        clusters: dict[int, list[int]] = {}
        order = np.argsort(labels, kind="stable")
        sl = labels[order]
        bounds = np.nonzero(sl[1:] != sl[:-1])[0] + 1
        for grp in np.split(order, bounds):
            if len(grp) < 2:
                continue
            grp = np.sort(grp)
            keep[grp[1:]] = False
            clusters[int(grp[0])] = grp.tolist()
        return keep, clusters


# --- exact dedup ---------------------------------------------------------------------------------

class ExactDeduplicator:
    """Document-level exact dedup: the first document with a given normalised text hash wins."""

    def __init__(self):
        self.seen: set[int] = set()
        self.removed = 0

    def keep(self, h: int) -> bool:
        if h in self.seen:
            self.removed += 1
            return False
        self.seen.add(h)
        return True


@dataclass
class SpanDedupConfig:
    enabled: bool = True
    unit: Literal["line", "sentence", "paragraph"] = "line"  # (sentence mode re-joins kept sentences with a
                                # space, none for Chinese, so line breaks inside a document are not kept)
    min_chars: int = 40         # shorter spans ("Thanks!", "}") repeat legitimately
    kinds: list[str] = field(default_factory=lambda: ["prose"])  # code lines are never removed by default

    def __post_init__(self):
        if self.unit not in ("line", "sentence", "paragraph"):
            raise ValueError(f"unit {self.unit!r} is not one of 'line', 'sentence', 'paragraph'")


class SpanDeduplicator:
    """Removes lines / sentences / paragraphs already seen anywhere earlier in the corpus (their first
    occurrence stays). Boilerplate such as licence headers and cookie banners goes; short spans stay."""

    def __init__(self, cfg: SpanDedupConfig | None = None):
        self.cfg = cfg or SpanDedupConfig()
        self.seen: set[int] = set()
        self.removed_spans = 0
        self.removed_chars = 0
        self.examples: Counter = Counter()

    def _spans(self, text: str) -> tuple[list[str], str]:
        if self.cfg.unit == "line":
            return text.split("\n"), "\n"
        if self.cfg.unit == "paragraph":
            return text.split("\n\n"), "\n\n"
        return split_sentences(text), " "

    def process(self, text: str) -> str:
        spans, sep = self._spans(text)
        if self.cfg.unit == "sentence" and not any(ch in text for ch in "。！？"):
            sep = " "
        elif self.cfg.unit == "sentence":
            sep = ""
        kept = []
        for sp in spans:
            key = sp.strip()
            if len(key) >= self.cfg.min_chars:
                h = stable_hash64(" ".join(key.split()))
                if h in self.seen:
                    self.removed_spans += 1
                    self.removed_chars += len(sp)
                    if len(self.examples) < 50:
                        self.examples[key[:120]] += 1
                    elif key[:120] in self.examples:
                        self.examples[key[:120]] += 1
                    continue
                self.seen.add(h)
            kept.append(sp)
        return sep.join(kept)


# --- decontamination ------------------------------------------------------------------------------

@dataclass
class DecontamConfig:
    enabled: bool = True
    ngram: int = 5                  # short eval questions need short n-grams (GPT-3 used 13 for long tasks)
    containment_threshold: float = 0.8
    min_ref_shingles: int = 2       # a 1-shingle reference item would flag any doc quoting 5 common words


class Decontaminator:
    """Flags a training document as contaminated when it contains >= ``containment_threshold`` of the
    n-gram shingles of some reference item (|ref ∩ doc| / |ref|). This catches an eval question pasted
    into a longer document, which a symmetric Jaccard test misses; an exact or near copy has containment ~1."""

    def __init__(self, references: Sequence[str], cfg: DecontamConfig | None = None):
        self.cfg = cfg or DecontamConfig()
        self.ref_texts = list(references)
        self.ref_sizes: list[int] = []
        index: dict[int, list[int]] = {}
        for rid, text in enumerate(self.ref_texts):
            sh = shingle_hashes(text, self.cfg.ngram)
            self.ref_sizes.append(len(sh))
            if len(sh) < self.cfg.min_ref_shingles:
                continue
            for h in sh.tolist():
                index.setdefault(h, []).append(rid)
        self.index = index
        self.all_hashes = np.array(sorted(index), dtype=np.uint64)

    def match(self, text: str, shingles: np.ndarray | None = None) -> tuple[int, float] | None:
        """(reference id, containment) of the most-contained reference above threshold, else None."""
        if len(self.all_hashes) == 0:
            return None
        sh = shingle_hashes(text, self.cfg.ngram) if shingles is None else shingles
        if len(sh) == 0:
            return None
        pos = np.searchsorted(self.all_hashes, sh)
        pos[pos >= len(self.all_hashes)] = 0
        hits = sh[self.all_hashes[pos] == sh]
        if len(hits) < self.cfg.min_ref_shingles:
            return None
        counts: Counter = Counter()
        for h in hits.tolist():
            counts.update(self.index[h])
        best = None
        for rid, c in counts.items():
            frac = c / self.ref_sizes[rid]
            if frac >= self.cfg.containment_threshold and (best is None or frac > best[1]):
                best = (rid, frac)
        return best

