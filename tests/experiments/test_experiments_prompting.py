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
