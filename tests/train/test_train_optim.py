"""Schedules and optimizers."""

import math

import pytest
import torch

from lmstack.train.optim import MuonWithAdamW, OptimConfig, build_optimizer, newton_schulz_orthogonalize, param_groups
from lmstack.train.schedule import lr_lambda
from test_train_helpers import TinyLM


def test_cosine_warmup_shape():
    f = [lr_lambda(s, total_steps=110, kind="cosine", warmup_steps=10, min_lr_ratio=0.1) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))           # warmup rises
    assert all(a >= b for a, b in zip(f[10:], f[11:]))           # then never rises
    assert f[-1] == pytest.approx(0.1)                            # ends at min_lr_ratio
    mid = 10 + (110 - 10 - 1) / 2
    assert lr_lambda(int(mid), total_steps=110, kind="cosine", warmup_steps=10, min_lr_ratio=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 99)))


def test_wsd_is_flat_then_linear_decay():
    f = [lr_lambda(s, total_steps=100, kind="wsd", warmup_steps=5, min_lr_ratio=0.0, decay_frac=0.2) for s in range(100)]
    assert all(v == 1.0 for v in f[5:80])
    decay = f[80:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(0.0)
    diffs = [a - b for a, b in zip(decay, decay[1:])]
    assert max(diffs) - min(diffs) < 1e-9                           # linear


def test_linear_and_constant_and_errors():
    assert lr_lambda(0, total_steps=11, kind="linear", min_lr_ratio=0.0) == 1.0
    assert lr_lambda(5, total_steps=11, kind="linear", min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_lambda(10, total_steps=11, kind="linear", min_lr_ratio=0.0) == pytest.approx(0.0)
    assert lr_lambda(7, total_steps=11, kind="constant") == 1.0
    with pytest.raises(ValueError, match="unknown LR schedule 'cosin'"):
        lr_lambda(0, total_steps=10, kind="cosin")


def test_decay_groups_exclude_vectors_and_tied_weights_once():
    model = TinyLM()
    model.lm_head.weight = model.embed.weight  # tie
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    by_name = {g["name"]: g for g in groups}
    decay_ids = {id(p) for p in by_name["decay"]["params"]}
    nodecay_ids = {id(p) for p in by_name["no_decay"]["params"]}
    assert id(model.embed.weight) in decay_ids and id(model.blocks[0][0].weight) in decay_ids
    assert id(model.blocks[0][0].bias) in nodecay_ids and id(model.norm.weight) in nodecay_ids
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len({id(p) for p in model.parameters()})
    assert by_name["no_decay"]["weight_decay"] == 0.0


def test_adamw_matches_torch_reference_update():
    torch.manual_seed(0)
    a, b = TinyLM(), TinyLM()
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(a, OptimConfig(lr=1e-2, weight_decay=0.1))
    # Oracle: plain torch AdamW with hand-built groups.
    decay = [p for p in b.parameters() if p.ndim >= 2]
    nodecay = [p for p in b.parameters() if p.ndim < 2]
    opt_b = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 32, (4, 8))
    for m, o in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            m(x, targets=x).loss.backward()
            o.step()
            o.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_hybrid_optimizer_adamw_path_matches_torch_adamw():
    torch.manual_seed(1)
    p1 = torch.nn.Parameter(torch.randn(5, 3))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1 = MuonWithAdamW([{"params": [p1], "lr": 1e-2, "weight_decay": 0.1, "kind": "adamw"}])
    o2 = torch.optim.AdamW([p2], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(4):
        g = torch.randn(5, 3)
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(p1, p2)


def test_newton_schulz_gives_near_orthogonal_matrix():
    torch.manual_seed(0)
    g = torch.randn(64, 32)
    o = newton_schulz_orthogonalize(g, steps=5)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.3  # Jordan's quintic targets ~[0.7, 1.2], not exact 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cos > 0.95


def test_muon_groups_and_training_reduces_loss():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2, muon_lr=0.02))
    kinds = {g["name"]: g for g in opt.param_groups}
    muon_ids = {id(p) for p in kinds["muon"]["params"]}
    assert muon_ids == {id(model.blocks[0][0].weight)}  # not the embedding, not the head
    x = torch.randint(0, 32, (8, 16))
    first = None
    for _ in range(30):
        loss = model(x, targets=x).loss
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.5 * first


def test_unknown_optimizer_message():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(TinyLM(), OptimConfig(name="sgd"))
