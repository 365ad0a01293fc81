"""Logits processors against HF transformers' processors/warpers on identical scores."""

import math

import pytest
import torch
from transformers.generation import logits_process as hf

from lmstack.generate import processors as P
from lmstack.generate.config import GenerationConfig

V = 50


def _scores(seed=0, b=4, v=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * 3


def _ids(seed=1, b=4, length=12, v=V, high=8):
    g = torch.Generator().manual_seed(seed)
    # a small id range so that repeats and repeated n-grams are frequent
    return torch.randint(0, high, (b, length), generator=g)


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    ids, s = _ids(), _scores()
    ours = P.RepetitionPenalty(penalty)(ids, s.clone())
    ref = hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, s.clone())
    torch.testing.assert_close(ours, ref)
    assert not torch.equal(ours, s)


def test_repetition_penalty_ignores_left_padding():
    s = _scores(b=1)
    ids = torch.tensor([[7, 7, 1, 2]])
    mask = torch.tensor([[False, False, True, True]])
    ours = P.RepetitionPenalty(2.0)(ids, s.clone(), mask=mask)
    ref = hf.RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[1, 2]]), s.clone())
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_hf(n):
    ids, s = _ids(length=30, high=3), _scores()
    ours = P.NoRepeatNGram(n)(ids, s.clone())
    ref = hf.NoRepeatNGramLogitsProcessor(n)(ids, s.clone())
    torch.testing.assert_close(ours, ref)
    assert torch.isinf(ours).any()


def test_bad_words_equals_hf():
    ids = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    s = _scores(b=2)
    bad = [[5], [3, 4, 9], [2, 1, 11], [4, 6]]
    ours = P.BadWords(bad)(ids, s.clone())
    ref = hf.NoBadWordsLogitsProcessor(bad, eos_token_id=49)(ids, s.clone())
    torch.testing.assert_close(ours, ref)
    assert torch.isinf(ours[0, 9]) and torch.isinf(ours[1, 11]) and not torch.isinf(ours[0, 11])


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_equals_hf(t):
    ids, s = _ids(), _scores()
    torch.testing.assert_close(P.Temperature(t)(ids, s.clone()), hf.TemperatureLogitsWarper(t)(ids, s.clone()))


@pytest.mark.parametrize("k", [1, 5, 20, 100])
def test_top_k_equals_hf(k):
    ids, s = _ids(), _scores()
    torch.testing.assert_close(P.TopK(k)(ids, s.clone()), hf.TopKLogitsWarper(k)(ids, s.clone()))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99, 1.0])
def test_top_p_equals_hf(p):
    ids, s = _ids(), _scores()
    torch.testing.assert_close(P.TopP(p)(ids, s.clone()), hf.TopPLogitsWarper(p)(ids, s.clone()))


@pytest.mark.parametrize("m", [0.0, 0.05, 0.3, 1.0])
def test_min_p_equals_hf(m):
    ids, s = _ids(), _scores()
    torch.testing.assert_close(P.MinP(m)(ids, s.clone()), hf.MinPLogitsWarper(m)(ids, s.clone()))


def test_full_chain_equals_hf_chain():
    cfg = GenerationConfig(strategy="sample", repetition_penalty=1.2, no_repeat_ngram_size=2,
                           temperature=0.7, top_k=20, top_p=0.8, min_p=0.02)
    ids, s = _ids(length=16), _scores()
    ours = P.build_processors(cfg)(ids, s.clone())
    chain = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.2), hf.NoRepeatNGramLogitsProcessor(2),
        hf.TemperatureLogitsWarper(0.7), hf.TopKLogitsWarper(20), hf.TopPLogitsWarper(0.8),
        hf.MinPLogitsWarper(0.02)])
    torch.testing.assert_close(ours, chain(ids, s.clone()))
    # and the filtered distributions are equal
    torch.testing.assert_close(ours.softmax(-1), chain(ids, s.clone()).softmax(-1))


def test_presence_frequency_penalty_counts_output_only():
    s = torch.zeros(1, 6)
    ids = torch.tensor([[5, 5, 1, 1, 1, 2]])  # prompt = [5, 5], output = [1, 1, 1, 2]
    out = P.PresenceFrequencyPenalty(presence=0.5, frequency=0.25)(ids, s, gen_start=2)
    assert out[0].tolist() == pytest.approx([0.0, -(0.5 + 0.75), -(0.5 + 0.25), 0.0, 0.0, 0.0])


def test_min_new_tokens_masks_stop_tokens_until_reached():
    s = torch.zeros(1, 6)
    proc = P.MinNewTokens(2, [3])
    assert math.isinf(proc(torch.tensor([[0, 1, 2]]), s, gen_start=2)[0, 3].item())
    assert proc(torch.tensor([[0, 1, 2, 4]]), s, gen_start=2)[0, 3].item() == 0.0


def test_default_config_builds_no_processor():
    assert len(P.build_processors(GenerationConfig())) == 0


def test_sampling_frequencies_match_filtered_distribution_chi_square():
    # Sample many tokens through the full filter chain and compare counts with the filtered
    # distribution: Pearson chi-square below the 99.9% quantile (df <= 30 -> bound 59.7).
    cfg = GenerationConfig(strategy="sample", temperature=0.8, top_k=30, top_p=0.95)
    s = _scores(seed=3, b=1)
    filtered = P.build_processors(cfg)(torch.zeros(1, 1, dtype=torch.long), s)
    probs = filtered.softmax(-1)[0]
    support = (probs > 0).nonzero().flatten()
    assert 2 <= len(support) <= 30
    n = 20000
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(probs.expand(1, -1), n, replacement=True, generator=gen)[0]
    # draws through our sampler, one token at a time with a seeded generator per row
    ours = P.sample_from_scores(filtered.expand(n, -1), [torch.Generator().manual_seed(1)] * n)
    assert set(ours.tolist()) <= set(support.tolist())
    counts = torch.bincount(ours, minlength=V).double()
    expected = probs.double() * n
    keep = expected > 5
    chi2 = (((counts - expected) ** 2 / expected)[keep]).sum().item()
    df = int(keep.sum()) - 1
    bound = {k: v for k, v in [(5, 20.5), (10, 29.6), (15, 37.7), (20, 45.3), (25, 52.6), (30, 59.7)]}
    limit = next(v for k, v in sorted(bound.items()) if k >= df)
    assert chi2 < limit, (chi2, df)
    # the reference torch draws pass the same test (sanity check of the bound)
    counts_ref = torch.bincount(draws, minlength=V).double()
    assert (((counts_ref - expected) ** 2 / expected)[keep]).sum().item() < limit


def test_seeded_sampling_is_reproducible():
    s = _scores(b=1).expand(200, -1)
    a = P.sample_from_scores(s, [torch.Generator().manual_seed(5)] * 200)
    b = P.sample_from_scores(s, [torch.Generator().manual_seed(5)] * 200)
    assert torch.equal(a, b)
