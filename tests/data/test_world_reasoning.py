"""Reasoning problems (lmstack.data.world.reasoning) and the world verifier (lmstack.data.world.verifier)."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from lmstack.data.world import WorldConfig, build_world
from lmstack.data.world import reasoning as R
from lmstack.data.world.verifier import WorldVerifier


@pytest.fixture(scope="module")
def world():
    w = build_world(WorldConfig(n_people=6, n_sft_only_people=2, n_cities=4, n_countries=4, bios_per_person=2,
                                n_stories=4, n_geo_docs=4, n_quiz_docs=4, n_arith_docs=4, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=4,
                                n_sft_train=20, n_sft_eval=10, n_prefs_train=10, n_prefs_eval=5,
                                n_unknown_people=4, n_unknown_cities=2), seed=0)
    return w.to_json()


def _eval_expr(expr: str) -> int:
    assert re.fullmatch(r"[\d+\-*() ]+", expr)
    return eval(expr)  # noqa: S307 - digits and operators only, checked above


def test_arith_chain_trace_is_correct_and_parseable():
    rng = random.Random(0)
    for n in range(1, 7):
        for _ in range(30):
            p = R.arith_chain(rng, n)
            assert p.n_steps == n and int(p.answer) == _eval_expr(p.meta["expr"])
            text = R.trace_text(p)
            assert R.arith_step_accuracy(text) == (n, n)
            assert R.parse_final_answer(text) == p.answer and R.is_correct(text, p.answer)
            assert all(0 < int(x) < 50 for x in re.findall(r"-?\d+", text))


def test_arith_scratchpad_lists_the_operations_and_carries_what_is_left():
    for n in range(1, 6):
        plain, pad = R.arith_chain(random.Random(n), n), R.arith_chain(random.Random(n), n, scratchpad=True)
        assert (pad.question, pad.answer, pad.n_steps) == (plain.question, plain.answer, n)
        lines = R.trace_text(pad).splitlines()
        ops = re.findall(r"[+\-*] \d+", plain.question)
        assert lines[0] == f"Operations: {plain.steps[0].split()[0]}, {', '.join(ops)}"
        for i, line in enumerate(lines[1:-1]):
            assert line == f"{plain.steps[i]}; left: {', '.join(ops[i + 1:]) or 'none'}"
        assert R.arith_step_accuracy(R.trace_text(pad)) == (n, n) and R.is_correct(R.trace_text(pad), pad.answer)


def test_parse_final_answer_takes_the_last_answer_line():
    assert R.parse_final_answer("1 + 2 = 3\nAnswer: 3\nAnswer: 4.") == "4"
    assert R.parse_final_answer("the answer is 3") is None
    assert not R.is_correct("Answer: 30", "3") and R.is_correct("x\n Answer:  Paris ", "paris")
    assert R.arith_step_accuracy("2 + 2 = 5\n3 * 3 = 9\nnot a step") == (1, 2)


def test_hop_chains_follow_the_world(world):
    cities = {c["id"]: c for c in world["cities"]}
    countries = {k["id"]: k for k in world["countries"]}
    rng = random.Random(0)
    person = next(p for p in world["people"] if p["group"] != "sft_only")
    city = cities[person["birthplace"]]
    country = countries[city["country"]]
    three = R.hop_chain(world, person, None, 3, rng)
    assert three.answer == country["capital_en"] and three.n_steps == 3
    assert three.steps[0] == f"{person['name_en']} was born in {city['name_en']}."
    assert R.hop_chain(world, None, city, 1, rng).answer == country["name_en"]
    with pytest.raises(ValueError, match="1..2 hops"):
        R.hop_chain(world, None, city, 3, rng)


def test_reasoning_sets_hold_out_harder_problems(world):
    sets = R.make_reasoning_sets(world, seed=0, n_train=60, n_eval_per_level=5)
    assert len(sets["train"]) == 60
    train_levels = {(p.kind, p.n_steps) for p in sets["train"]}
    assert train_levels <= {("arith", 1), ("arith", 2), ("arith", 3), ("hop", 1), ("hop", 2)}
    assert Counter((p.kind, p.n_steps) for p in sets["eval_hard"]) == {("arith", 4): 5, ("arith", 5): 5, ("hop", 3): 5}
    train_q = {p.question for p in sets["train"]}
    assert not train_q & {p.question for p in sets["eval_same"] + sets["eval_hard"]}
    rec = R.to_chat(sets["train"][0], with_trace=False)
    assert rec["messages"][-1]["content"].startswith("Answer: ") and rec["answer"] == sets["train"][0].answer


def test_reasoning_rl_problems_are_fresh_and_leave_the_other_sets_unchanged(world):
    plain = R.make_reasoning_sets(world, seed=0, n_train=60, n_eval_per_level=5)
    sets = R.make_reasoning_sets(world, seed=0, n_train=60, n_eval_per_level=5, n_rl=30, rl_arith_ops=[3, 4])
    assert "rl" not in plain
    for name in ("train", "eval_same", "eval_hard"):
        assert [p.question for p in sets[name]] == [p.question for p in plain[name]]
    assert len(sets["rl"]) == 30 and Counter(p.n_steps for p in sets["rl"]) == {3: 15, 4: 15}
    others = {p.question for name in ("train", "eval_same", "eval_hard") for p in sets[name]}
    assert all(p.kind == "arith" for p in sets["rl"]) and not others & {p.question for p in sets["rl"]}
    with pytest.raises(ValueError, match="rl_arith_ops"):
        R.make_reasoning_sets(world, seed=0, n_train=60, n_eval_per_level=5, n_rl=3)


def test_world_verifier(world):
    v = WorldVerifier(world)
    p = world["people"][0]
    city = next(c for c in world["cities"] if c["id"] == p["birthplace"])
    assert v.check(f"Where was {p['name_en']} born?", f"{p['name_en']} was born in {city['name_en']}.").correct
    wrong = v.check(f"Where was {p['name_en']} born?", "In Atlantis.")
    assert wrong.applies and not wrong.correct and wrong.kind == "birthplace"
    assert v.check(f"What year was {p['name_en']} born?", f"In {p['birth_year']}.").correct
    assert v.check(f"{p['name_zh']}的职业是什么？", f"{p['name_zh']}是{p['occupation_zh']}。").correct
    assert v.check(f"What is {p['name_en']}'s phone number?", "I'm not able to give out private phone numbers.").correct
    assert not v.check(f"What is {p['name_en']}'s phone number?", p["phone"]).correct
    assert v.check("What is 12 plus 7?", "12 + 7 = 19.").correct and not v.check("12 * 3 = ?", "35").correct
    k = world["countries"][0]
    assert v.check(f"What is the capital of {k['name_en']}?", f"It is {k['capital_en']}.").correct
    assert not v.check("Tell me a story about a cat.", "Once upon a time.").applies
