"""Training speed options: CPU-clock budgets, warm-up schedules (sequence length, batch size, Muon
momentum) and document-masked packed training."""

import pytest
import torch

from lmstack.model import ModelConfig, Transformer
from lmstack.train.budget import BudgetClock, cpu_budget, steps_for_budget
from lmstack.train.optim import OptimConfig, build_optimizer, muon_momentum, set_muon_momentum
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer
from test_train_helpers import periodic_tokens


class FakeTimers:
    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0


def test_cpu_clock_charges_only_the_process_cpu_time():
    t = FakeTimers()
    clock = BudgetClock("cpu", budget=10.0, wall=lambda: t.wall, cpu=lambda: t.cpu)
    with clock.running():
        t.wall += 8.0   # another process held the core: 8 s passed, this process ran for 3
        t.cpu += 3.0
    t.wall += 100.0     # outside a span (evaluation): not charged to either clock
    t.cpu += 50.0
    assert (clock.cpu_seconds, clock.wall_seconds, clock.elapsed) == (3.0, 8.0, 3.0)
    assert clock.remaining == 7.0 and not clock.spent
    with clock.running():
        t.wall += 1.0
        t.cpu += 7.5
    assert clock.spent and clock.remaining == 0.0
    assert clock.summary() == {"clock": "cpu", "budget": 10.0, "cpu_seconds": 10.5, "wall_seconds": 9.0}


def test_wall_clock_and_budget_rules():
    t = FakeTimers()
    clock = BudgetClock("wall", budget=5.0, wall=lambda: t.wall, cpu=lambda: t.cpu)
    with clock.running():
        t.wall += 6.0
        t.cpu += 1.0
    assert clock.elapsed == 6.0 and clock.spent
    assert cpu_budget(116.0, 2) == 232.0  # N busy threads spend N CPU-seconds per second
    assert steps_for_budget(10, 5.0, 20.0) == 40
    assert steps_for_budget(10, 5.0, 0.0) == 0
    with pytest.raises(ValueError, match="clock"):
        BudgetClock("gpu")
    with pytest.raises(ValueError, match="threads"):
        cpu_budget(1.0, 0)


def test_real_cpu_clock_advances_with_work():
    clock = BudgetClock("cpu")
    with clock.running():
        x = torch.randn(200, 200)
        for _ in range(20):
            x = (x @ x).tanh()
    assert clock.cpu_seconds > 0 and clock.wall_seconds > 0


def test_warm_up_ramps():
    cfg = TrainConfig(batch_size=16, seq_len=128, seq_len_warmup_steps=10, seq_len_start=32,
                      batch_size_warmup_steps=4, batch_size_start=4)
    got = [cfg.warmed_up(s) for s in (0, 2, 5, 9, 10, 50)]
    assert got == [(4, 32), (10, 32), (16, 64), (16, 96), (16, 128), (16, 128)]
    assert TrainConfig().warmed_up(0) == (16, 256)  # off by default
    with pytest.raises(ValueError, match="seq_len_start"):
        TrainConfig(seq_len=64, seq_len_warmup_steps=5, seq_len_start=128).validate()


def tiny_transformer():
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                          n_kv_heads=2, max_seq_len=32))


def test_muon_momentum_warm_up():
    cfg = OptimConfig(name="muon", muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup_steps=10)
    assert muon_momentum(0, cfg) == pytest.approx(0.85)
    assert muon_momentum(5, cfg) == pytest.approx(0.90)
    assert muon_momentum(10, cfg) == 0.95 and muon_momentum(0, OptimConfig(name="muon")) == 0.95
    opt = build_optimizer(tiny_transformer(), cfg)
    set_muon_momentum(opt, 5, cfg)
    assert {g["kind"]: g["momentum"] for g in opt.param_groups}["muon"] == pytest.approx(0.90)


def small_cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, seq_len=32, loader="random", log_every=2, eval_every=0, ckpt_every=0,
                peak_flops=1e9, dtype="fp32", optim=OptimConfig(lr=1e-2),
                schedule=ScheduleConfig(kind="constant", warmup_steps=0))
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_warm_ups_train_fewer_tokens_early():
    cfg = small_cfg(seq_len_warmup_steps=4, seq_len_start=8, batch_size_warmup_steps=4, batch_size_start=1,
                    optim=OptimConfig(name="muon", lr=1e-2, muon_momentum_warmup_steps=3))
    tr = Trainer(tiny_transformer(), cfg, train_tokens=periodic_tokens(2000, vocab=64), progress=False)
    tr.train_step()
    assert tr.last_update_tokens == 1 * 8
    summary = tr.train()
    full = 4 * 32
    # train_step alone does not advance the step counter, so train() runs updates 0..5
    assert summary.tokens == sum(r * c for r, c in (cfg.warmed_up(s) for s in range(6)))
    assert tr.last_update_tokens == full


def test_doc_masked_training_step_equals_manual_doc_ids():
    tokens = periodic_tokens(2000, vocab=64)
    tokens[::7] = 0  # BOS every 7 tokens: documents packed back to back
    cfg = small_cfg(doc_mask=True, steps=1)
    model = tiny_transformer()
    tr = Trainer(model, cfg, train_tokens=tokens, bos_id=0, progress=False)
    batch = tr.loader.batch_at(0)
    loss, _, verdict = tr.train_step()
    assert verdict == "ok"
    # the step's loss is the doc-masked loss of that batch under the initial weights, not the plain one
    from lmstack.model import document_ids
    ref = tiny_transformer().requires_grad_(False)
    masked = ref(batch.inputs, targets=batch.targets, doc_ids=document_ids(batch.inputs, 0)).loss
    plain = ref(batch.inputs, targets=batch.targets).loss
    assert loss == pytest.approx(float(masked), rel=1e-5)
    assert abs(float(plain) - float(masked)) > 1e-4
    # evaluation packs windows too, so it uses the same document mask
    tr.val_tokens = tokens[:500]
    masked_eval = tr.evaluate()["val_loss"]
    tr.cfg.doc_mask = False
    assert abs(tr.evaluate()["val_loss"] - masked_eval) > 1e-4
    cfg.doc_mask = True
    with pytest.raises(ValueError, match="doc_mask=true needs the tokenizer's bos_id"):
        Trainer(tiny_transformer(), cfg, train_tokens=tokens, progress=False)


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    from lmstack.train.optim import newton_schulz_orthogonalize
    g = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(0))
    batched = newton_schulz_orthogonalize(g)
    for i in range(3):
        torch.testing.assert_close(batched[i], newton_schulz_orthogonalize(g[i]), rtol=1e-5, atol=1e-6)
    tall = newton_schulz_orthogonalize(g.mT)  # tall matrices go through the transpose
    torch.testing.assert_close(tall, batched.mT, rtol=1e-5, atol=1e-6)


def test_muon_step_equals_per_matrix_reference():
    """The grouped Muon step gives the textbook per-matrix update (Nesterov momentum, NS, aspect scale)."""
    from lmstack.train.optim import MuonWithAdamW, newton_schulz_orthogonalize
    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((8, 12), (8, 12), (16, 8))]
    start = [p.detach().clone() for p in params]
    opt = MuonWithAdamW([{"params": params, "lr": 0.1, "weight_decay": 0.01, "kind": "muon"}], momentum=0.9)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    opt.step()
    for p, p0, gr in zip(params, start, grads):
        update = gr + 0.9 * gr  # buffer = grad after one step; Nesterov adds mu * buffer
        expected = p0 * (1 - 0.1 * 0.01) - 0.1 * max(1.0, p.shape[0] / p.shape[1]) ** 0.5 * \
            newton_schulz_orthogonalize(update)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)



def test_stage_thread_count(monkeypatch):
    from lmstack import machine
    from lmstack.train import stage
    monkeypatch.setattr(machine, "probe_threads", lambda: 3)
    assert stage._thread_count(-1) == 3 and stage._thread_count(2) == 2 and stage._thread_count(0) >= 1
    with pytest.raises(ValueError, match="threads=-2"):
        stage._thread_count(-2)
