"""The ``reason`` and ``self_instruct`` stages end to end on a tiny run directory (tiny world, random model)."""

from __future__ import annotations

import json

import pytest

from lmstack.align import ppo, reason, reward, self_instruct
from align_tiny_run import build_tiny_run, ctx_for, small
from lmstack.config import config_from_dict


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny run, its random model copied as checkpoints/sft, and a reward model."""
    import shutil

    root = build_tiny_run(tmp_path_factory.mktemp("reason_run"), n_prefs_train=30, n_prefs_eval=10, max_seq_len=192,
                          extra_texts=["Compute (12 + 7) * 3.\n12 + 7 = 19\n19 * 3 = 57\nAnswer: 57"])
    shutil.copytree(root / "checkpoints" / "pretrain", root / "checkpoints" / "sft")
    reward.run(ctx_for(root, "reward"), small(reward.Config, init_from="pretrain", steps=2, batch_size=4))
    return root


def test_rule_reward_scores_answer_and_format():
    fn = reason.rule_reward({"Compute 2 + 3.": "5"}, format_weight=0.2)
    conv = [{"role": "user", "content": "Compute 2 + 3."}]
    assert fn([conv] * 3, ["2 + 3 = 5\nAnswer: 5", "Answer: 6", "five"]) == pytest.approx([1.2, 0.2, 0.0])


def test_collect_rollout_uses_a_callable_reward(run_dir):
    from lmstack.align import common

    tok = common.load_tokenizer(run_dir)
    lm = common.load_model(run_dir, "pretrain", "cpu", needed_by="test")
    policy = ppo.PolicyWithValueHead(lm)
    cfg = ppo.Config(algo="grpo", group_size=2, max_new_tokens=4)
    prompts = [[{"role": "user", "content": "hi"}]] * 2
    seen = []

    def reward_fn(ps, texts):
        seen.append((ps, texts))
        return [3.0, -1.0]

    roll = ppo.collect_rollout(policy, common.frozen_copy(lm), None, tok, prompts, cfg, "cpu", seed=0, reward_fn=reward_fn)
    assert seen and seen[0][0] == prompts and len(seen[0][1]) == 2
    assert roll.raw_scores.tolist() == [3.0, -1.0]


def test_reason_stage_trains_and_reports(run_dir):
    cfg = config_from_dict(reason.Config, {"n_train": 40, "n_eval_per_level": 2, "sft_steps": 3, "batch_size": 4,
                                           "max_new_tokens": 12, "token_budgets": [0, 4],
                                           "grpo": {"iterations": 2, "prompts_per_iteration": 2, "group_size": 2,
                                                    "minibatch_size": 4}}, "reason")
    result = reason.run(ctx_for(run_dir, "reason"), cfg)
    m = result.metrics
    for name in ("reason", "reason_sft"):
        assert (run_dir / "checkpoints" / name / "model.safetensors").exists()
    for key in ("base", "direct", "trace_sft", "grpo"):
        assert 0.0 <= m[f"{key}_accuracy_hard"] <= 1.0
    assert m["eval_hard"] == 6 and m["train_problems"] == 40 and m["grpo_problems"] == 4
    def questions(name):
        return [json.loads(l)["messages"][-2]["content"] for l in (run_dir / "data" / "reason" / name).read_text().splitlines()]

    assert len(questions("rl.jsonl")) == 4 and not set(questions("rl.jsonl")) & set(questions("train_trace.jsonl"))
    rows = [json.loads(l) for l in (run_dir / "eval" / "reason_answers.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"sft (no reasoning data)", "direct-answer SFT", "trace SFT", "trace SFT + GRPO"}
    assert "Accuracy before / after" in result.report and "budget" in result.report
    train = [json.loads(l) for l in (run_dir / "data" / "reason" / "train_trace.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["content"].splitlines()[-1] == f"Answer: {r['answer']}" for r in train)
    grpo_rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(l).get("phase") == "grpo"]
    assert len(grpo_rows) == 2


def _scripted_pairs(world, n):
    p = world["people"][0]
    city = next(c for c in world["cities"] if c["id"] == p["birthplace"])
    good = [{"task": "fact_qa", "lang": "en", "system": "", "question": f"Where exactly was {p['name_en']} born, please?",
             "answer": f"{p['name_en']} was born in {city['name_en']}.", "finished": True},
            {"task": "arith", "lang": "en", "system": "", "question": "How much is 17 plus 25 together?",
             "answer": "17 + 25 = 42.", "finished": True}]
    bad = [{"task": "arith", "lang": "en", "system": "", "question": "How much is 17 plus 26 together?",
            "answer": "17 + 26 = 44.", "finished": True},                       # verifier: wrong
           {"task": "fact_qa", "lang": "en", "system": "", "question": "Hi", "answer": "Hello.", "finished": True},  # too short
           {"task": "arith", "lang": "en", "system": "", "question": "How much is 17 plus 25 together?",
            "answer": "17 + 25 = 42.", "finished": True}]                       # a copy: ROUGE-L 1.0
    return (good + bad)[:n]


def test_self_instruct_filters_count_and_retrain(run_dir, monkeypatch):
    world = json.loads((run_dir / "data" / "world" / "world.json").read_text())
    monkeypatch.setattr(self_instruct, "generate_pairs", lambda model, tok, seeds, kept, n, cfg, seed: _scripted_pairs(world, n))
    cfg = config_from_dict(self_instruct.Config, {"n_seed": 30, "n_generate": 5, "rounds": 1, "steps": 2, "batch_size": 2,
                                                  "eval_examples": 6, "max_answer_tokens": 6,
                                                  "reward_seed_quantile": 0.0}, "self_instruct")
    result = self_instruct.run(ctx_for(run_dir, "self_instruct"), cfg)
    m = result.metrics
    assert m["generated"] == 5 and m["verifier_checked"] == 4  # all but the too-short one
    report = result.report
    assert "| dropped: world verifier (wrong) | 1 |" in report

    def count(row: str) -> int:
        return int(report.split(f"| {row} | ")[1].split(" |")[0]) if f"| {row} | " in report else 0

    # The three well-formed, verified pairs (two good ones and a copy of one) are dropped by the reward model
    # (a copy scores what its original scores) or by ROUGE-L novelty, or kept.
    assert count("dropped: reward model score") + count("dropped: ROUGE-L novelty") + count("kept") == 3
    assert count("dropped: ROUGE-L novelty") <= 1
    assert "| dropped: format (question length) | 1 |" in report
    # the reward filter may drop either good pair under a random reward model; what is kept is consistent
    assert m["kept"] == int(report.split("| kept | ")[1].split(" |")[0]) and m["kept"] <= 2
    kept = [json.loads(l) for l in (run_dir / "data" / "self_instruct" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == m["kept"]
    if m["kept"]:
        assert (run_dir / "checkpoints" / "self_instruct" / "model.safetensors").exists()
        assert "human-written (world)" in report and 0.0 <= m["accuracy_human"] <= 1.0


def test_self_instruct_generates_from_a_model(run_dir):
    from lmstack.align import common

    tok = common.load_tokenizer(run_dir)
    model = common.load_model(run_dir, "pretrain", "cpu", needed_by="test").eval()
    seeds = self_instruct.load_seeds(run_dir / "data" / "world" / "sft_train.jsonl", 20, seed=0)
    assert seeds and {s["task"] for s in seeds} <= set(self_instruct.SEED_TASKS)
    cfg = config_from_dict(self_instruct.Config, {"max_question_tokens": 6, "max_answer_tokens": 6}, "self_instruct")
    pairs = self_instruct.generate_pairs(model, tok, seeds, seeds[:2], 4, cfg, seed=0)
    assert len(pairs) == 4 and all({"task", "lang", "question", "answer", "finished"} <= set(p) for p in pairs)
    assert self_instruct.format_problems("What is 2 plus 2 today?", "I cannot share that.", True, cfg, "arith") == \
        "answer does not fit the task"
    # the question must be in its group's language (a translation's sentence in the source language), unbroken,
    # and an arithmetic one must have a number; seeds written by people pass
    shape = self_instruct.question_shape
    assert shape("fact_qa", "en", "How does Julia Rossi朵， town in?") == "question in the wrong language"
    assert shape("fact_qa", "zh", "What is Cao Haoqing's favorite hobby?") == "question in the wrong language"
    assert shape("translate", "en", "I like noodles.") == "question in the wrong language"
    assert shape("translate", "zh", "I like noodles.") == shape("fact_qa", "zh", "唐平婷是做什么的？") == ""
    assert shape("translate", "zh", "请把这句话翻译成中文：我喜欢面条。") == "question in the wrong language"
    assert shape("arith", "en", "When was Lin Meizhi born?") == "arithmetic question without a number"
    assert shape("fact_qa", "en", "Who is \ufffd?") == "garbled question"
    assert all(not shape(s["task"], s["lang"], s["question"].rsplit("\n", 1)[-1]) for s in seeds)
    assert self_instruct.format_problems("Translate this sentence to English.\nI like noodles.", "I like noodles.",
                                         True, cfg, "translate", "en") == "question in the wrong language"
    with pytest.raises(ValueError, match="rouge_threshold"):
        config_from_dict(self_instruct.Config, {"rouge_threshold": 0}, "self_instruct")
