"""A run that can be trusted on any machine: verified artifacts, damaged checkpoints named in one
line, resume from the last good checkpoint, the dtype chosen by measurement, one FLOP count."""

import json

import pytest
import torch

import fake_stages
from lmstack import machine
from lmstack.generate.cli import chat_main, rate_summary
from lmstack.model import ModelConfig, Transformer, flops_per_token, matmul_params, save_pretrained
from lmstack.model.io import CheckpointError, load_pretrained
from lmstack import pipeline
from lmstack.pipeline import Recipe, run_pipeline, summary_table
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer
from test_generate_cli import run_dir  # noqa: F401  (fixture: a run with a tokenizer and two checkpoints)
from test_train_helpers import TinyLM, periodic_tokens


def _truncate(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


# ------------------------------------------------------------------------- damaged checkpoints
def test_truncated_checkpoint_is_one_clear_line(tmp_path, capsys):
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=64, d_model=32, n_layers=1, n_heads=2,
                                           n_kv_heads=1, max_seq_len=16))
    save_pretrained(model, tmp_path)
    _truncate(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file, truncated or corrupt"):
        load_pretrained(tmp_path)


def test_chat_on_a_truncated_checkpoint_prints_one_line(run_dir, tmp_path, capsys):  # noqa: F811
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    _truncate(copy / "checkpoints" / "sft" / "model.safetensors")
    assert chat_main([str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sft/model.safetensors: unreadable" in err[0] and "Traceback" not in err[0]


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


# ----------------------------------------------------------------------------- verified stages
def test_done_stage_whose_artifact_changed_is_rerun(tmp_path, capsys, monkeypatch):
    stages = dict(pipeline.STAGES)
    fake_stages.register(stages)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    recipe = Recipe.load(None, [], raw={"run": {"stages": ["first"]}})
    run = run_pipeline(recipe, tmp_path / "run")  # the fake "first" stage writes first/out.json
    checks = run.manifest["stages"]["first"]["checks"]
    assert checks["out"]["bytes"] > 0 and len(checks["out"]["sha256"]) == 64
    assert "| first | done |" in summary_table(run)

    capsys.readouterr()
    run_pipeline(recipe, tmp_path / "run")
    assert "already done, skipping" in capsys.readouterr().err
    artifact = tmp_path / "run" / "first" / "out.json"
    artifact.write_text(artifact.read_text() + "tampered")
    run = run_pipeline(recipe, tmp_path / "run")
    err = capsys.readouterr().err
    assert "artifacts no longer match: first/out.json changed" in err and "sha256 differs" in err
    assert run.manifest["stages"]["first"]["attempts"] == 2
    assert run.verify_stage("first") == []
    artifact.unlink()
    assert run.verify_stage("first") == ["first/out.json is missing"]


# ------------------------------------------------------------------------------- machine probe
def test_probe_picks_fp32_when_bf16_is_slower(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    rates = {torch.float32: 100e9, torch.bfloat16: 1.3e9}  # an AVX2-only CPU
    monkeypatch.setattr(machine, "_gemm_flops", lambda dtype, device, n, budget: rates[dtype])
    dtype, profile = machine.resolve_dtype("auto")
    assert dtype == "fp32" and profile.bf16_flops == 1.3e9
    assert json.loads((tmp_path / "machine.json").read_text())[profile.key]["best_dtype"] == "fp32"
    # cached per machine: a second call does not measure again
    monkeypatch.setattr(machine, "_gemm_flops", lambda *a: pytest.fail("measured twice"))
    assert machine.probe().best_dtype == "fp32"
    assert machine.resolve_dtype("bf16") == ("bf16", None)  # an explicit choice is kept


def test_probe_picks_bf16_only_when_clearly_faster(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    for bf16, expected in ((400e9, "bf16"), (110e9, "fp32")):  # 4x faster vs a near tie
        monkeypatch.setattr(machine, "_gemm_flops",
                            lambda dtype, device, n, budget, b=bf16: b if dtype == torch.bfloat16 else 100e9)
        assert machine.probe(refresh=True).best_dtype == expected


def test_trainer_resolves_auto_and_reports_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "_gemm_flops", lambda dtype, device, n, budget: 50e9 if dtype == torch.float32 else 1e9)
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=8, loader="random", eval_every=0, ckpt_every=0, log_every=1)
    trainer = Trainer(TinyLM(dropout=0.0), cfg, train_tokens=periodic_tokens(500), progress=False,
                      metrics_sink=lambda r: None)
    summary = trainer.train()
    assert summary.dtype == "fp32" and summary.peak_flops == 50e9


def test_contention_report_flags_a_busy_machine():
    watch = machine.ContentionWatch(threshold=0.1)
    with watch:
        pass
    assert watch.share >= 0.0
    watch.share = 0.45
    text = watch.report()
    assert "WARNING" in text and text.endswith("result: contended=yes")
    watch.share = 0.02
    assert watch.report().endswith("result: contended=no") and "WARNING" not in watch.report()


# ---------------------------------------------------------------------------------- FLOP count
def test_flops_count_the_tied_lm_head_and_only_active_experts():
    cfg = ModelConfig.preset("llama-style", vocab_size=1000, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=32)
    model = Transformer(cfg)
    assert cfg.tie_embeddings
    non_embedding = model.num_params(exclude_embeddings=True)
    norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    assert matmul_params(model) == non_embedding - norms + 1000 * 64  # the lm_head matmul is counted
    assert flops_per_token(model, 32) == 6 * matmul_params(model) + 6 * 2 * 32 * 64
    assert flops_per_token(model, 32, training=False) * 3 == flops_per_token(model, 32)

    moe = Transformer(ModelConfig.preset("moe", vocab_size=1000, d_model=64, n_layers=1, max_seq_len=32))
    layer = moe.layers[0].ffn
    expert = sum(p.numel() for p in layer.experts[0].parameters() if p.dim() == 2)
    every_linear = sum(m.weight.numel() for m in moe.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(moe) == every_linear - (layer.n_experts - layer.top_k) * expert


def test_rate_summary_separates_first_token_latency():
    assert rate_summary(4, 0.0, 2.0, 2.1) == "4 tokens, first after 2.00 s, then 30.0 tok/s"
    assert rate_summary(0, 0.0, None, 1.0) == "0 tokens in 1.00 s"
    assert rate_summary(1, 0.0, 0.5, 0.5) == "1 tokens, first after 0.50 s"
