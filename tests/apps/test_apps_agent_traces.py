"""Agent SFT traces written for a small BPE model: string arguments with a leading space, tools that strip it,
and the agent measure per question kind."""

import json

import pytest

from lmstack.apps.agent import ReActAgent, ScriptedPolicy
from lmstack.apps.agent_data import agent_sft_examples, arithmetic_questions, spaced_strings
from lmstack.apps.evaluate import agent_accuracy
from lmstack.apps.kg import kg_from_world
from lmstack.apps.tools import ToolBox, calculator_tool, kg_tools, strip_strings
from lmstack.apps.worldqa import multihop_questions
from lmstack.data.world import WorldConfig, build_world


@pytest.fixture(scope="module")
def kg():
    return kg_from_world(build_world(WorldConfig(n_people=10, n_sft_only_people=2, n_cities=4, n_countries=4,
                                                 n_sft_train=10, n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2,
                                                 n_stories=2, n_geo_docs=2, n_quiz_docs=2, n_arith_docs=2,
                                                 n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=2,
                                                 bios_per_person=1), seed=9))


def _actions(messages):
    return [json.loads(m["content"].split("Action: ", 1)[1]) for m in messages
            if m["role"] == "assistant" and "Action: " in m["content"]]


def test_strings_are_spaced_and_stripped_back_nested():
    args = {"conditions": [{"relation": "occupation", "value": "nurse"}], "k": 2, "flag": True}
    spaced = spaced_strings(args)
    assert spaced == {"conditions": [{"relation": " occupation", "value": " nurse"}], "k": 2, "flag": True}
    assert strip_strings(spaced) == args and strip_strings("  x \n") == "x"


def test_tools_accept_arguments_with_surrounding_spaces(kg):
    box = ToolBox([calculator_tool()] + kg_tools(kg))
    assert box.call("calculator", {"expression": " 12 × 3 "}).content == "36"
    q = next(q for q in multihop_questions(kg, ["en"]) if q["kind"] == "occ_hobby_country")
    occ, hob = (kg.name(p[2], "en") for p in q["patterns"][:2])
    plain = box.call("kg_find", {"conditions": [{"relation": "occupation", "value": occ},
                                                {"relation": "hobby", "value": hob}]})
    spaced = box.call("kg_find", spaced_strings({"conditions": [{"relation": "occupation", "value": occ},
                                                                {"relation": "hobby", "value": hob}]}))
    assert plain.ok and spaced.ok and spaced.content == plain.content
    assert box.call("kg_lookup", {"entity": " " + plain.content, "relation": " birthplace"}).ok
    # only surrounding whitespace goes: an enum value with an inner typo is still refused
    assert not box.call("kg_lookup", {"entity": plain.content, "relation": " birth place"}).ok


def test_spaced_traces_make_the_same_tool_runs(kg):
    tools = ToolBox([calculator_tool()] + kg_tools(kg))
    items = arithmetic_questions(4, seed=3) + multihop_questions(kg)[:8]
    plain = agent_sft_examples(items, tools, kg)
    spaced = agent_sft_examples(items, tools, kg, spaced_args=True)
    assert len(spaced) == len(plain) == len(items)
    for p, s in zip(plain, spaced):
        assert [m for m in p["messages"] if m["role"] != "assistant"] == \
               [m for m in s["messages"] if m["role"] != "assistant"]  # same observations: same tool results
        assert s["messages"][-1] == p["messages"][-1]  # the final answer is not spaced
        for a, b in zip(_actions(p["messages"]), _actions(s["messages"])):
            assert a["name"] == b["name"] and b["arguments"] == spaced_strings(a["arguments"])
            assert "\": \"" not in json.dumps(b, separators=(",", ":"))  # compact JSON, the space is in the string


def test_agent_accuracy_counts_each_kind():
    box = ToolBox([calculator_tool()])
    questions = [{"question": "What is 2 + 2?", "answer": "4", "kind": "arith"},
                 {"question": "What is 3 + 3?", "answer": "6", "kind": "arith"},
                 {"question": "Where?", "answer": "Paris", "kind": "place"}]
    make = lambda q: ReActAgent(ScriptedPolicy(["Thought: t\nFinal Answer: 4"]), box, 2)  # noqa: E731
    out = agent_accuracy(make, questions, progress=False)
    assert out["by_kind"] == {"arith": (1, 2), "place": (0, 1)}
    assert out["accuracy"] == pytest.approx(1 / 3)


def test_described_find_thought_repeats_the_question_words(kg):
    tools = ToolBox(kg_tools(kg))
    items = [q for q in multihop_questions(kg) if q["kind"] in ("occ_hobby_country", "occ_city_year")]
    assert {q["lang"] for q in items} == {"en", "zh"}
    plain = agent_sft_examples(items, tools, kg)
    described = agent_sft_examples(items, tools, kg, describe=True)
    for q, p, d in zip(items, plain, described):
        first = d["messages"][2]["content"]
        thought = first.split("\n")[0].removeprefix("Thought: Find ").removesuffix(".")
        assert thought in q["question"] and len(thought) > 4  # a span of the question, e.g. "the nurse from X"
        assert p["messages"][2]["content"].startswith("Thought: Find the person.")
        assert _actions(p["messages"]) == _actions(d["messages"])  # same calls, same answer
        assert d["messages"][-1] == p["messages"][-1]
