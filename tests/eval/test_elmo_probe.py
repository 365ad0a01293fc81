"""ELMo-style bidirectional LSTM LM and the linear relation probe."""

import pytest
import torch

from lmstack.eval.probe import linear_probe, relation_sentences
from lmstack.model import ModelConfig, build_model
from lmstack.model.families import BiLSTMLM


def _bilstm(**kw):
    return build_model(ModelConfig(family="bilstm", **{**dict(vocab_size=40, d_model=32, n_layers=2, n_heads=1,
                                                               n_kv_heads=0, max_seq_len=64), **kw}))


def test_bilstm_directions_see_the_right_sides():
    torch.manual_seed(0)
    model = _bilstm().eval()
    assert isinstance(model, BiLSTMLM)
    a = torch.randint(0, 40, (1, 9))
    b = a.clone()
    b[0, 4] = (a[0, 4] + 1) % 40
    ca, cb = model.contextual_embeddings(a), model.contextual_embeddings(b)
    changed_fwd = (ca[0, :, :32] - cb[0, :, :32]).abs().amax(-1) > 0
    changed_bwd = (ca[0, :, 32:] - cb[0, :, 32:]).abs().amax(-1) > 0
    assert changed_fwd.tolist() == [False] * 4 + [True] * 5  # forward: tokens up to t
    assert changed_bwd.tolist() == [True] * 5 + [False] * 4  # backward: tokens from t on


def test_bilstm_right_padding_does_not_change_features():
    torch.manual_seed(0)
    model = _bilstm().eval()
    a = torch.randint(1, 40, (1, 6))
    padded = torch.cat([a, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model.contextual_embeddings(padded, mask)[:, :6], model.contextual_embeddings(a))


def test_bilstm_overfits_both_directions_and_generates_forward():
    torch.manual_seed(0)
    model = _bilstm()
    ids = torch.randint(0, 40, (4, 13))
    x, y = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(200):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3  # the mean of both directions' losses
    model.eval()
    state = model.new_kv_cache(4, 12)
    torch.testing.assert_close(model(x, kv_cache=state).logits, model(x).logits)


def test_linear_probe_separates_separable_features_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    centers = torch.randn(3, 8, generator=gen) * 3
    x = centers[y] + torch.randn(300, 8, generator=gen)
    assert linear_probe(x[:200], y[:200], x[200:], y[200:]) > 0.95
    noise = torch.randn(300, 8, generator=gen)
    assert linear_probe(noise[:200], y[:200], noise[200:], y[200:]) < 0.55


def test_relation_sentences_hold_out_whole_templates():
    from lmstack.data.world import WorldConfig, build_world

    world = build_world(WorldConfig(), 0)
    train_s, train_y, test_s, test_y, names = relation_sentences(world, heldout_templates=2)
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(len(names)))
    assert not set(train_s) & set(test_s)
    with pytest.raises(ValueError, match="cannot hold out"):
        relation_sentences(world, heldout_templates=50)


def test_elmo_relation_probe_reports_each_feature_kind():
    from lmstack.data.world import WorldConfig, build_world
    from lmstack.eval.probe import elmo_relation_probe
    from test_generate_common import small_tokenizer

    tok = small_tokenizer()
    torch.manual_seed(0)
    model = _bilstm(vocab_size=tok.vocab_size, d_model=16, n_layers=1)
    res = elmo_relation_probe(model, tok, build_world(WorldConfig(), 0))
    assert res["n_train"] > res["n_test"] > 0 and len(res["relations"]) == 6
    for kind in ("static", "contextual", "elmo"):
        assert res["chance"] - 0.1 < res[kind] <= 1.0, (kind, res)
