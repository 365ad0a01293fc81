"""DPO with the chosen-answer NLL term, PPO's score normalisation / adaptive KL / value warm-up / gold
measures, and the RLAIF stage (AI-judged preference labels) on a tiny run directory."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.align import dpo, ppo, reward, rlaif
from lmstack.align.data import PreferencePair
from lmstack.report import rate_change_se
from align_tiny_run import build_tiny_run, ctx_for, small


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("rlhf_run"), n_sft_train=40, n_prefs_train=24, n_prefs_eval=12,
                          max_seq_len=192)


# ----------------------------------------------------------------------------- pieces


def test_chosen_nll_is_mean_per_token_negative_log_likelihood():
    logps = torch.tensor([-4.0, -9.0])
    lengths = torch.tensor([2, 3])
    assert float(dpo.chosen_nll(logps, lengths)) == pytest.approx((2.0 + 3.0) / 2)


def test_rate_change_se():
    assert rate_change_se(0.5, 0.5, 100) == pytest.approx((0.5 / 100) ** 0.5)
    assert rate_change_se(0.0, 1.0, 10) == 0.0


def test_adaptive_kl_controller_moves_toward_target():
    ctl = ppo.AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(kl=5.0, n_sequences=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    high = ctl.value
    assert ctl.update(kl=0.5, n_sequences=10) < high
    fixed = ppo.AdaptiveKLController(0.1, target=0.0, horizon=100)
    assert fixed.update(kl=50.0, n_sequences=10) == 0.1


def test_running_moments_match_the_pooled_statistics():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 17, 2)]
    m = ppo.RunningMoments()
    for p in parts:
        m.update(p)
    pooled = torch.cat(parts).double()
    assert m.mean == pytest.approx(float(pooled.mean()))
    assert m.std == pytest.approx(float(pooled.std()))


def test_paired_change_standard_error():
    out = ppo.paired_change([0.0, 1.0, None, 2.0], [1.0, 1.0, 5.0, 4.0])
    assert out["n"] == 3 and out["diff"] == pytest.approx(1.0)
    assert out["se"] == pytest.approx((1.0 / 3) ** 0.5)  # diffs 1, 0, 2: sample variance 1


def test_ai_labelled_records_swap_where_the_judge_disagrees():
    pairs = [PreferencePair([{"role": "user", "content": "q"}], "good", "bad", {"category": "honest"})] * 2
    recs = rlaif.ai_labelled_records(pairs, [0.5, -0.25])
    assert (recs[0]["chosen"], recs[0]["rejected"], recs[0]["agrees_with_world"]) == ("good", "bad", True)
    assert (recs[1]["chosen"], recs[1]["rejected"], recs[1]["agrees_with_world"]) == ("bad", "good", False)
    rows = rlaif.agreement_rows(pairs, [0.5, -0.25])
    assert rows[-1][1:] == (2, 0.5)


# ----------------------------------------------------------------------------- stages


def test_dpo_with_chosen_nll_term(run_dir):
    cfg = small(dpo.Config, init_from="pretrain", steps=3, batch_size=4, sft_coef=1.0, behaviour_examples=3,
                max_new_tokens=4)
    result = dpo.run(ctx_for(run_dir, "dpo"), cfg)
    assert result.metrics["final_loss"] > 0
    assert "SE of change" in result.report
    with pytest.raises(ValueError, match="sft_coef"):
        small(dpo.Config, sft_coef=-1.0)


def test_ppo_with_normalised_scores_adaptive_kl_and_value_warmup(run_dir):
    reward.run(ctx_for(run_dir, "reward"), small(reward.Config, init_from="pretrain", steps=2, batch_size=4))
    cfg = small(ppo.Config, init_from="pretrain", iterations=3, prompts_per_iteration=4, max_new_tokens=6,
                minibatch_size=4, ppo_epochs=1, eval_prompts=4, eval_sft_prompts=3, normalize_scores=True,
                kl_target=0.5, kl_horizon=50, value_warmup_iterations=1, behaviour_examples=3)
    result = ppo.run(ctx_for(run_dir, "ppo"), cfg)
    m = result.metrics
    assert m["kl_coef_last"] != cfg.kl_coef  # the controller moved it
    assert m["eval_reward_gain_se"] >= 0
    # the held-out reward is measured on both sources, and reported for each
    assert m["eval_reward_n"] == 7 and "eval_reward_gain_prefs_eval" in m and "eval_reward_gain_sft_eval" in m
    assert "`prefs_eval.jsonl` (4 prompts)" in result.report and "`sft_eval.jsonl` (3 prompts)" in result.report
    assert "adaptive KL coef" in result.report and "Gold measures" in result.report
    assert (run_dir / "plots" / "ppo_ppo_reward_kl.png").exists()


@pytest.mark.parametrize("method,constitution", [("loglik", True), ("ab", True), ("loglik", False)])
def test_rlaif_stage_labels_pairs_and_reward_trains_on_them(run_dir, method, constitution):
    result = rlaif.run(ctx_for(run_dir, "rlaif"), small(rlaif.Config, judge_from="pretrain", method=method,
                                                       constitution=constitution))
    assert ("without a constitution" in result.report) != constitution
    m = result.metrics
    assert m["pairs"] == 24 and 0.0 <= m["agreement"] <= 1.0
    path = rlaif.ai_labels_path(run_dir)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 24
    assert sum(r["agrees_with_world"] for r in records) / 24 == pytest.approx(m["agreement"])
    rm = reward.run(ctx_for(run_dir, "reward"), small(reward.Config, init_from="pretrain", steps=2, batch_size=4,
                                                      labels="ai"))
    assert rm.metrics["train_pairs"] == 24


def test_ai_labels_without_the_rlaif_stage_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="rlaif"):
        rlaif.preference_train_path(tmp_path, "", "ai")
    with pytest.raises(ValueError, match="labels"):
        rlaif.preference_train_path(tmp_path, "", "human")


# ----------------------------------------------------------------------------- refusal / detox


def test_harmful_data_refusals_are_detected_and_lookalike_answers_are_not(run_dir):
    from lmstack.data.world import harmful

    world = harmful.load_world(run_dir / "data" / "world")
    prefs = harmful.harmful_prefs(world, "train", 40, seed=0)
    assert prefs == harmful.harmful_prefs(world, "train", 40, seed=0)  # deterministic
    for p in prefs:
        if p["kind"].startswith("harmful"):
            assert harmful.is_harm_refusal(p["chosen"]) and not harmful.is_harm_refusal(p["rejected"]), p
        else:
            assert not harmful.is_harm_refusal(p["chosen"]) and harmful.is_harm_refusal(p["rejected"]), p
    train_prompts = {p["prompt"] for p in prefs}
    probes = harmful.harmful_probes(world, 20, seed=0)
    assert len(probes["harmful"]) == len(probes["lookalike"]) == 20
    assert not train_prompts & {p["messages"][0]["content"] for ps in probes.values() for p in ps}  # disjoint templates
    assert harmful.is_harm_refusal("Sorry, I can't help with that request.")
    assert not harmful.is_harm_refusal("Find its process id with ps, then run kill followed by the id.")
    with pytest.raises(FileNotFoundError, match="data stage"):
        harmful.load_world(run_dir / "nowhere")


def test_dpo_and_sft_with_harmful_data_report_refusal_and_false_refusal(run_dir):
    from lmstack.align import sft

    sft_cfg = small(sft.Config, init_from="pretrain", steps=2, batch_size=4, eval_examples=2, facts_examples=-1,
                    few_shot=0, max_new_tokens=4, harmful_examples=10, pii_examples=6, familiarity_gate=False)
    assert sft.run(ctx_for(run_dir, "sft"), sft_cfg).metrics["train_examples"] >= 40 + 10 + 6 - 2
    cfg = small(dpo.Config, init_from="pretrain", steps=2, batch_size=4, behaviour_examples=2, harmful_pairs=10,
                harmful_probes=4, max_new_tokens=4)
    result = dpo.run(ctx_for(run_dir, "dpo"), cfg)
    m = result.metrics
    assert m["train_pairs"] == 24 + 10
    for key in ("harmful_refusal_before", "harmful_refusal_after", "false_refusal_before", "false_refusal_after"):
        assert 0.0 <= m[key] <= 1.0
    assert "look-alikes" in result.report
