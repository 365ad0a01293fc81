"""The pretrain stage end to end on a tiny run directory (built here, without the other stages)."""

import json
import random

import numpy as np
import torch
import pytest

from lmstack.config import config_from_dict
from lmstack.data.shards import write_tokens
from lmstack.pipeline import StageContext
from lmstack.runs import RunDir

PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Tokyo", "Quito"]


def make_run_dir(path):
    from lmstack.tokenizer import train_tokenizer

    rng = random.Random(0)
    docs = []
    for _ in range(300):
        i = rng.randrange(6)  # people 6 and 7 never appear: the not_in_pretrain control
        docs.append(f"{PEOPLE[i]} lives in {CITIES[i]}. {PEOPLE[i]} likes the city of {CITIES[i]}.")
    tok = train_tokenizer(docs, 300, progress=False)
    run = RunDir(path)
    tok.save(run.sub("tokenizer") / "tokenizer.json")
    shards = run.sub("shards")
    meta = {"vocab_size": tok.vocab_size}
    for split, part in (("train", docs[:270]), ("val", docs[270:])):
        ids = []
        for d in part:
            ids += [tok.bos_id] + tok.encode(d)
        write_tokens(shards / f"{split}.bin", np.array(ids))
        meta[split] = {"tokens": len(ids), "bytes": sum(len(d.encode()) for d in part), "docs": len(part)}
    (shards / "meta.json").write_text(json.dumps(meta))
    world = run.sub("data/world")
    with open(world / "facts_eval.jsonl", "w") as f:
        for i, (p, c) in enumerate(zip(PEOPLE, CITIES)):
            f.write(json.dumps({"prompt": f"{p} lives in", "answer": c, "lang": "en", "fact": f"city:{p}",
                                "in_pretrain": i < 6, "in_sft": False}) + "\n")
    return run


def tiny_cfg(**over):
    from lmstack.train.stage import Config
    table = {"model": {"preset": "llama-style", "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1},
             "steps": 30, "batch_size": 8, "seq_len": 32, "eval_every": 10, "ckpt_every": 10, "eval_batches": 2,
             "threads": 1, "peak_flops": 1e10, "sample_prompts": ["Alice lives"], "sample_tokens": 8,
             "optim": {"lr": 0.01}, "schedule": {"warmup_steps": 5}, "max_seconds": 0.0}
    table.update(over)
    return config_from_dict(Config, table, "pretrain")


def test_pretrain_stage_writes_checkpoint_metrics_report_and_resumes(tmp_path):
    from lmstack.model import load_pretrained
    from lmstack.train.stage import run

    rd = make_run_dir(tmp_path / "run")
    ctx = StageContext(run=rd, seed=3, device="cpu", recipe={}, stage="pretrain")
    result = run(ctx, tiny_cfg())
    ck = rd.path / "checkpoints" / "pretrain"
    model = load_pretrained(ck)
    from lmstack.tokenizer import Tokenizer
    assert model.config.vocab_size == Tokenizer.load(rd.path / "tokenizer" / "tokenizer.json").vocab_size
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["finished"] and state["step"] == 30
    m = result.metrics
    assert m["steps"] == 30 and m["val_loss"] < 5.0 and m["val_bpb"] > 0
    assert 0.0 <= m["fact_acc_all"] <= 1.0 and "fact_acc_in_pretrain" in m and "fact_acc_not_in_pretrain" in m
    for art in result.artifacts.values():
        assert (rd.path / art).exists(), art
    assert "![Loss](plots/pretrain_loss.png)" in result.report and "Few-shot fact completion" in result.report
    lines = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("val_bpb") for r in lines) and all(r["stage"] == "pretrain" for r in lines)

    # Re-running (as after an interruption) resumes from the newest step checkpoint instead of retraining.
    result2 = run(ctx, tiny_cfg())
    assert "Resumed from the checkpoint at step 30" in result2.report
    assert result2.metrics["val_loss"] == pytest.approx(m["val_loss"])

    # Re-running a stage that had finished (its config or its inputs changed) starts afresh instead.
    fresh = StageContext(run=rd, seed=3, device="cpu", recipe={}, stage="pretrain", resume=False)
    result3 = run(fresh, tiny_cfg(steps=12))
    assert "Resumed" not in result3.report and result3.metrics["steps"] == 12
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 12


def test_model_table_errors_name_the_field(tmp_path):
    from lmstack.train.stage import build_model_config
    with pytest.raises(ValueError, match=r"\[pretrain.model\].*does not match the tokenizer"):
        build_model_config(tiny_cfg(model={"vocab_size": 17}), 300)
    with pytest.raises(ValueError, match=r"\[pretrain.model\].*n_kv_heads"):
        build_model_config(tiny_cfg(model={"preset": "llama-style", "n_heads": 4, "n_kv_heads": 3}), 300)
    with pytest.raises(ValueError, match="max_seq_len=16 is shorter"):
        build_model_config(tiny_cfg(model={"max_seq_len": 16}), 300)


def test_time_budget_picks_the_step_count_and_resume_keeps_it(tmp_path):
    from lmstack.train.stage import run

    rd = make_run_dir(tmp_path / "run")
    ctx = StageContext(run=rd, seed=3, device="cpu", recipe={}, stage="pretrain")
    cfg = tiny_cfg(steps=5000, max_seconds=0.5, eval_every=0, ckpt_every=0, fact_eval_max=2, sample_prompts=[])
    result = run(ctx, cfg)
    state = json.loads((rd.path / "checkpoints" / "pretrain" / "trainer_state.json").read_text())
    assert 6 <= state["total_steps"] < 5000 and result.metrics["steps"] == state["total_steps"]
    # A re-run reuses the recorded length instead of timing again.
    again = run(ctx, tiny_cfg(steps=5000, max_seconds=0.5, eval_every=0, ckpt_every=0, fact_eval_max=2,
                              sample_prompts=[]))
    assert again.metrics["steps"] == state["total_steps"]


def test_wsd_budget_is_fitted_again_halfway_and_equals_a_run_planned_at_that_length(tmp_path, capsys):
    from lmstack.model import load_pretrained
    from lmstack.train.stage import run

    over = dict(eval_every=0, ckpt_every=0, fact_eval_max=2, sample_prompts=[],
                schedule={"kind": "wsd", "warmup_steps": 5})
    rd = make_run_dir(tmp_path / "budget")
    budget = run(StageContext(run=rd, seed=3, device="cpu", recipe={}, stage="pretrain"),
                 tiny_cfg(steps=5000, max_seconds=4.0, **over))
    assert "s/step sustained" in capsys.readouterr().err
    steps = budget.metrics["steps"]
    planned = make_run_dir(tmp_path / "planned")
    fixed = run(StageContext(run=planned, seed=3, device="cpu", recipe={}, stage="pretrain"),
                tiny_cfg(steps=steps, **over))
    assert fixed.metrics["steps"] == steps and fixed.metrics["val_loss"] == budget.metrics["val_loss"]
    a, b = (load_pretrained(r.path / "checkpoints" / "pretrain").state_dict() for r in (rd, planned))
    assert all(torch.equal(a[k], b[k]) for k in a)
