"""ROUGE-L and distinct-n (lmstack.eval.rouge) against Google's rouge-score package as the oracle."""

from __future__ import annotations

import random

import pytest

from lmstack.eval.rouge import (RougePool, distinct_n, lcs_length, mean_pairwise_rouge_l, rouge_l, rouge_l_tokens,
                                rouge_tokens)

WORDS = "the a capital of country city born where what is was year in which Li Wei Paris 12 plus 7".split()


def _random_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))) + rng.choice(["?", ".", ""]) for _ in range(n)]


def test_rouge_l_matches_rouge_score_on_english():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sents = _random_sentences(120, 0) + ["Where was Li Wei born?", "In which city was Li Wei born?",
                                         "What's the CAPITAL of France?!", ""]
    rng = random.Random(1)
    for _ in range(300):
        a, b = rng.choice(sents), rng.choice(sents)
        want = scorer.score(b, a)["rougeL"].fmeasure  # score(target, prediction)
        assert rouge_l(a, b) == pytest.approx(want, abs=1e-12), (a, b)


def test_lcs_and_tokens():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert rouge_tokens("Li Wei's city: 北京!") == ["li", "wei", "s", "city", "北", "京"]
    assert rouge_l("北京是首都", "首都是北京") == pytest.approx(0.4)  # LCS 2 of 5 characters each side
    assert rouge_l_tokens([], ["a"]) == 0.0 and rouge_l("same words", "same words") == 1.0


def test_pool_pruning_never_changes_a_decision():
    sents = _random_sentences(150, 2)
    exact = RougePool(sents[:100])
    pruned = RougePool(sents[:100], prune_below=0.7)
    for s in sents[100:]:
        full = max((rouge_l(s, t) for t in sents[:100]), default=0.0)
        assert exact.max_similarity(s) == pytest.approx(full)
        assert (pruned.max_similarity(s) >= 0.7) == (full >= 0.7)


def test_diversity_measures():
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert mean_pairwise_rouge_l(["a b", "a b", "c d"]) == pytest.approx((1 + 0 + 0) / 3)
