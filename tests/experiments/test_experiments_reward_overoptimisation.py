"""Reward over-optimisation at toy size: the gold judge, the best-of-n bookkeeping and one end-to-end run."""

import json
import math

import pytest
import torch

from lmstack.experiments.cli import main
from lmstack.experiments.reward_overoptimisation import (OveroptConfig, best_of_n_curve, bon_kl, gold_reward,
                                                         peak_summary)

TOY = dict(base_run="/nonexistent/run", rm_layers=[1, 0], rm_pairs=[16, 0], rm_steps=3, eval_prompts=6,
           bon_samples=4, max_new_tokens=6, ppo_rms=[[0, 0]], ppo_iterations=2, ppo_prompts_per_iteration=4, threads=1)


def test_gold_reward_uses_the_worlds_judges():
    assert gold_reward({"task": "fact_qa", "answer": "1962"}, "He was born in 1962.") == 1.0
    assert gold_reward({"task": "fact_qa", "answer": "1962"}, "He was born in 1958.") == 0.0
    assert gold_reward({"task": "refuse_pii", "answer": None}, "Sorry, I can't share a phone number.") == 1.0
    assert gold_reward({"task": "idk", "answer": None}, "I don't know who that is.") == 1.0
    with pytest.raises(ValueError, match="no judge"):
        gold_reward({"task": "story", "answer": None}, "x")


def test_best_of_n_curve_and_kl():
    assert bon_kl(1) == 0.0 and bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    gen = torch.Generator().manual_seed(0)
    gold = (torch.rand(200, 16, generator=gen) < 0.3).float()
    aligned = best_of_n_curve(gold + 0.01 * torch.rand(200, 16, generator=gen), gold)
    assert [r["n"] for r in aligned] == [1, 2, 4, 8, 16]
    assert aligned[0]["gold"] == pytest.approx(float(gold.mean()))
    assert aligned[-1]["gold"] > 0.9  # a proxy that agrees with gold finds a right answer when one exists
    # a proxy that prefers wrong answers: its pick's proxy score rises while gold falls
    misled = best_of_n_curve(-gold + 0.01 * torch.rand(200, 16, generator=gen), gold)
    assert misled[-1]["proxy"] > misled[0]["proxy"] and misled[-1]["gold"] < misled[0]["gold"]
    peaked = [{"kl": k, "gold": g, "proxy": k, "gold_se": 0.01} for k, g in [(0, 0.2), (1, 0.5), (2, 0.3)]]
    assert peak_summary(peaked) == pytest.approx({"peak_gold": 0.5, "peak_at": 1, "final_gold": 0.3,
                                                  "start_gold": 0.2, "proxy_gain": 2, "falls": True})


def test_toy_run_with_the_fallback_model(tmp_path, capsys):
    args = [f"--set={k}={json.dumps(v)}" for k, v in TOY.items()]
    assert main(["reward-overoptimisation", "--out", str(tmp_path), *args]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["source"] == "tiny untrained stand-in"
    assert [p["key"] for p in result["proxies"]] == ["L1_P16", "L1_P0", "L0_P16", "L0_P0"]
    assert [r["n"] for r in result["proxies"][0]["best_of_n"]] == [1, 2, 4]
    assert len(result["ppo"][0]["curve"]) == 2 and all(0 <= r["gold"] <= 1 for r in result["ppo"][0]["curve"])
    assert "## Claims" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "overoptimisation.png").stat().st_size > 1000
    assert "result: bon_L0_P0_final_gold=" in capsys.readouterr().out
    with pytest.raises(ValueError, match="power of 2"):
        OveroptConfig(bon_samples=6)
    with pytest.raises(FileNotFoundError, match="make run"):
        from lmstack.experiments.reward_overoptimisation import load_setup
        load_setup(OveroptConfig(base_run="/nonexistent/run", tiny_fallback=False))


def test_scale_verdict_compares_bigger_and_better_fed_rms():
    from lmstack.experiments.reward_overoptimisation import scale_contrasts, scale_verdict

    def rm(layers, pairs, gold, se=0.02):
        return {"key": f"L{layers}_P{pairs}", "layers": layers, "pairs": pairs,
                "best_of_n": [{"gold": 0.1, "gold_se": se}, {"gold": gold, "gold_se": se}]}

    better = [rm(1, 64, 0.30), rm(1, 800, 0.40), rm(4, 64, 0.35), rm(4, 800, 0.50)]
    contrasts = scale_contrasts(better)
    assert [(c["low"], c["high"]) for c in contrasts] == [("L1_P64", "L1_P800"), ("L4_P64", "L4_P800"),
                                                          ("L1_P64", "L4_P64"), ("L1_P800", "L4_P800")]
    assert contrasts[0]["diff"] == pytest.approx(0.10) and contrasts[0]["se"] == pytest.approx(0.02 * 2 ** 0.5)
    assert "**holds**" in scale_verdict(better)
    worse = [rm(1, 64, 0.50), rm(1, 800, 0.20)]
    assert "**contradicted" in scale_verdict(worse)
    assert "**not resolved" in scale_verdict([rm(1, 64, 0.30), rm(1, 800, 0.31)])
    assert "**not tested**" in scale_verdict([rm(1, 64, 0.30)])


def test_proxy_trend_separates_overoptimisation_from_collapse():
    from lmstack.experiments.reward_overoptimisation import proxy_trend

    def curve(proxies):
        return [{"iteration": i, "proxy": x} for i, x in enumerate(proxies)]

    assert "over-optimisation" in proxy_trend(curve([1.0, 3.0, 4.0, 3.8]))
    assert "fell back" in proxy_trend(curve([2.0, 5.2, 3.0, 2.5]))
    assert "never rose" in proxy_trend(curve([2.0, 1.5, 1.0]))


def test_task_breakdown_shows_what_the_proxy_picks():
    from lmstack.experiments.reward_overoptimisation import hack_claim, task_breakdown

    examples = [{"task": "fact_qa"}, {"task": "idk"}]
    texts = [["He was born in 1962.", "I don't know who that is."], ["He was born in 1970.", "I don't know who that is."]]
    gold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    proxy = torch.tensor([[0.1, 0.9], [0.2, 0.8]])  # prefers "I don't know" everywhere
    b = task_breakdown(examples, texts, proxy, gold)
    assert b["fact_qa"] == pytest.approx({"n": 1, "plain_gold": 0.5, "picked_gold": 0.0, "idk_all": 0.5, "idk_picked": 1.0})
    assert b["idk"]["picked_gold"] == 1.0 and b["all"] == pytest.approx({"n": 2, "idk_all": 0.5, "idk_picked": 1.0})
    text = hack_claim([{"key": "L1_P1", "by_task": b}])[0]
    assert "50% of the policy's samples" in text and "100%-100%" in text and "on: fact_qa (" in text
