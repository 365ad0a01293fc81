"""Per-item metrics of the evaluation harness and their standard errors.

Accuracies get the binomial standard error sqrt(p (1 - p) / n); any other per-item mean (F1, chrF, a
log-probability) the standard error of the mean, s / sqrt(n) with the sample standard deviation; corpus
figures that are ratios of sums (perplexity, bits per byte) a seeded bootstrap over documents.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Callable, Optional, Sequence

from lmstack.eval.answers import answer_matches, chrf, normalize_answer

_ANSWER_IS = re.compile(r"(?:answer is|answer:|答案是|答案：|答案:)\s*\$?(-?[\w\u3400-\u9fff.,/]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n independent items."""
    if n <= 0:
        return float("nan")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def mean_se(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation (n - 1) over sqrt(n)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def bootstrap_se(numerators: Sequence[float], denominators: Sequence[float], transform: Callable[[float], float],
                 resamples: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of transform(sum num / sum den), resampling the documents (seeded)."""
    n = len(numerators)
    if n < 2:
        return float("nan")
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        den = sum(denominators[i] for i in idx)
        if den > 0:
            stats.append(transform(sum(numerators[i] for i in idx) / den))
    return mean_se(stats) * math.sqrt(len(stats)) if len(stats) > 1 else float("nan")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 (Rajpurkar et al. 2016) on normalised text; Chinese is compared character by character."""
    def tokens(s: str) -> list[str]:
        norm = normalize_answer(s)
        return [t for word in norm.split() for t in (list(word) if not word.isascii() else [word])]

    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def extract_cot_answer(text: str) -> Optional[str]:
    """The final answer of a chain of thought: what follows the last "answer is" / "答案是", else the last
    number in the text, else None (nothing to score or vote for)."""
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].rstrip(".,")
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def extract_with_regex(text: str, pattern: str) -> Optional[str]:
    """Group 1 (or the whole match) of the LAST match of ``pattern`` in ``text``."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    m = matches[-1]
    return (m.group(1) if m.groups() else m.group(0)).strip()


def majority_vote(answers: Sequence[Optional[str]]) -> Optional[str]:
    """Self-consistency (Wang et al. 2023): the most frequent extracted answer; ties go to the one seen first."""
    normed = [normalize_answer(a) if a is not None else None for a in answers]
    votes = Counter(a for a in normed if a)
    if not votes:
        return None
    top = max(votes.values())
    winner = next(a for a in normed if a and votes[a] == top)
    return answers[normed.index(winner)]


GENERATION_METRICS = ("exact_match", "contains", "f1", "chrf")


def score_generation(prediction: Optional[str], reference: str, metric: str) -> float:
    """One generation metric for one item; a None prediction (nothing extracted) scores 0."""
    if prediction is None:
        return 0.0
    if metric == "exact_match":
        return float(normalize_answer(prediction) == normalize_answer(reference))
    if metric == "contains":
        return float(answer_matches(prediction, reference))
    if metric == "f1":
        return token_f1(prediction, reference)
    if metric == "chrf":
        return chrf(prediction, reference)
    raise ValueError(f"unknown generation metric {metric!r}; choose from {', '.join(GENERATION_METRICS)}")
