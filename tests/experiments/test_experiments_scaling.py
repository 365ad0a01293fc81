"""The scaling experiment at toy size: grid, fits, a prediction on disk before the held-out run, the report."""

import json

import pytest

from lmstack.experiments.cli import main
from lmstack.experiments.scaling import ScalingConfig, kaplan_lr, lr_at, window_order

TOY = dict(sizes=[[8, 1], [16, 1], [16, 2], [24, 2], [32, 2]], budgets=[10, 20], holdout_size=[64, 1],
           holdout_steps=10, batch_size=4, seq_len=32, vocab_size=300, fact_items=4, bootstrap=2, world_people=12,
           world_stories=40, world_other_docs=[10, 10, 20, 20], val_batches=2, threads=1, fit_starts=2,
           code_chars=120_000, shakespeare_chars=30_000, chunk_chars=1000, ability_sizes=[[8, 1], [16, 1], [16, 2]],
           ability_budgets=[10])


def test_toy_grid_fits_predicts_before_training_and_reports(tmp_path, capsys):
    args = [f"--set={k}={json.dumps(v)}" for k, v in TOY.items()]
    assert main(["scaling", "--out", str(tmp_path), *args]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert len(result["runs"]) == 10 and result["holdout"]["n"] > max(r["n"] for r in result["runs"])
    assert all(r["tokens"] == r["steps"] * 4 * 32 and r["flops"] > 6 * r["n"] * r["tokens"] for r in result["runs"])
    # natural text is the bulk, the world a minority share; no run reads its data twice; both held-out losses exist
    parts = result["train_tokens_by_part"]
    assert set(parts) == {"code", "shakespeare", "world"} and parts["world"] < 0.5 * sum(parts.values())
    assert all(0 < r["epochs"] < 1 and r["world_val_loss"] > 0 for r in result["runs"] + [result["holdout"]])
    assert set(result["ability"]) >= {"spearman_loss_vs_facts", "spearman_world_loss_vs_choice",
                                      "world_grid_spearman_world_loss_vs_facts"}
    # the ability grid trains on the world alone, so it reads more epochs of its (smaller) stream
    assert [r["data"] for r in result["ability_runs"]] == ["world"] * 3 and all(r["data"] == "mix" for r in result["runs"])
    assert result["ability_runs"][0]["epochs"] > result["runs"][0]["epochs"]
    # the prediction file was written before the held-out run finished
    prediction = tmp_path / "prediction.json"
    holdout_file = tmp_path / "runs" / "d64_l1_s10.json"
    assert prediction.stat().st_mtime <= holdout_file.stat().st_mtime
    assert json.loads(prediction.read_text())["chinchilla"] == result["prediction"]["chinchilla"]
    report = (tmp_path / "report.md").read_text()
    for heading in ("Fitted laws beside the papers'", "Prediction test", "Early-training prediction",
                    "Does loss predict ability?", "World-only grid", "out of room for data", "## Claims"):
        assert heading in report
    assert (tmp_path / "scaling_fit.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "result: alpha=" in out and "result: holdout_prediction_error=" in out
    # a run saved under the same recipe is reused, not retrained
    from lmstack.experiments.scaling import cached_run

    cfg = ScalingConfig(**TOY)
    saved = json.loads((tmp_path / "runs" / "d8_l1_s10.json").read_text())["run"]
    assert cached_run(cfg, [8, 1], 10, None, tmp_path, print) == saved


def test_recipe_pieces():
    assert kaplan_lr(10_000, 1.0) == pytest.approx(0.003239 - 0.0001395 * 9.2103, rel=1e-4)
    cfg = ScalingConfig()
    assert lr_at(0, 100, 1.0, cfg) < lr_at(4, 100, 1.0, cfg) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, cfg) == pytest.approx(0.1, abs=0.01)
    starts = window_order(1000, 9, seed=0, count=150)  # 99 windows: the second epoch is a new permutation
    assert len(set(starts[:99].tolist())) == 99 and starts[:40].tolist() == window_order(1000, 9, 0, 40).tolist()
    with pytest.raises(ValueError, match="multiple of head_dim"):
        ScalingConfig(sizes=[[12, 1], [16, 1], [24, 1]])


def test_natural_text_is_held_out_by_whole_module_and_excerpt():
    from lmstack.experiments.scaling import natural_docs

    cfg = ScalingConfig(**TOY)
    train, held = natural_docs(cfg)
    assert {d["part"] for d in train} == {"code", "shakespeare"} and {d["part"] for d in held} == {"code", "shakespeare"}
    assert max(len(d["text"]) for d in train) < 3 * cfg.chunk_chars  # long modules were cut into documents
    train_lines = {line for d in train for line in d["text"].split("\n") if len(line) > 30}
    held_lines = [line for d in held for line in d["text"].split("\n") if len(line) > 30]
    assert held_lines and sum(line in train_lines for line in held_lines) < len(held_lines) / 2
