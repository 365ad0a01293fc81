"""Contrastive search/decoding against brute-force references, speculative decoding (greedy equality
and distribution), best-of-n and self-consistency."""

import pytest
import torch
import torch.nn.functional as F

from lmstack.generate import GenerationConfig, accept_drafts, generate
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size, seed=0)


@pytest.fixture(scope="module")
def small(tok):
    # a 4x smaller model (d_model 32, 1 layer) with other weights: the draft / amateur
    return tiny_model(tok.vocab_size, seed=5, d_model=32, n_layers=1)


def _prompt(tok, text="ROMEO:"):
    return [tok.bos_id] + tok.encode(text)


@torch.no_grad()
def _contrastive_search_reference(model, ids, steps, k, alpha):
    # Su et al. 2022, recomputing the whole sequence for every candidate (no cache)
    seq = list(ids)
    for _ in range(steps):
        out = model(torch.tensor([seq]), return_hidden=True)
        ctx = F.normalize(out.hidden[0].float(), dim=-1)
        probs = out.logits[0, -1].float().softmax(-1)
        top_p, top_i = probs.topk(k)
        best, best_score = None, None
        for p, v in zip(top_p.tolist(), top_i.tolist()):
            h = F.normalize(model(torch.tensor([seq + [v]]), return_hidden=True).hidden[0, -1].float(), dim=-1)
            score = (1 - alpha) * p - alpha * float((ctx @ h).max())
            if best_score is None or score > best_score:
                best, best_score = v, score
        seq.append(best)
    return seq[len(ids):]


def test_contrastive_search_matches_reference(model, tok):
    ids = _prompt(tok)
    cfg = GenerationConfig(strategy="contrastive_search", penalty_alpha=0.6, contrastive_k=4, max_new_tokens=10,
                           ignore_eos=True)
    got = generate(model, tok, [ids], cfg)[0]
    assert got.token_ids == _contrastive_search_reference(model, ids, 10, 4, 0.6)


def test_contrastive_search_alpha_zero_is_greedy(model, tok):
    ids = _prompt(tok)
    cs = generate(model, tok, [ids], GenerationConfig(strategy="contrastive_search", penalty_alpha=0.0,
                                                      max_new_tokens=12, ignore_eos=True))[0]
    greedy = generate(model, tok, [ids], GenerationConfig(max_new_tokens=12, ignore_eos=True))[0]
    assert cs.token_ids == greedy.token_ids


def test_contrastive_search_reduces_repetition(model, tok):
    ids = _prompt(tok)
    greedy = generate(model, tok, [ids], GenerationConfig(max_new_tokens=40, ignore_eos=True))[0].token_ids
    cs = generate(model, tok, [ids], GenerationConfig(strategy="contrastive_search", penalty_alpha=0.6,
                                                      max_new_tokens=40, ignore_eos=True))[0].token_ids
    assert len(set(cs)) > len(set(greedy))


@torch.no_grad()
def test_contrastive_decoding_matches_reference(model, small, tok):
    ids = _prompt(tok)
    alpha = 0.1
    got = generate(model, tok, [ids], GenerationConfig(strategy="contrastive_decoding", cd_alpha=alpha,
                                                       max_new_tokens=10, ignore_eos=True), amateur_model=small)[0]
    seq = list(ids)
    for _ in range(10):  # Li et al. 2022: expert - amateur over the plausible set
        le = model(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)
        la = small(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)
        plausible = le.exp() >= alpha * le.exp().max()
        seq.append(int(torch.where(plausible, le - la, torch.tensor(-float("inf"))).argmax()))
    assert got.token_ids == seq[len(ids):]


def test_speculative_greedy_equals_greedy(model, small, tok):
    for text in ["ROMEO:", "床前明月光", "First Citizen:"]:
        ids = _prompt(tok, text)
        greedy = generate(model, tok, [ids], GenerationConfig(max_new_tokens=30, ignore_eos=True))[0]
        for gamma in (1, 3, 5):
            spec = generate(model, tok, [ids], GenerationConfig(strategy="speculative", temperature=0,
                                                                num_draft_tokens=gamma, max_new_tokens=30,
                                                                ignore_eos=True), draft_model=small)[0]
            assert spec.token_ids == greedy.token_ids
            assert spec.extra["target_forwards"] < 30 or spec.extra["acceptance_rate"] == 0
    # a draft equal to the target is always accepted: ceil(30 / (gamma + 1)) target passes
    spec = generate(model, tok, [ids], GenerationConfig(strategy="speculative", temperature=0, num_draft_tokens=4,
                                                        max_new_tokens=30, ignore_eos=True), draft_model=model)[0]
    assert spec.extra["acceptance_rate"] == 1.0 and spec.extra["target_forwards"] == 6


def _chi2_ok(counts, probs, n):
    # Pearson chi-square with cells of expected count < 5 pooled; 99.9% quantile bound (Wilson-Hilferty)
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = exp > 0
    chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    z = 3.09
    bound = df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
    return chi2, bound


def test_accept_drafts_preserves_target_distribution():
    # Synthetic p (target) and q (draft), 3 draft positions: the first emitted token's distribution
    # must be p[0] whatever q is (Leviathan et al. 2023, Theorem 1).
    g = torch.Generator().manual_seed(0)
    V = 12
    p = torch.softmax(torch.randn(4, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(3, V, generator=g) * 1.5, -1)
    n = 5000
    counts = torch.zeros(V)
    accepted = 0
    for _ in range(n):
        first_draft = int(torch.multinomial(q[0], 1, generator=g))
        drafts = [first_draft, int(torch.multinomial(q[1], 1, generator=g)), int(torch.multinomial(q[2], 1, generator=g))]
        n_acc, extra = accept_drafts(p, q, drafts, g)
        first = drafts[0] if n_acc >= 1 else extra
        counts[first] += 1
        accepted += n_acc >= 1
    chi2, bound = _chi2_ok(counts, p[0], n)
    assert chi2 < bound, (chi2, bound)
    # the expected acceptance rate of the first draft is sum_x min(p, q) (Leviathan et al. 2023, Cor. 3.6)
    assert accepted / n == pytest.approx(float(torch.minimum(p[0], q[0]).sum()), abs=0.03)
    # and the same samples fail against a wrong distribution (the test has power)
    chi2_q, bound_q = _chi2_ok(counts, q[0], n)
    assert chi2_q > bound_q


@torch.no_grad()
def test_speculative_sampling_matches_target_distribution(tok):
    # End to end on real models with a small vocabulary-like spread: temperature 2 flattens the target.
    target = tiny_model(tok.vocab_size, seed=0, init_std=0.15)
    draft = tiny_model(tok.vocab_size, seed=9, d_model=32, n_layers=1, init_std=0.15)
    ids = _prompt(tok)
    cfg = GenerationConfig(strategy="speculative", temperature=1.0, top_k=12, num_draft_tokens=1, max_new_tokens=2,
                           ignore_eos=True)
    logits = target(torch.tensor([ids])).logits[0, -1].float()
    from lmstack.generate import TopK
    probs = TopK(12)(None, logits[None])[0].softmax(-1)
    n = 300
    counts = torch.zeros_like(probs)
    rejected = 0
    for s in range(n):
        g = generate(target, tok, [ids], cfg.replace(seed=s), draft_model=draft)[0]
        counts[g.token_ids[0]] += 1
        rejected += g.extra["accepted"] == 0
    chi2, bound = _chi2_ok(counts, probs, n)
    assert chi2 < bound, (chi2, bound)
    assert rejected > 0  # the residual distribution was exercised


def test_best_of_n_picks_highest_mean_logprob_among_seeded_samples(model, tok):
    ids = _prompt(tok)
    cfg = GenerationConfig(strategy="best_of_n", n=4, seed=10, max_new_tokens=12, ignore_eos=True)
    best = generate(model, tok, [ids], cfg)[0]
    cands = [generate(model, tok, [ids], GenerationConfig(strategy="sample", seed=10 + i, max_new_tokens=12,
                                                          ignore_eos=True, logprobs=True))[0] for i in range(4)]
    assert [c["text"] for c in best.extra["candidates"]] == [c.text for c in cands]
    means = [sum(c.logprobs) / len(c.logprobs) for c in cands]
    assert best.text == cands[max(range(4), key=lambda i: means[i])].text
    assert best.score == pytest.approx(max(means), abs=1e-5)


def test_best_of_n_with_scorer(model, tok):
    cfg = GenerationConfig(strategy="best_of_n", n=5, seed=2, max_new_tokens=16)
    seen = []

    def scorer(prompt, text):  # e.g. a reward model; here: prefer answers with many vowels
        seen.append(prompt)
        return sum(ch in "aeiou" for ch in text)

    best = generate(model, tok, ["ROMEO:"], cfg, scorer=scorer)[0]
    scores = [c["score"] for c in best.extra["candidates"]]
    assert best.score == max(scores) and seen == ["ROMEO:"] * 5 and best.extra["scored_by"] == "scorer"


def test_self_consistency_majority_vote(model, tok):
    cfg = GenerationConfig(strategy="self_consistency", n=7, seed=4, max_new_tokens=6, ignore_eos=True)
    out = generate(model, tok, ["ROMEO:"], cfg, answer_extractor=lambda text: text[:1] or None)[0]
    answers = out.extra["answers"]
    winner = out.extra["answer"]
    assert answers.count(winner) == max(answers.count(a) for a in set(answers) if a is not None)
    assert out.text[:1] == winner and out.score == answers.count(winner) / 7


def test_extract_answer_default():
    from lmstack.generate import extract_answer

    assert extract_answer("3 + 4 = 7, so the answer is 7.") == "7"
    assert extract_answer("答案：北京") == "北京"
    assert extract_answer("we get 12 then 15") == "15"
    assert extract_answer("   ") is None
