"""ROUGE-L (Lin 2004) and distinct-n, for the novelty filter and diversity figures of self-instruct.

Tokens: lower-cased runs of ASCII letters and digits (the tokenisation of Google's ``rouge-score``
package, which the tests use as the oracle on English text), plus each CJK character as its own token so
Chinese text is not dropped (``rouge-score`` drops it).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

_TOKEN = re.compile(r"[a-z0-9]+|[\u3400-\u9fff\uf900-\ufaff]")


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_tokens(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 between two token lists: 2PR / (P + R) with P = LCS/|prediction|, R = LCS/|reference|."""
    if not prediction or not reference:
        return 0.0
    lcs = lcs_length(prediction, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(prediction), lcs / len(reference)
    return 2 * p * r / (p + r)


def rouge_l(prediction: str, reference: str) -> float:
    return rouge_l_tokens(rouge_tokens(prediction), rouge_tokens(reference))


class RougePool:
    """A growing set of texts; ``max_similarity(text)`` is the highest ROUGE-L F1 of ``text`` against any of
    them. Pairs whose bag-of-tokens overlap already bounds F1 below ``prune_below`` skip the LCS
    (LCS <= |multiset intersection|, so F1 <= 2 * overlap / (n + m))."""

    def __init__(self, texts: Sequence[str] = (), prune_below: float = 0.0):
        self.prune_below = prune_below
        self.items: list[tuple[list[str], Counter]] = []
        for t in texts:
            self.add(t)

    def add(self, text: str) -> None:
        toks = rouge_tokens(text)
        self.items.append((toks, Counter(toks)))

    def max_similarity(self, text: str) -> float:
        toks = rouge_tokens(text)
        if not toks:
            return 0.0
        bag, best = Counter(toks), 0.0
        for other, other_bag in self.items:
            if not other:
                continue
            bound = 2 * sum((bag & other_bag).values()) / (len(toks) + len(other))
            if bound <= best or bound < self.prune_below:
                continue
            best = max(best, rouge_l_tokens(toks, other))
        return best


def mean_pairwise_rouge_l(texts: Sequence[str], max_pairs: int = 5000) -> float:
    """Mean ROUGE-L F1 over pairs of texts (the first ``max_pairs`` pairs in order); lower = more diverse."""
    toks = [rouge_tokens(t) for t in texts]
    total, n = 0.0, 0
    for i in range(len(toks)):
        for j in range(i + 1, len(toks)):
            if n >= max_pairs:
                return total / n
            total += rouge_l_tokens(toks[i], toks[j])
            n += 1
    return total / n if n else float("nan")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (Li et al. 2016); higher = more diverse."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        toks = rouge_tokens(t)
        grams += [tuple(toks[i: i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")
