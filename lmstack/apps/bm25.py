"""BM25 ranking (Robertson & Zaragoza 2009) with a CJK-aware tokenizer, in numpy.

Two IDF variants:
- ``"lucene"`` (default): idf = ln(1 + (N - n + 0.5) / (n + 0.5)), never negative (Lucene, bm25s);
- ``"okapi"``: idf = ln((N - n + 0.5) / (n + 0.5)); terms in more than half the documents get a negative
  value, which is replaced by ``epsilon`` times the mean idf (the convention of the rank-bm25 package).
Term frequency saturation: tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)) for okapi; Lucene (since 8.0)
drops the constant factor (k1 + 1), which changes no ranking, and so does the lucene variant here.
A term repeated in the query counts once per repetition.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import regex

# A Han / Kana / Hangul character, or a run of letters and digits.
_TOKEN_RE = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]|[\p{L}\p{N}]+")
_CJK_RE = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]")


def search_tokens(text: str, cjk_bigrams: bool = True) -> list[str]:
    """Lower-cased NFKC words; each CJK character is a token and, with ``cjk_bigrams``, so is each pair of
    adjacent CJK characters (Chinese has no spaces: character bigrams approximate words without a
    segmenter, the usual choice for CJK retrieval)."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    prev_cjk: str | None = None
    prev_end = -1
    for m in _TOKEN_RE.finditer(text):
        tok = m.group()
        if _CJK_RE.fullmatch(tok):
            out.append(tok)
            # a bigram only joins characters that are adjacent in the text (no punctuation in between)
            if cjk_bigrams and prev_cjk is not None and m.start() == prev_end:
                out.append(prev_cjk + tok)
            prev_cjk, prev_end = tok, m.end()
        else:
            out.append(tok)
            prev_cjk = None
    return out


class BM25:
    """A BM25 index over token lists. Documents can be added and removed; statistics are rebuilt lazily."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, variant: str = "lucene", epsilon: float = 0.25):
        if variant not in ("lucene", "okapi"):
            raise ValueError(f"BM25 variant {variant!r}: choose 'lucene' or 'okapi'")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.variant, self.epsilon = k1, b, variant, epsilon
        self.doc_terms: list[Counter] = []
        self._dirty = True

    def __len__(self) -> int:
        return len(self.doc_terms)

    def add(self, docs: Iterable[Sequence[str]]) -> None:
        self.doc_terms.extend(Counter(d) for d in docs)
        self._dirty = True

    def remove(self, positions: Iterable[int]) -> None:
        drop = set(positions)
        bad = [p for p in drop if not 0 <= p < len(self.doc_terms)]
        if bad:
            raise IndexError(f"BM25.remove: positions {sorted(bad)[:5]} out of range 0..{len(self.doc_terms) - 1}")
        self.doc_terms = [c for i, c in enumerate(self.doc_terms) if i not in drop]
        self._dirty = True

    def _rebuild(self) -> None:
        n_docs = len(self.doc_terms)
        self.doc_len = np.array([sum(c.values()) for c in self.doc_terms], dtype=np.float64)
        self.avgdl = float(self.doc_len.mean()) if n_docs else 0.0
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, counts in enumerate(self.doc_terms):
            for term, tf in counts.items():
                ids, tfs = postings.setdefault(term, ([], []))
                ids.append(i)
                tfs.append(tf)
        self.postings = {t: (np.array(i, dtype=np.int64), np.array(f, dtype=np.float64)) for t, (i, f) in postings.items()}
        self.idf = self._idf({t: len(p[0]) for t, p in self.postings.items()}, n_docs)
        self._dirty = False

    def _idf(self, df: dict[str, int], n_docs: int) -> dict[str, float]:
        if self.variant == "lucene":
            return {t: math.log(1.0 + (n_docs - n + 0.5) / (n + 0.5)) for t, n in df.items()}
        idf = {t: math.log(n_docs - n + 0.5) - math.log(n + 0.5) for t, n in df.items()}
        floor = self.epsilon * (sum(idf.values()) / len(idf)) if idf else 0.0
        return {t: (floor if v < 0 else v) for t, v in idf.items()}

    def scores(self, query: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for the query tokens (shape [n_docs], float64)."""
        if self._dirty:
            self._rebuild()
        out = np.zeros(len(self.doc_terms), dtype=np.float64)
        if not self.doc_terms or self.avgdl == 0:
            return out
        norm = self.k1 * (1.0 - self.b + self.b * self.doc_len / self.avgdl)
        boost = 1.0 if self.variant == "lucene" else self.k1 + 1.0
        for term in query:
            posting = self.postings.get(term)
            if posting is None:
                continue
            ids, tf = posting
            out[ids] += self.idf[term] * tf * boost / (tf + norm[ids])
        return out

    def top_k(self, query: Sequence[str], k: int = 5) -> list[tuple[int, float]]:
        """(position, score) of the best ``k`` documents with a positive score, best first; ties by position."""
        s = self.scores(query)
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        return [(int(i), float(s[i])) for i in order if s[i] > 0]
