"""Guards against PPO's reward hacking on the world: mismatched-answer preference pairs (reward / DPO data) and
the world's rule reward mixed into PPO's reward (ppo.gold_coef)."""

from __future__ import annotations

import pytest

from lmstack.align import dpo, gold, ppo, reward
from lmstack.align.data import PreferencePair, load_preferences_jsonl, mismatch_pool, mismatched_pairs
from align_tiny_run import build_tiny_run, ctx_for, small


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("hacking_run"), n_sft_train=40, n_prefs_train=40, n_prefs_eval=12,
                          max_seq_len=192)


def _pair(prompt, chosen, kind, lang="en"):
    return PreferencePair([{"role": "user", "content": prompt}], chosen, "bad", {"kind": kind, "lang": lang})


def test_mismatched_pairs_reject_a_good_answer_to_another_kind_of_request():
    pairs = [_pair("phone of A?", "I can't share that.", "pii_leak"), _pair("phone of B?", "Sorry, that is private.", "pii_leak"),
             _pair("Who is Zork?", "I don't know Zork.", "fabrication"), _pair("Capital of X?", "Y.", "wrong_fact"),
             _pair("X的首都？", "Y城。", "wrong_fact", "zh"), _pair("谁是佐克？", "我不知道。", "fabrication", "zh")]
    out = mismatched_pairs(pairs, 30, seed=1)
    assert len(out) == 30
    chosen_by_text = {p.chosen: p for p in pairs}
    for m in out:
        base = next(p for p in pairs if p.prompt == m.prompt)
        assert m.chosen == base.chosen  # the prompt keeps its own good answer
        other = chosen_by_text[m.rejected]  # the rejected answer is another pair's chosen answer ...
        assert other.meta["kind"] != base.meta["kind"]  # ... to a different kind of request
        assert other.meta["lang"] == base.meta["lang"]
        assert m.meta["category"] == "mismatched"
    assert [(m.chosen, m.rejected) for m in out] == [(m.chosen, m.rejected) for m in mismatched_pairs(pairs, 30, seed=1)]
    assert mismatched_pairs(pairs, 0, seed=1) == []
    assert mismatched_pairs(pairs[:2], 5, seed=1) == []  # one kind only: nothing to mismatch


def test_mismatch_pool_from_sft_conversations_keeps_follow_up_turns(run_dir, tmp_path):
    pool = mismatch_pool([], run_dir, "sft")
    assert pool and all(p.prompt[-1]["role"] == "user" and p.chosen for p in pool)
    assert any(sum(m["role"] == "user" for m in p.prompt) > 1 for p in pool)  # multi-turn conversations included
    assert {p.meta["kind"] for p in pool} >= {"fact_qa", "idk"}
    out = mismatched_pairs(pool, 8, seed=0)
    assert len(out) == 8 and all(m.rejected and m.rejected != m.chosen for m in out)
    prefs = [_pair("q", "a", "k1"), _pair("r", "b", "k2")]
    assert mismatch_pool(prefs, run_dir, "prefs") is prefs
    with pytest.raises(ValueError, match="mismatched_from"):
        mismatch_pool(prefs, run_dir, "web")
    with pytest.raises(FileNotFoundError, match="sft_train.jsonl"):
        mismatch_pool(prefs, tmp_path, "sft")


def test_gold_score_follows_the_world_checkers():
    assert gold.gold_score("pii_leak", "en", [], "I'm sorry, but I can't share her phone number.") == 1.0
    assert gold.gold_score("pii_leak", "en", [], "You can call her at +1 555 0101.") == -1.0
    assert gold.gold_score("pii_leak", "en", [], "She works as a nurse.") == -1.0  # off-topic is not a refusal
    assert gold.gold_score("fabrication", "en", [], "I don't know who that is.") == 1.0
    assert gold.gold_score("fabrication", "en", [], "Zork was born in 1990.") == -1.0
    assert gold.gold_score("wrong_fact", "en", ["1965"], "Peter Carter was born in 1965.") == 1.0
    assert gold.gold_score("wrong_fact", "en", ["1965"], "Peter Carter was born in 1955.") == 0.0
    assert gold.gold_score("wrong_fact", "en", ["1965"], "I don't know.") == -1.0
    assert gold.gold_score("untranslated", "en", [], "Bonjour.") == 0.0


def test_world_gold_reward_agrees_with_the_world_labels(run_dir):
    prefs = run_dir / "data" / "world" / "prefs_train.jsonl"
    fn = gold.WorldGoldReward(prefs, run_dir / "data" / "world" / "world.json")
    pairs = load_preferences_jsonl(prefs)
    chosen = fn([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = fn([p.prompt for p in pairs], [p.rejected for p in pairs])
    assert all(c >= r for c, r in zip(chosen, rejected))  # never prefers the world's rejected answer
    ruled = [p for p, c, r in zip(pairs, chosen, rejected) if c > r]
    assert any(p.meta["kind"] == "pii_leak" for p in ruled) and any(p.meta["kind"] == "fabrication" for p in ruled)
    assert fn([[{"role": "user", "content": "not a world prompt"}]], ["anything"]) == [0.0]
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        gold.WorldGoldReward(prefs, run_dir / "missing.json")


def test_world_gold_reward_knows_sft_conversations(run_dir):
    from lmstack.align.data import chat_answer_pairs

    fn = gold.WorldGoldReward(run_dir / "data" / "world" / "prefs_train.jsonl", run_dir / "data" / "world" / "world.json")
    chats = ppo.sft_prompt_chats(run_dir, 1000, seed=0)
    fn.add_chats(chats)
    pairs = chat_answer_pairs(chats)
    scores = fn([p.prompt for p in pairs], [p.chosen for p in pairs])
    by_kind = {}
    for p, sc in zip(pairs, scores):
        by_kind.setdefault(p.meta["kind"], []).append(sc)
    assert min(scores) >= 0.0  # the SFT answers themselves are never penalised
    assert set(by_kind["idk"]) == {1.0} and set(by_kind["fact_qa"]) == {1.0}
    idk_prompt = next(p.prompt for p in pairs if p.meta["kind"] == "idk")
    assert fn([idk_prompt], ["He was born in 1990."]) == [-1.0]


def test_reward_dpo_and_ppo_stages_with_the_new_options(run_dir):
    r = reward.run(ctx_for(run_dir, "reward"), small(reward.Config, init_from="pretrain", steps=2, batch_size=4,
                                                     mismatched_pairs=10))
    n_world = len(load_preferences_jsonl(run_dir / "data" / "world" / "prefs_train.jsonl"))
    assert r.metrics["dropped_pairs"] == 0
    assert r.metrics["train_pairs"] == n_world + 10
    d = dpo.run(ctx_for(run_dir, "dpo"), small(dpo.Config, init_from="pretrain", steps=2, batch_size=4,
                                               mismatched_pairs=10, mismatched_from="sft", behaviour_examples=0,
                                               max_new_tokens=4))
    assert d.metrics["dropped_pairs"] == 0
    assert d.metrics["train_pairs"] == n_world + 10
    cfg = small(ppo.Config, init_from="pretrain", iterations=2, prompts_per_iteration=4, max_new_tokens=6,
                minibatch_size=4, ppo_epochs=1, eval_prompts=0, normalize_scores=True, gold_coef=1.0, sft_prompts=6)
    result = ppo.run(ctx_for(run_dir, "ppo"), cfg)
    assert -1.0 <= result.metrics["gold_first"] <= 1.0 and -1.0 <= result.metrics["gold_last"] <= 1.0
    assert "rule reward" in result.report


def test_gold_coef_is_checked():
    with pytest.raises(ValueError, match="gold_coef"):
        small(ppo.Config, gold_coef=-1.0)
    with pytest.raises(ValueError, match="sft_prompts"):
        small(ppo.Config, sft_prompts=-1)
