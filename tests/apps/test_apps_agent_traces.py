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


def test_each_turn_is_trained_once_at_its_own_context(kg):
    """context_loss=False: a view's earlier turns are context without a loss, so no turn is taught after the
    question when the observation it needs was cut (the agent never sees that at inference)."""
    from lmstack.align.data import normalize_chat_record, tokenize_chat
    from lmstack.apps.agent import turn_context
    from test_generate_common import small_tokenizer

    tok = small_tokenizer()
    size = lambda m: len(tok.encode_chat(m, add_generation_prompt=True)[0])  # noqa: E731
    tools = ToolBox(kg_tools(kg))
    items = [q for q in multihop_questions(kg) if q["kind"] in ("occ_hobby_country", "person_capital")][:6]
    full = [d["messages"] for d in agent_sft_examples(items, tools, kg)]
    limit, reserve = max(size(m) for m in full) - 40, 24  # every trace needs cutting
    split = agent_sft_examples(items, tools, kg, count_tokens=size, max_tokens=limit, reserve=reserve,
                               context_loss=False)
    old = agent_sft_examples(items, tools, kg, count_tokens=size, max_tokens=limit, reserve=reserve)
    assert len(split) == len(old) > len(items)
    trained = []
    for d in split:
        msgs = normalize_chat_record(d, "view").messages  # the SFT loader keeps the flag
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and m.get("train", True):
                # a trained turn sees exactly what the agent shows at that step
                assert turn_context(msgs[:i], size, limit, reserve) == msgs[:i]
                trained.append(m["content"])
        labels = tokenize_chat(tok, msgs, 10 ** 6).labels
        assert tok.decode([t for t in labels if t >= 0]).count("Thought:") == sum(
            m["role"] == "assistant" and m.get("train", True) for m in msgs)
    every = [m["content"] for msgs in full for m in msgs if m["role"] == "assistant"]
    assert sorted(trained) == sorted(every)  # each turn of each trace exactly once
    assert sum(m.get("train") is False for d in split for m in d["messages"]) > 0
    assert all("train" not in m for d in old for m in d["messages"])


def test_chat_messages_can_be_context_without_loss():
    from lmstack.align.data import DatasetError, normalize_chat_record
    from test_generate_common import small_tokenizer

    tok = small_tokenizer()
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "first", "train": False},
            {"role": "user", "content": "o"}, {"role": "assistant", "content": "second"}]
    ids, mask = tok.encode_chat(msgs)
    assert tok.decode([i for i, k in zip(ids, mask) if k]).startswith("second")
    ids_all, mask_all = tok.encode_chat([{k: v for k, v in m.items() if k != "train"} for m in msgs])
    assert ids_all == ids and sum(mask_all) > sum(mask)
    assert normalize_chat_record({"messages": msgs}, "x").messages[1]["train"] is False
    with pytest.raises(DatasetError, match="train must be true or false"):
        normalize_chat_record({"messages": [{"role": "assistant", "content": "a", "train": "no"}]}, "x")


def test_birthplace_chain_thoughts_name_the_hops_still_to_go(kg):
    """A capital question and a country question about the same person differ from the first thought on, so
    the turn after the country is found need not look back at the question to know whether to stop."""
    tools = ToolBox(kg_tools(kg))
    by_kind = {}
    for q in multihop_questions(kg):
        if q["kind"] in ("person_capital", "person_country") and q["lang"] == "en":
            by_kind.setdefault(q["kind"], q)
    thoughts = {k: [m["content"].split("\n")[0] for m in agent_sft_examples([q], tools, kg)[0]["messages"]
                    if m["role"] == "assistant"] for k, q in by_kind.items()}
    assert thoughts["person_capital"][:3] == ["Thought: Find the birthplace, then its country, then the capital.",
                                              "Thought: Find its country, then the capital.",
                                              "Thought: Find the capital."]
    assert thoughts["person_country"][:2] == ["Thought: Find the birthplace, then its country.",
                                              "Thought: Find its country."]
    assert len(thoughts["person_capital"]) == 4 and len(thoughts["person_country"]) == 3  # then the answer
