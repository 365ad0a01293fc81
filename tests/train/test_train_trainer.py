"""Trainer: overfitting, bit-exact resume, anomaly guard (skip + rollback), metrics."""

import json
import math

import pytest
import torch

from lmstack import machine
from lmstack.train.anomaly import AnomalyConfig, AnomalyGuard
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer
from test_train_helpers import TinyLM, periodic_tokens


def small_cfg(**kw) -> TrainConfig:
    base = dict(steps=40, batch_size=4, seq_len=16, loader="random", log_every=5, eval_every=0,
                ckpt_every=0, eval_batches=2, peak_flops=1e9, dtype="fp32",  # exact comparisons, on any CPU
                optim=OptimConfig(lr=1e-2), schedule=ScheduleConfig(kind="cosine", warmup_steps=5))
    base.update(kw)
    return TrainConfig(**base)


def test_overfits_one_batch_with_real_transformer():
    from lmstack.model import ModelConfig, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                           n_kv_heads=2, max_seq_len=32))
    toks = periodic_tokens(33, vocab=64)  # exactly one window -> every batch is the same batch
    cfg = small_cfg(steps=50, batch_size=2, seq_len=32, optim=OptimConfig(lr=2e-2, weight_decay=0.0),
                    schedule=ScheduleConfig(kind="constant", warmup_steps=0), grad_clip=1.0)
    summary = Trainer(model, cfg, train_tokens=toks, progress=False).train()
    assert summary.final_loss < 0.05, summary.final_loss


def run_training(tmp_path, stop_at=None, dropout=0.1, optim="adamw", accum=1):
    torch.manual_seed(0)
    model = TinyLM(dropout=dropout)
    records = []
    cfg = small_cfg(steps=30, ckpt_every=10, grad_accum=accum, optim=OptimConfig(name=optim, lr=1e-2))
    tr = Trainer(model, cfg, train_tokens=periodic_tokens(3000), val_tokens=periodic_tokens(500, seed=1),
                 ckpt_dir=tmp_path, seed=5, progress=False, metrics_sink=records.append)
    summary = tr.train(stop_at=stop_at)
    return model, summary, records


@pytest.mark.parametrize("optim,accum", [("adamw", 1), ("muon", 2)])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, optim, accum):
    full, _, _ = run_training(tmp_path / "full", optim=optim, accum=accum)
    # Interrupt after update 17: the last checkpoint is step 10, so 7 updates are redone.
    _, partial, _ = run_training(tmp_path / "resumed", stop_at=17, optim=optim, accum=accum)
    assert partial.step == 17
    torch.manual_seed(999)  # a different ambient RNG must not matter: the checkpoint restores it
    resumed, summary, _ = run_training(tmp_path / "resumed", optim=optim, accum=accum)
    assert summary.resumed_from == 10 and summary.step == 30
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class PoisonedLM(TinyLM):
    """Returns a NaN (or a huge) loss on chosen forward calls, to exercise the guard."""

    def __init__(self, bad_calls: dict[int, str]):
        super().__init__()
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, input_ids, *, targets=None, **kw):
        out = super().forward(input_ids, targets=targets)
        if self.training and targets is not None:
            kind = self.bad_calls.get(self.calls)
            self.calls += 1
            if kind == "nan":
                out.loss = out.loss * float("nan")
            elif kind == "spike":
                out.loss = out.loss * 50.0
        return out


def test_guard_skips_nan_and_spike_steps_without_touching_weights():
    torch.manual_seed(0)
    model = PoisonedLM({25: "nan", 30: "spike"})
    records = []
    tr = Trainer(model, small_cfg(steps=40, anomaly=AnomalyConfig(min_history=10)), train_tokens=periodic_tokens(3000),
                 progress=False, metrics_sink=records.append)
    before = {}

    orig_step = tr.train_step

    def spy():
        if tr.step in (25, 30):
            before[tr.step] = [p.detach().clone() for p in model.parameters()]
        loss, gn, verdict = orig_step()
        if tr.step in before:
            assert all(torch.equal(a, b) for a, b in zip(before[tr.step], model.parameters()))
        return loss, gn, verdict

    tr.train_step = spy
    summary = tr.train()
    kinds = [(e["event"], e["step"]) for e in summary.events]
    assert kinds == [("anomaly_nan", 25), ("anomaly_spike", 30)]
    assert summary.skipped_steps == 2 and summary.rollbacks == 0
    assert [r["event"] for r in records if "event" in r] == ["anomaly_nan", "anomaly_spike"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_anomalies_roll_back_to_last_checkpoint_with_lower_lr(tmp_path):
    torch.manual_seed(0)
    model = PoisonedLM({22: "nan", 23: "nan", 24: "nan"})
    cfg = small_cfg(steps=40, ckpt_every=10, anomaly=AnomalyConfig(max_consecutive=3, lr_backoff=0.5))
    tr = Trainer(model, cfg, train_tokens=periodic_tokens(3000), ckpt_dir=tmp_path, progress=False)
    summary = tr.train()
    rb = [e for e in summary.events if e["event"] == "rollback"]
    assert len(rb) == 1 and rb[0]["from_step"] == 24 and rb[0]["to_step"] == 20 and rb[0]["lr_scale"] == 0.5
    assert summary.step == 40 and tr.lr_scale == 0.5
    state = json.loads((tmp_path / "step_000040" / "trainer_state.json").read_text())
    assert state["rollbacks"] == 1 and state["lr_scale"] == 0.5
    assert state["loader"]["data_step"] == 40 + 2 + 3  # updates 20-23 replayed on new batches after the rollback: new data


def test_too_many_rollbacks_raise_a_clear_error():
    model = PoisonedLM({i: "nan" for i in range(100)})
    cfg = small_cfg(steps=40, anomaly=AnomalyConfig(max_consecutive=2, max_rollbacks=1))
    with pytest.raises(RuntimeError, match="training diverged"):
        Trainer(model, cfg, train_tokens=periodic_tokens(3000), progress=False).train()


def test_guard_statistics():
    g = AnomalyGuard(AnomalyConfig(spike_std=3, window=10, min_history=5))
    assert g.check(float("inf")) == "nan" and g.check(1.0, grad_norm=float("nan")) == "nan"
    for v in [2.0, 2.1, 1.9, 2.0, 2.05]:
        assert g.check(v) == "ok"
        g.accept(v)
    assert g.check(2.2) == "ok" and g.check(10.0) == "spike" and g.check(0.1) == "ok"


def test_metrics_eval_and_bits_per_byte(tmp_path):
    torch.manual_seed(0)
    records = []
    tr = Trainer(TinyLM(), small_cfg(steps=20, eval_every=10), train_tokens=periodic_tokens(3000),
                 val_tokens=periodic_tokens(800, seed=2), progress=False, metrics_sink=records.append,
                 bytes_per_token=2.0)
    s = tr.train()
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    assert [r["step"] for r in evals] == [10, 20]
    assert all(r["stage"] == "pretrain" and r["tok_per_s"] > 0 and r["lr"] > 0 for r in steps)
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2) / 2.0)
    assert s.val_loss == evals[-1]["val_loss"] and s.val_loss < math.log(32)


def test_bf16_autocast_runs_on_cpu():
    torch.manual_seed(0)
    s = Trainer(TinyLM(), small_cfg(steps=10, dtype="bf16"), train_tokens=periodic_tokens(3000), progress=False).train()
    assert math.isfinite(s.final_loss)


@pytest.mark.slow
def test_torch_compile_trains_like_eager():
    """`compile = true` (inductor, about a minute on 2 cores): the same losses as eager, to float rounding."""
    from lmstack.model import ModelConfig, Transformer

    def losses(compile_: bool) -> list[float]:
        torch.manual_seed(0)
        model = Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                               n_kv_heads=2, max_seq_len=16))
        records = []
        cfg = small_cfg(steps=8, log_every=1, compile=compile_, optim=OptimConfig(lr=1e-2, weight_decay=0.0))
        Trainer(model, cfg, train_tokens=periodic_tokens(3000, vocab=64), seed=3, progress=False,
                metrics_sink=records.append).train()
        return [r["loss"] for r in records if "loss" in r]

    eager, compiled = losses(False), losses(True)
    assert len(eager) == 8
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)


def _train(ckpt_dir, stop_at=None, log=None):
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    cfg = TrainConfig(steps=30, batch_size=4, seq_len=16, loader="random", log_every=5, eval_every=0, ckpt_every=10,
                      keep_checkpoints=3, eval_batches=2, peak_flops=1e9, dtype="fp32",
                      optim=OptimConfig(lr=1e-2), schedule=ScheduleConfig(kind="cosine", warmup_steps=5))
    trainer = Trainer(model, cfg, train_tokens=periodic_tokens(3000), ckpt_dir=ckpt_dir, seed=5, progress=False,
                      log=log or (lambda m: None))
    return model, trainer.train(stop_at=stop_at)


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path):
    full, _ = _train(tmp_path / "full")
    _train(tmp_path / "cut", stop_at=25)  # checkpoints at steps 10 and 20
    # A flipped byte in the middle of the newest weights: safetensors still parses it, the checksum does not.
    newest = tmp_path / "cut" / "step_000020" / "model.safetensors"
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    newest.write_bytes(bytes(blob))
    messages = []
    resumed, summary = _train(tmp_path / "cut", log=messages.append)
    assert summary.resumed_from == 10 and summary.step == 30
    assert any("step_000020" in m and "sha256 does not match" in m and "falling back" in m for m in messages)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name  # resuming from step 10 still ends bit-identical


def test_trainer_resolves_auto_and_reports_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "_gemm_flops", lambda dtype, device, n, budget: 50e9 if dtype == torch.float32 else 1e9)
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=8, loader="random", eval_every=0, ckpt_every=0, log_every=1)
    trainer = Trainer(TinyLM(dropout=0.0), cfg, train_tokens=periodic_tokens(500), progress=False,
                      metrics_sink=lambda r: None)
    summary = trainer.train()
    assert summary.dtype == "fp32" and summary.peak_flops == 50e9


def test_a_failing_compile_falls_back_to_eager_and_says_so(monkeypatch):
    """A broken compiler toolchain must not kill a run: the first compiled call fails, training goes on eagerly."""
    def broken_compile(model, **_):
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: C++ compile error\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    logs = []
    torch.manual_seed(0)
    eager = Trainer(TinyLM(), small_cfg(steps=5), train_tokens=periodic_tokens(3000), seed=1, progress=False).train()
    torch.manual_seed(0)
    trainer = Trainer(TinyLM(), small_cfg(steps=5, compile=True), train_tokens=periodic_tokens(3000), seed=1,
                      progress=False, log=logs.append)
    s = trainer.train()
    assert not s.compiled and "C++ compile error" in s.compile_note and "more detail" not in s.compile_note
    assert any("continues without compile" in m for m in logs)
    assert s.final_loss == pytest.approx(eager.final_loss)


def test_compile_is_skipped_with_a_reason_when_no_compiler_exists(monkeypatch):
    import lmstack.machine as machine

    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr("shutil.which", lambda _: None)
    reason = machine.compile_unavailable("cpu")
    assert "C++ compiler" in reason
    logs = []
    s = Trainer(TinyLM(), small_cfg(steps=2, compile=True), train_tokens=periodic_tokens(3000), progress=False,
                log=logs.append).train()
    assert not s.compiled and "C++ compiler" in s.compile_note and any("skipped" in m for m in logs)
