"""Tool-use traces for agent SFT, and the questions the agent is measured on.

Each trace is a real run of ``ReActAgent`` whose policy is a plan written from the question's structure
(``PlanPolicy``): the tool calls are real, so every observation in the data is what the tool returns.
The same plans give an upper bound for the agent (the tools and the loop with a perfect policy).
"""

from __future__ import annotations

import json
import random
from typing import Callable

from lmstack.apps.agent import OBSERVATION, ReActAgent, trim_turns, turn_context
from lmstack.apps.tools import ToolBox, calculate, map_strings

OPS = {"+": "plus", "-": "minus", "*": "times"}
ZH_OPS = {"+": "加", "-": "减", "*": "乘以"}


def arithmetic_questions(n: int, seed: int = 0, langs=("en", "zh")) -> list[dict]:
    """Mixed-operation problems with 2-4 digit operands: ``a op b`` or ``(a op b) op c``."""
    rng = random.Random(f"arith:{seed}")
    out = []
    for i in range(n):
        digits = lambda: rng.randint(10, 9999) if rng.random() < 0.5 else rng.randint(10, 999)  # noqa: E731
        a, b = digits(), digits()
        op1 = rng.choice("+-*")
        if op1 == "*":
            b = rng.randint(2, 99)
        expr = f"{a} {op1} {b}"
        if rng.random() < 0.5:
            op2 = rng.choice("+-*")
            c = rng.randint(2, 99) if op2 == "*" else digits()
            expr = f"({expr}) {op2} {c}"
        lang = langs[i % len(langs)]
        shown = expr.replace("*", "×")
        q = f"What is {shown}?" if lang == "en" else f"{shown}等于多少？"
        # the calculator reads × itself: the model copies the expression as the question shows it
        out.append({"question": q, "expression": shown, "answer": calculate(expr), "lang": lang, "kind": "arith"})
    return out


Plan = list  # of callables: last observation -> (thought, tool name, arguments) | ("final", thought, answer)


def spaced_strings(value):
    """``value`` with a space before every string (nested too): how ``PlanPolicy(spaced_args=True)`` writes tool
    arguments, so that a name or word copied from the question or an observation (where it follows a space) is
    the same BPE token in the call; the tools strip the space (``tools.strip_strings``)."""
    return map_strings(value, lambda s: " " + s)


class PlanPolicy:
    """Turns a plan into ReAct turns, reading the latest observation from the conversation. ``spaced_args``:
    write each string argument with a leading space (``spaced_strings``)."""

    def __init__(self, plan: Plan, spaced_args: bool = False):
        self.plan, self.spaced_args = plan, spaced_args

    def __call__(self, messages: list[dict]) -> str:
        steps_done = sum(1 for m in messages if m["role"] == "assistant")
        last = ""
        if messages and messages[-1]["role"] == "user" and messages[-1]["content"].startswith(OBSERVATION):
            last = messages[-1]["content"][len(OBSERVATION):].strip()
        step = self.plan[min(steps_done, len(self.plan) - 1)](last)
        if step[0] == "final":
            return f"Thought: {step[1]}\nFinal Answer: {step[2]}"
        thought, name, args = step
        # compact separators: fewer tokens in a small model's context, still plain JSON
        args = spaced_strings(args) if self.spaced_args else args
        call = json.dumps({"name": name, "arguments": args}, ensure_ascii=False, separators=(",", ":"))
        return f"Thought: {thought}\nAction: {call}"


def _final(thought: str = "I have the answer.") -> Callable:
    return lambda obs: ("final", thought, obs)


# how a multi-hop question names the person kg_find looks for, in the question's own words (worldqa.MULTIHOP)
DESCRIPTIONS = {"occ_hobby_country": {"en": "the {occ} who likes {hobby}", "zh": "喜欢{hobby}的{occ}"},
                "occ_city_year": {"en": "the {occ} from {city}", "zh": "来自{city}的{occ}"}}


# The hops of a birthplace chain. Each thought of such a plan names every hop still to go ("Find its
# country, then the capital."), so whether to stop at the country is decided by copying the last thought, a
# few tokens back, rather than by re-reading the question: with one-hop thoughts ("Find its country."),
# person_country and person_capital traces were the same up to the final step, and the agent answered the
# country to every capital question (0/15 on the default run).
HOPS = [("birthplace", "the birthplace"), ("country", "its country"), ("capital", "the capital")]


def _chain(hops: list[tuple[str, str]], start: str | None = None) -> Plan:
    """kg_lookup steps along ``hops`` (relation, how a thought names it), each thought naming the hops still
    to go. The first looks up ``start`` (a name from the question); without it, the last observation."""
    return [lambda obs, i=i, rel=rel: ("Find " + ", then ".join(h for _, h in hops[i:]) + ".", "kg_lookup",
                                       {"entity": start if i == 0 and start is not None else obs, "relation": rel})
            for i, (rel, _) in enumerate(hops)]


def plan_for(item: dict, kg=None, describe: bool = False) -> Plan:
    """The tool plan that answers an arithmetic, multi-hop or date question. ``describe``: kg_find's thought
    repeats the question's description of the person ("Find the nurse from Falneholm.") instead of "Find the
    person.", so the turn starts with a copy of the question's words that sets it apart from a name lookup."""
    kind = item["kind"]
    if kind == "arith":
        return [lambda _: ("Compute it with the calculator.", "calculator", {"expression": item["expression"]}),
                _final()]
    if kind == "date":
        return [lambda _: ("Check today's date.", "current_date", {}), _final()]
    lang = item["lang"]
    ids = {term for p in item["patterns"] for term in (p[0], p[2]) if not term.startswith("?")}
    name = {i: kg.name(i, lang) for i in ids}
    pat = [tuple(p) for p in item["patterns"]]
    if kind in ("occ_hobby_country", "occ_city_year"):
        conds = [{"relation": p[1], "value": name[p[2]]} for p in pat[:2]]
        fields = {"occ": name[pat[0][2]], ("hobby" if kind == "occ_hobby_country" else "city"): name[pat[1][2]]}
        thought = f"Find {DESCRIPTIONS[kind][lang].format(**fields)}." if describe else "Find the person."
        first = [lambda _: (thought, "kg_find", {"conditions": conds})]
        rest = (_chain(HOPS[:2]) if kind == "occ_hobby_country"
                else [lambda obs: ("Find the birth year.", "kg_lookup", {"entity": obs, "relation": "birth_year"})])
        return first + rest + [_final()]
    return _chain(HOPS[:3 if kind == "person_capital" else 2], start=name[pat[0][0]]) + [_final()]


def fact_plan(item: dict, kg) -> Plan:
    """One lookup for a one-hop fact question (``worldqa.fact_questions``)."""
    entity = kg.name(item["entity"], item["lang"])
    return [lambda _: ("Look it up.", "kg_lookup", {"entity": entity, "relation": item["relation"]}), _final()]


def search_plan(item: dict) -> Plan:
    """Search the documents with the question, then answer from the passages (the answer is known)."""
    return [lambda _: ("Search the documents.", "search", {"query": item["question"]}),
            lambda _: ("final", "The passages answer it.", item["answer"])]


def inference_views(messages: list[dict], size: Callable[[list[dict]], int], limit: int, reserve: int,
                    context_loss: bool = True) -> tuple[list[list[dict]], int]:
    """Split a ReAct trace into SFT conversations that show every assistant turn the context the agent will
    show the model at that step (``agent.turn_context``: the oldest turns go first once the prompt leaves less
    than ``reserve`` tokens of ``limit``). Turns that share a cut share one conversation, so a trace that fits
    stays whole. Returns (conversations, turns that fit in no context).

    A later conversation may also hold earlier turns (those after its cut) with less context than they had at
    inference. ``context_loss=False`` marks those ``"train": False`` (context without a loss), so each turn is
    taught once, at its own context. With ``True`` they are trained there too, which teaches a turn after the
    question that needs an observation the view has cut ("Find its country." of a city never looked up)."""
    ends: dict[int, int] = {}  # messages cut -> index of the last assistant turn shown with that cut
    cut_of: dict[int, int] = {}  # assistant message index -> the cut it is shown with at inference
    untrainable = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < 2:
            continue
        shown = trim_turns(messages[:i + 1], lambda x: size(x[:-1]) + reserve > limit or size(x) > limit)
        if turn_context(shown[:-1], size, limit, reserve) is None or size(shown) > limit:
            untrainable += 1
            continue
        cut_of[i] = i + 1 - len(shown)
        ends[cut_of[i]] = i
    views = []
    for cut, end in sorted(ends.items()):
        shown = messages[2 + cut:end + 1]
        if not context_loss:
            shown = [dict(m, train=False) if m["role"] == "assistant" and cut_of.get(2 + cut + j) != cut else m
                     for j, m in enumerate(shown)]
        views.append(messages[:2] + shown)
    return views, untrainable


def agent_sft_examples(items: list[dict], tools: ToolBox, kg=None, prompt_style: str = "minimal",
                       max_steps: int = 6, count_tokens: Callable[[list[dict]], int] | None = None,
                       max_tokens: int = 0, reserve: int = 0, stats: dict | None = None,
                       spaced_args: bool = False, describe: bool = False, context_loss: bool = True) -> list[dict]:
    """SFT conversations (system, question, then alternating assistant turns and observations) from running
    the plan of each item. Items whose plan does not reach the known answer are skipped.

    With ``count_tokens`` (prompt size, generation prompt included) and ``max_tokens`` (the model's context),
    each trace is cut as the agent cuts its context at inference, keeping ``reserve`` tokens (the agent's
    ``max_new_tokens``) free for the turn (``inference_views``); otherwise a trace longer than the context
    would lose its last steps to truncation. ``stats`` (optional) counts ``agent_traces``,
    ``agent_traces_split`` (more than one conversation), ``agent_traces_dropped`` (no turn fits) and
    ``agent_turns_dropped``. ``spaced_args``: string arguments written with a leading space (``PlanPolicy``);
    ``describe``: kg_find thoughts repeat the question's description (``plan_for``); ``context_loss``: see
    ``inference_views``."""
    out = []
    stats = {} if stats is None else stats
    for key in ("agent_traces", "agent_traces_split", "agent_traces_dropped", "agent_turns_dropped"):
        stats.setdefault(key, 0)
    for item in items:
        if item["kind"] == "fact_search":
            plan = search_plan(item)
        else:
            plan = fact_plan(item, kg) if item["kind"] == "fact" else plan_for(item, kg, describe)
        result = ReActAgent(PlanPolicy(plan, spaced_args), tools, max_steps=max_steps,
                            prompt_style=prompt_style).run(item["question"])
        if result.stop_reason != "final_answer" or (item.get("answer") is not None and result.answer != item["answer"]):
            continue
        meta = {"task": f"agent_{item['kind']}", "answer": item.get("answer"), "lang": item["lang"], "facts": []}
        messages = result.chat_messages()
        stats["agent_traces"] += 1
        if count_tokens is None or not max_tokens:
            out.append({"messages": messages, **meta})
            continue
        views, untrainable = inference_views(messages, count_tokens, max_tokens, reserve, context_loss)
        stats["agent_turns_dropped"] += untrainable
        stats["agent_traces_split"] += len(views) > 1
        stats["agent_traces_dropped"] += not views
        out += [{"messages": v, **meta, **({"trimmed": True} if v != messages[:len(v)] else {})} for v in views]
    return out
