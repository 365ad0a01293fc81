"""Tools (calculator safety, schema validation vs jsonschema) and the ReAct loop with a scripted model."""

import datetime as dt
import json

import pytest

from lmstack.apps.agent import FORMAT_HINT, ReActAgent, ScriptedPolicy, parse_turn, system_prompt
from lmstack.apps.kg import kg_from_world
from lmstack.apps.tools import (Tool, ToolBox, ToolError, calculate, calculator_tool, date_tool, kg_tools,
                                validate_arguments)
from lmstack.apps.worldqa import multihop_questions
from lmstack.data.world import WorldConfig, build_world


@pytest.fixture(scope="module")
def kg():
    return kg_from_world(build_world(WorldConfig(n_people=12, n_sft_only_people=2, n_cities=5, n_countries=5,
                                                 n_sft_train=10, n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2,
                                                 n_stories=2, n_geo_docs=2, n_quiz_docs=2, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0,
                                                 n_parallel_docs=2, bios_per_person=1), seed=5))


# ------------------------------------------------------------------ calculator

@pytest.mark.parametrize("expr,value", [("23 + 45", "68"), ("(12 - 30) * 4", "-72"), ("7 / 2", "3.5"),
                                        ("8 / 4", "2"), ("2 ** 10", "1024"), ("2^3", "8"), ("17 % 5", "2"),
                                        ("1,234 × 2", "2468"), ("-(3 - 5)", "2"), ("9 // 2 =", "4")])
def test_calculator_arithmetic(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr,why", [("__import__('os')", "function calls"),
                                      ("__import__('os').system('true')", "function calls"),
                                      ("os", "names"), ("(1).__class__", "attribute access"),
                                      ("[1][0]", "indexing"), ("'a' * 3", "not Constant"),
                                      ("lambda: 1", "not Lambda"), ("1 / 0", "division by zero"),
                                      ("9 ** 99999", "too large"), ("10.0 ** 60", "out of range"),
                                      ("1 +", "cannot parse"), ("True + 1", "not Constant")])
def test_calculator_rejects_everything_but_arithmetic(expr, why):
    with pytest.raises(ToolError, match=why):
        calculate(expr)


def test_calculator_tool_reports_errors_to_the_model():
    box = ToolBox([calculator_tool()])
    assert box.call("calculator", {"expression": "6*7"}).content == "42"
    bad = box.call("calculator", {"expression": "__import__('os')"})
    assert not bad.ok and bad.content.startswith("Error:") and "function calls" in bad.content
    assert "unknown tool 'shell'" in box.call("shell", {}).content


# ------------------------------------------------------------------ schema validation

def _cases(kg):
    tools = [calculator_tool(), date_tool()] + kg_tools(kg)
    schemas = {t.name: t.parameters for t in tools}
    return schemas, [
        ("calculator", {"expression": "1+1"}), ("calculator", {}), ("calculator", {"expression": 5}),
        ("calculator", {"expression": ""}), ("calculator", {"expression": "1", "x": 1}),
        ("current_date", {}), ("current_date", {"tz": "UTC"}),
        ("kg_lookup", {"entity": "Paris", "relation": "capital"}), ("kg_lookup", {"entity": "P", "relation": "likes"}),
        ("kg_find", {"conditions": [{"relation": "hobby", "value": "swimming"}]}),
        ("kg_find", {"conditions": []}), ("kg_find", {"conditions": [{"relation": "hobby"}]}),
        ("kg_find", {"conditions": "hobby"}), ("kg_find", {"conditions": [{"relation": "hobby", "value": 3}] * 5}),
    ]


def test_our_validator_agrees_with_jsonschema(kg):
    jsonschema = pytest.importorskip("jsonschema")
    schemas, cases = _cases(kg)
    for name, args in cases:
        jsonschema.validators.validator_for(schemas[name]).check_schema(schemas[name])
        peer_ok = jsonschema.Draft202012Validator(schemas[name]).is_valid(args)
        ours = validate_arguments(schemas[name], args)
        assert (not ours) == peer_ok, (name, args, ours)


def test_validation_errors_are_readable():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}, "s": {"enum": ["a", "b"]}},
              "required": ["n"], "additionalProperties": False}
    errs = validate_arguments(schema, {"n": 0, "s": "c", "z": 1})
    assert "arguments.n: 0 is below the minimum 1" in errs
    assert any("arguments.s" in e and "not one of" in e for e in errs)
    assert any("unknown field 'z'" in e for e in errs)
    assert validate_arguments(schema, {}) == ["arguments: missing required field 'n'"]
    assert validate_arguments(schema, {"n": True})[0].startswith("arguments.n: expected integer")


def test_openai_tool_format_and_json_string_arguments():
    box = ToolBox([calculator_tool()])
    spec = box.schemas()[0]
    assert spec["type"] == "function" and spec["function"]["name"] == "calculator"
    assert spec["function"]["parameters"]["required"] == ["expression"]
    assert box.call("calculator", '{"expression": "2+2"}').content == "4"
    assert "not valid JSON" in box.call("calculator", '{"expression": ').content


def test_kg_tools_answer_lookups_and_conjunctions(kg):
    box = ToolBox(kg_tools(kg))
    q = next(q for q in multihop_questions(kg, ["en"]) if q["kind"] == "occ_hobby_country")
    occ, hob = (kg.name(p[2], "en") for p in q["patterns"][:2])
    person = box.call("kg_find", {"conditions": [{"relation": "occupation", "value": occ},
                                                 {"relation": "hobby", "value": hob}]}).content
    city = box.call("kg_lookup", {"entity": person, "relation": "birthplace"}).content
    assert box.call("kg_lookup", {"entity": city, "relation": "country"}).content == q["answer"]
    assert "no entity named" in box.call("kg_lookup", {"entity": "Nobody", "relation": "hobby"}).content
    zh = kg.name(kg.entities_of_type("person")[0], "zh")
    assert all("\u4e00" <= ch <= "\u9fff" for ch in box.call("kg_lookup", {"entity": zh, "relation": "occupation"}).content)


def test_date_tool_uses_the_clock():
    assert date_tool(lambda: dt.date(2024, 2, 29)).fn() == "2024-02-29 (Thursday)"


# ------------------------------------------------------------------ ReAct loop

def test_parse_turn_forms():
    s = parse_turn('Thought: add them\nAction: {"name": "calculator", "arguments": {"expression": "1+2"}} trailing')
    assert s.thought == "add them" and s.action == {"name": "calculator", "arguments": {"expression": "1+2"}}
    assert parse_turn("Thought: done\nFinal Answer: 3\nmore").final == "3"
    assert parse_turn("I think it is 3").observation == FORMAT_HINT
    assert "not valid JSON" in parse_turn("Action: {name: calculator}").observation


def test_agent_solves_with_tools_and_records_openai_messages():
    policy = ScriptedPolicy(['Thought: multiply\nAction: {"name": "calculator", "arguments": {"expression": "23*47"}}',
                             "Thought: I have it\nFinal Answer: 1081"])
    agent = ReActAgent(policy, ToolBox([calculator_tool()]), max_steps=5)
    result = agent.run("What is 23 times 47?")
    assert result.answer == "1081" and result.stop_reason == "final_answer" and len(result.steps) == 2
    assert result.steps[0].observation == "1081"
    msgs = result.chat_messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[3]["content"] == "Observation: 1081"
    oa = result.openai_messages()
    call = oa[2]["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == {"expression": "23*47"}
    assert oa[3] == {"role": "tool", "tool_call_id": call["id"], "content": "1081"}
    assert "step 2" in result.trace()


def test_agent_stops_at_step_limit_and_feeds_back_errors():
    looping = ScriptedPolicy(['Thought: again\nAction: {"name": "calculator", "arguments": {"expr": "1"}}'])
    result = ReActAgent(looping, ToolBox([calculator_tool()]), max_steps=4).run("loop forever")
    assert result.stop_reason == "step_limit" and result.answer is None
    assert len(result.steps) == 4 and looping.calls == 4
    assert "missing required field 'expression'" in result.steps[0].observation
    assert "unknown field 'expr'" in result.steps[0].observation


def test_agent_stops_at_timeout():
    ticks = iter(range(0, 1000, 10))
    policy = ScriptedPolicy(["Thought: hmm"])
    result = ReActAgent(policy, ToolBox([calculator_tool()]), max_steps=50, timeout_s=25,
                        clock=lambda: next(ticks)).run("slow")
    assert result.stop_reason == "timeout" and len(result.steps) < 50


def test_system_prompt_styles():
    box = ToolBox([calculator_tool(), date_tool()])
    assert "calculator(expression)" in system_prompt(box, "compact")
    assert '"type": "function"' in system_prompt(box, "json")
    assert len(system_prompt(box, "minimal")) < len(system_prompt(box, "names")) < len(system_prompt(box, "compact"))
    with pytest.raises(ValueError):
        system_prompt(box, "xml")
    with pytest.raises(ValueError):
        ReActAgent(ScriptedPolicy(["x"]), box, max_steps=0)


def test_tool_exceptions_other_than_tool_errors_propagate():
    def broken():
        raise RuntimeError("bug")
    box = ToolBox([Tool("broken", "always fails", {"type": "object"}, broken)])
    with pytest.raises(RuntimeError):  # a bug in a tool is not the model's fault: surface it
        box.call("broken", {})
