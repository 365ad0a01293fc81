"""lmstack.apps.recommend and the world's catalogue: metrics by hand, ALS against `implicit`, vocabulary growth."""

import math
import random

import numpy as np
import pytest
import torch

from lmstack.apps import recommend as R
from lmstack.data.world.catalogue import CatalogueConfig, build_catalogue


def test_recall_and_ndcg_by_hand():
    ranked = [5, 3, 9, 1, 7]
    assert R.recall_at_k(ranked, 9, k=3) == 1.0
    assert R.recall_at_k(ranked, 7, k=3) == 0.0
    assert R.ndcg_at_k(ranked, 5, k=3) == 1.0
    assert R.ndcg_at_k(ranked, 9, k=3) == pytest.approx(1 / math.log2(4))   # rank 3 -> 1/log2(3+1) = 0.5
    assert R.ndcg_at_k(ranked, 3, k=3) == pytest.approx(1 / math.log2(3))
    assert R.ndcg_at_k(ranked, 7, k=3) == 0.0
    # two targets at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3)
    assert R.ndcg_at_k(ranked, [3, 1], k=5) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert R.recall_at_k(ranked, [3, 8], k=5) == 0.5
    with pytest.raises(ValueError):
        R.ndcg_at_k(ranked, [], k=5)


def test_rank_unseen_masks_history_and_breaks_ties_by_id():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    assert R.rank_unseen(scores, [[1], [0]], k=3) == [[0, 2, 3], [1, 2, 3]]
    m = R.evaluate_scores(scores, [[1], [0]], [2, 1], k=1)
    assert m["recall@1"] == 0.5 and m["ndcg@1"] == 0.5 and m["n_users"] == 2


def test_popularity_and_item_knn_by_hand():
    train = [[0, 1], [0, 1], [0, 2]]
    assert R.popularity_scores(train, 4, 1).tolist() == [[3, 2, 1, 0]]
    # item columns: 0 -> users {0,1,2}, 1 -> {0,1}, 2 -> {2}: cos(0,1) = 2/sqrt(6), cos(0,2) = 1/sqrt(3), cos(1,2) = 0
    s = R.item_knn_scores(train, 4, [[1]])
    assert s[0].tolist() == pytest.approx([2 / math.sqrt(6), 0.0, 0.0, 0.0])


def _random_counts(n_users=30, n_items=20, seed=0):
    rng = np.random.default_rng(seed)
    counts = (rng.random((n_users, n_items)) < 0.2) * rng.integers(1, 4, (n_users, n_items))
    counts[:, 0] += 1   # nobody is empty
    return counts.astype(np.float64)


def test_als_user_solve_equals_implicit_least_squares():
    implicit = pytest.importorskip("implicit", reason="the `implicit` package (dev extra) is the ALS oracle")
    from scipy.sparse import csr_matrix

    counts = _random_counts()
    rng = np.random.default_rng(1)
    items = rng.normal(0, 0.3, (counts.shape[1], 6))
    ours = R.ImplicitALS(factors=6, regularization=0.5, alpha=4.0)
    mine = ours.solve(counts, items)
    # implicit takes the confidence itself as the matrix value (c = 1 + alpha r in Hu et al.), with alpha=1
    oracle = implicit.cpu.als.AlternatingLeastSquares(factors=6, regularization=0.5, alpha=1.0, use_cg=False,
                                                      dtype=np.float64, random_state=0)
    oracle.item_factors = items.copy()
    conf = csr_matrix(np.where(counts > 0, 1.0 + 4.0 * counts, 0.0))
    theirs = oracle.recalculate_user(np.arange(counts.shape[0]), conf)
    assert np.abs(mine - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())
    # a wrong alpha or regularization is caught
    assert np.abs(R.ImplicitALS(6, 0.5, 3.0).solve(counts, items) - theirs).max() > 1e-2


def test_als_objective_decreases_and_beats_popularity_on_structured_data():
    cat = build_catalogue(CatalogueConfig(n_items=40, n_users=150, min_history=6, max_history=10), seed=3)
    train, targets = cat.split()
    counts = R.interaction_matrix(train, 40)
    als = R.ImplicitALS(factors=8, regularization=10.0, alpha=1.0, iterations=6, seed=0).fit(counts)
    assert all(b <= a + 1e-6 for a, b in zip(als.losses, als.losses[1:]))
    # per-user solve at the fitted item factors reproduces the fitted user factors (one more half-step)
    again = als.solve(counts, als.item_factors)
    assert np.abs(again - als.user_factors).max() < 0.05


def test_catalogue_is_deterministic_and_histories_follow_hobbies():
    cfg = CatalogueConfig(n_items=60, n_users=80)
    a, b = build_catalogue(cfg, 5), build_catalogue(cfg, 5)
    assert [u.history for u in a.users] == [u.history for u in b.users]
    assert [u.history for u in a.users] != [u.history for u in build_catalogue(cfg, 6).users]
    from lmstack.data.world.catalogue import HOBBY_GENRES
    in_hobby = np.mean([a.items[i].genre in HOBBY_GENRES[u.hobby] for u in a.users for i in u.history])
    share = np.mean([sum(it.genre in g for it in a.items) / 60 for g in HOBBY_GENRES.values()])
    assert in_hobby > 2 * share              # far more hobby-genre items than their share of the catalogue
    for u in a.users:
        assert len(set(u.history)) == len(u.history) and cfg.min_history <= len(u.history) <= cfg.max_history
    item = a.items[0]
    assert item.title["en"] in item.description("en") and item.title["zh"] in item.description("zh")
    docs = a.documents(random.Random(0))
    assert not any(str(u.hobby) in d for u in a.users for d in docs[:5])
    with pytest.raises(ValueError, match="n_tastes"):
        CatalogueConfig(n_tastes=0)


def _tiny_model(vocab=40, tie=True):
    from lmstack.model import ModelConfig, Transformer

    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=vocab, d_model=16, n_layers=1, n_heads=2,
                                          n_kv_heads=2, max_seq_len=32, tie_embeddings=tie))


@pytest.mark.parametrize("tie", [True, False])
def test_extend_vocabulary_keeps_old_logits_and_adds_rows(tie):
    from lmstack.model.resize import extend_vocabulary

    model = _tiny_model(tie=tie).eval()
    x = torch.randint(0, 40, (2, 7))
    before = model(x).logits
    rows = torch.randn(3, 16)
    ids = extend_vocabulary(model, rows)
    assert list(ids) == [40, 41, 42] and model.config.vocab_size == 43
    after = model(x).logits
    assert after.shape[-1] == 43 and torch.allclose(after[..., :40], before, atol=1e-6)
    assert torch.equal(model.embed.weight[40:], rows)
    assert (model.lm_head.weight is model.embed.weight) == tie
    hidden = model(x, return_hidden=True).hidden
    assert torch.allclose(after[..., 40:], hidden @ rows.T, atol=1e-5)
    model(torch.tensor([[1, 41, 42]])).logits.sum().backward()  # new ids embed and train
    assert model.embed.weight.grad[41].abs().sum() > 0
    with pytest.raises(ValueError, match="d_model"):
        extend_vocabulary(model, torch.zeros(2, 5))


class _CharTokenizer:
    """Letters a..z and 26 for anything else, bos=27, eos=28: enough to drive the LM helpers."""
    bos_id, eos_id, vocab_size = 27, 28, 40

    def encode(self, text):
        return [ord(c) - 97 if "a" <= c <= "z" else 26 for c in text.lower()]


def test_item_token_init_batches_and_scores():
    model, tok = _tiny_model(), _CharTokenizer()
    descriptions = ["abc", "xyz", "abd"]
    first = R.add_item_tokens(model, tok, descriptions, "description")
    assert first == 40
    assert torch.allclose(model.embed.weight[41], model.embed.weight[torch.tensor(tok.encode("xyz"))].mean(0))
    x, y = next(R.item_id_batches(tok, first, [[0, 1, 2], [2, 1]], max_history=5, batch_size=4,
                                  rng=random.Random(0)))
    n_prefix = 1 + len(tok.encode("Liked:"))
    for row in range(4):
        items = y[row][y[row] != -100].tolist()
        assert y[row, : n_prefix - 1].eq(-100).all() and len(items) >= 2
        # inputs after the prefix are the item tokens of all but the last target
        assert x[row, n_prefix:n_prefix + len(items) - 1].tolist() == [first + i for i in items[:-1]]
    loss = R.item_loss(first, 3)(model, x, y)
    assert loss.item() > 0 and loss.requires_grad
    s = R.item_id_scores(model, tok, first, 3, [[0], [1, 2]], max_history=5)
    assert s.shape == (2, 3)
    seq = R.item_sequence(tok, first, [1, 2])
    expected = model(torch.tensor([seq]), return_hidden=True).hidden[0, -1] @ model.embed.weight[40:43].T
    assert np.allclose(s[1], expected.detach().numpy(), atol=1e-5)


def test_score_continuations_equals_sum_of_token_log_probs():
    model = _tiny_model().eval()
    prefix, conts = [1, 2, 3], [[4, 5], [6], [7, 8, 9]]
    got = R.score_continuations(model, prefix, conts, batch_size=2, pad_id=0)
    for c, value in zip(conts, got):
        ids = torch.tensor([prefix + c])
        logp = torch.log_softmax(model(ids).logits[0], -1)
        ref = sum(logp[len(prefix) - 1 + j, t] for j, t in enumerate(c))
        assert value.item() == pytest.approx(ref.item(), abs=1e-5)
