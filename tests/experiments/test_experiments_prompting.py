"""lmstack experiment prompting at toy size: trains its own models, writes the report, is deterministic."""

import json
import random

import pytest

from lmstack.experiments.prompting import PromptingConfig, arith_split, run_experiment

TOY = dict(d_models=[16], n_layers=[1], n_people=4, pretrain_steps=6, sft_steps=2, cot_steps=2, cot_train=20,
           cot_eval=4, eval_items=4, shots=[0, 2], cot_samples=2, seq_len=96, vocab_size=280, batch_size=2,
           threads=1)


def test_arith_split_is_disjoint_and_steps_are_right():
    train, test = arith_split(200, 30, seed=0)
    assert not {p["q"] for p in train} & {p["q"] for p in test}
    for p in train[:50]:
        a, b, c, d = (int(t) for t in p["q"].replace("(", "").replace(")", "").replace("+", "").replace("*", "")
                      .replace("-", "").split())
        assert (a + b) * c - d == int(p["answer"]) >= 0
        assert p["steps"].endswith(f"The answer is {p['answer']}.") and p["direct"] == f"The answer is {p['answer']}."
    assert arith_split(200, 30, seed=0) == (train, test)
    assert arith_split(200, 30, seed=1)[1] != test


def test_toy_run_writes_report_and_is_deterministic(tmp_path):
    a = run_experiment(PromptingConfig(**TOY), tmp_path / "a", log=lambda *_: None)
    report = (tmp_path / "a" / "report.md").read_text(encoding="utf-8")
    for heading in ("## 1. In-context learning curves", "## 2. Chain of thought", "## 3. Prompt sensitivity"):
        assert heading in report
    assert (tmp_path / "a" / "icl_logprob.png").exists() and (tmp_path / "a" / "cot.png").exists()
    assert [(r["kind"], r["shots"]) for r in a["icl"]] == [("base", 0), ("base", 2), ("sft", 0), ("sft", 2)]
    assert {r["style"] for r in a["cot"]} == {"direct", "steps"}
    assert len(a["templates"]) == 2 * 5
    assert all(r["logprob"]["value"] < 0 for r in a["icl"])
    b = run_experiment(PromptingConfig(**TOY), tmp_path / "b", log=lambda *_: None)
    strip = lambda r: json.dumps({k: r[k] for k in ("icl", "cot", "templates")}, sort_keys=True)  # noqa: E731
    assert strip(a) == strip(b)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="d_models and n_layers"):
        PromptingConfig(d_models=[16, 32], n_layers=[1])
    with pytest.raises(ValueError, match="speedrun"):
        PromptingConfig(speedrun=str(random.random()))


def test_icl_shots_read_like_the_worlds_qa_documents():
    """The ICL prompts must match few_shot_prompt (a blank line between pairs, no space after 答案：); a
    newline-only delimiter and "答案： x" are formats the models never read in pretraining."""
    from lmstack.data.world import few_shot_prompt
    from lmstack.eval.tasks import fewshot_context, solved_example
    from lmstack.eval.builtin import in_document_format
    from lmstack.experiments.prompting import icl_generation_spec

    raw = [{"prompt": "问题：甲是哪年出生的？\n答案：", "question": "甲是哪年出生的？", "answer": "1990", "lang": "zh"},
           {"prompt": "问题：乙住在哪里？\n答案：", "question": "乙住在哪里？", "answer": "北京", "lang": "zh"},
           {"prompt": "Question: Where does A live?\nAnswer:", "question": "Where does A live?", "answer": "Oslo",
            "lang": "en"},
           {"prompt": "Question: When was B born?\nAnswer:", "question": "When was B born?", "answer": "1962",
            "lang": "en"}]
    docs = in_document_format(raw)
    spec = icl_generation_spec(seed=0)
    assert fewshot_context(spec, docs[0], 0, docs, 1) == few_shot_prompt(raw[0], [raw[1]])
    assert fewshot_context(spec, docs[2], 2, docs, 1) == few_shot_prompt(raw[2], [raw[3]])
    assert solved_example(spec, docs[1]).endswith("答案：北京")
    mc = in_document_format([{**raw[1], "choices": ["北京", "上海"]}, {**raw[3], "choices": ["1962", "1970"]}])
    assert mc[0]["choices"] == ["北京", "上海"] and mc[1]["choices"] == [" 1962", " 1970"]


def test_template_verdict_uses_the_paired_gap():
    from lmstack.experiments.prompting import template_spread, template_verdict

    def row(name, items):
        return {"template": name, "exact": 0.0, "n": len(items), "mc_acc": sum(items) / len(items),
                "mc_items": [float(x) for x in items]}

    # the same 40 questions: template b gets 10 more right than a, and no question the other way
    a, b = [1] * 10 + [0] * 30, [1] * 20 + [0] * 20
    real = template_spread([row("a", a), row("b", b)])
    assert real["mc_range"] == 0.25 and (real["best"], real["worst"]) == ("b", "a")
    assert "exceeds 2 paired SEs for m/base" in template_verdict({"m/base": real})
    # two templates that each get 5 questions the other misses: a 0 gap, no dependence shown
    c = [1] * 5 + [0] * 5 + [1] * 10 + [0] * 20
    d = [0] * 5 + [1] * 5 + [1] * 10 + [0] * 20
    assert "for no model" in template_verdict({"m/base": template_spread([row("c", c), row("d", d)])})
