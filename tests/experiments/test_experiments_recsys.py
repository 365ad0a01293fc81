"""The recommendation experiment (lmstack.experiments.recsys) at toy size, through the CLI."""

import json

import pytest

from lmstack.experiments.cli import main
from lmstack.experiments.recsys import METHODS, RecsysConfig

TOY = ["base=scratch", "n_items=30", "n_users=40", "min_history=4", "max_history=6", "n_eval_users=8",
       "pretrain_steps=8", "sft_steps=4", "id_steps=4", "d_model=32", "n_layers=1", "n_heads=2", "vocab_size=300",
       "seq_len=96", "batch_size=4", "history_window=4", "threads=1", "als_iterations=3"]


def test_toy_run_writes_report_results_and_is_deterministic(tmp_path, capsys):
    args = ["recsys", "--out", str(tmp_path / "a")] + [x for kv in TOY for x in ("--set", kv)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "result: goal_met=" in out and "result: item-ID_description_ndcg@10=" in out
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(result["metrics"]) == list(METHODS)
    for m in result["metrics"].values():
        assert 0.0 <= m["ndcg@10"] <= m["recall@10"] <= 1.0 and m["n_users"] == 8
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| item-ID (description init) |" in report and "《" in report
    assert (tmp_path / "a" / "recsys.png").stat().st_size > 0
    # the same seed gives the same numbers
    assert main(["recsys", "--out", str(tmp_path / "b")] + [x for kv in TOY for x in ("--set", kv)]) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["metrics"] == result["metrics"]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="n_eval_users"):
        RecsysConfig(n_users=10, n_eval_users=20)
    assert main(["recsys", "--set", "base=/nonexistent/ckpt", "--set", "n_users=20", "--set", "n_eval_users=5"]) == 2


def test_goal_text_says_how_far_behind_or_ahead():
    from lmstack.experiments.recsys import goal_margin_text, goal_verdict

    def metrics(ours, knn):
        return {"item-ID (description init)": {"ndcg@10": ours, "ndcg@10_se": 0.017},
                "popularity": {"ndcg@10": 0.05}, "item-kNN": {"ndcg@10": knn}}

    assert goal_margin_text(goal_verdict(metrics(0.118, 0.159), 10)) == ": behind by 0.041 (2.4 standard errors)."
    assert "less than one standard error" in goal_margin_text(goal_verdict(metrics(0.165, 0.159), 10))
    assert goal_margin_text(goal_verdict(metrics(0.2, 0.159), 10)) == "."
