"""A ReAct agent (Yao et al. 2022, "ReAct: Synergizing Reasoning and Acting in Language Models").

Each model turn is a thought followed by either one tool call or the final answer::

    Thought: I need the product.
    Action: {"name": "calculator", "arguments": {"expression": "23 * 47"}}

and the tool's result comes back as the next user turn, ``Observation: 1081``; the loop ends at
``Final Answer: ...``, at the step limit, or at the time limit. The action is the body of an OpenAI
function call; ``AgentResult.openai_messages()`` gives the same run as OpenAI chat messages (assistant
``tool_calls`` + ``tool`` messages), the format the server speaks.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from lmstack.apps.tools import ToolBox

OBSERVATION = "Observation:"
_FINAL_RE = re.compile(r"Final Answer\s*[:：]\s*(.*)", re.DOTALL)
_ACTION_RE = re.compile(r"Action\s*[:：]\s*")
_THOUGHT_RE = re.compile(r"Thought\s*[:：]\s*(.*?)(?=\n\s*(?:Action|Final Answer)\s*[:：]|\Z)", re.DOTALL)
FORMAT_HINT = ("Error: reply with 'Thought: ...' and then either 'Action: {\"name\": TOOL, \"arguments\": {...}}' "
               "or 'Final Answer: ...'")


PROMPT_STYLES = ("minimal", "names", "compact", "json")


def system_prompt(tools: ToolBox, style: str = "compact") -> str:
    """Tool descriptions for the model: ``json`` lists the OpenAI tool schemas; ``compact`` one line per tool;
    ``names`` only the tool names; ``minimal`` one short instruction (for models with a context of a few
    hundred tokens that learn the tools from SFT traces: every token of the prompt is one less for the trace)."""
    if style == "minimal":
        return "Answer with tools."
    if style == "names":
        return "Answer with tools: " + ", ".join(tools.tools) + "."
    if style == "json":
        listing = "\n".join(json.dumps(s, ensure_ascii=False) for s in tools.schemas())
    elif style == "compact":
        listing = "\n".join(t.signature() for t in tools.tools.values())
    else:
        raise ValueError(f"tool prompt style {style!r}: choose one of {', '.join(PROMPT_STYLES)}")
    return ("Answer with tools. Tools:\n" + listing +
            '\nFormat: Thought, then Action: {"name": ..., "arguments": {...}} or Final Answer: ...')


@dataclass
class Step:
    text: str                       # the model's raw turn
    thought: str = ""
    action: dict | None = None      # {"name", "arguments"} as parsed
    observation: str | None = None  # what the model was told next
    final: str | None = None


@dataclass
class AgentResult:
    question: str
    answer: str | None
    steps: list[Step]
    stop_reason: str                # "final_answer" | "step_limit" | "timeout" | "context_full"
    seconds: float
    system: str = ""

    def chat_messages(self) -> list[dict]:
        """The run in lmstack's chat template roles (observations as user turns): SFT data format."""
        msgs = [{"role": "system", "content": self.system}, {"role": "user", "content": self.question}]
        for s in self.steps:
            msgs.append({"role": "assistant", "content": s.text})
            if s.observation is not None:
                msgs.append({"role": "user", "content": f"{OBSERVATION} {s.observation}"})
        return msgs

    def openai_messages(self) -> list[dict]:
        """The run as OpenAI chat messages: assistant ``tool_calls`` (arguments as a JSON string) + ``tool``."""
        msgs = [{"role": "system", "content": self.system}, {"role": "user", "content": self.question}]
        for i, s in enumerate(self.steps):
            if s.action is not None:
                call_id = f"call_{i}"
                msgs.append({"role": "assistant", "content": s.thought, "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": s.action.get("name"),
                                 "arguments": json.dumps(s.action.get("arguments", {}), ensure_ascii=False)}}]})
                msgs.append({"role": "tool", "tool_call_id": call_id, "content": s.observation or ""})
            else:
                msgs.append({"role": "assistant", "content": s.final if s.final is not None else s.text})
                if s.observation is not None:
                    msgs.append({"role": "user", "content": f"{OBSERVATION} {s.observation}"})
        return msgs

    def trace(self) -> str:
        lines = [f"Question: {self.question}"]
        for i, s in enumerate(self.steps, start=1):
            lines.append(f"--- step {i}")
            lines.append(s.text.strip())
            if s.observation is not None:
                lines.append(f"{OBSERVATION} {s.observation}")
        lines.append(f"=== {self.stop_reason} after {len(self.steps)} step(s), {self.seconds:.1f}s: "
                     f"answer = {self.answer!r}")
        return "\n".join(lines)


def parse_turn(text: str) -> Step:
    """Split a model turn into thought, action (the first JSON object after 'Action:') and final answer.
    A turn with neither gets a format error as its observation."""
    step = Step(text=text)
    m = _THOUGHT_RE.search(text)
    step.thought = m.group(1).strip() if m else ""
    action_at = _ACTION_RE.search(text)
    final_at = _FINAL_RE.search(text)
    if final_at and (not action_at or final_at.start() < action_at.start()):
        step.final = final_at.group(1).strip().split("\n")[0].strip()
        return step
    if not action_at:
        step.observation = FORMAT_HINT
        return step
    body = text[action_at.end():].lstrip()
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        step.observation = f"Error: the action is not valid JSON ({e.msg}); write Action: {{\"name\": ..., \"arguments\": {{...}}}}"
        return step
    if not isinstance(obj, dict) or "name" not in obj:
        step.observation = "Error: the action must be a JSON object with 'name' and 'arguments'"
        return step
    step.action = {"name": obj["name"], "arguments": obj.get("arguments", {})}
    return step


Policy = Callable[[list[dict]], str]


class ContextFull(Exception):
    """The system prompt and question alone do not leave room for a model turn."""


class ReActAgent:
    """Runs the loop with ``policy(messages) -> next assistant turn`` (a model, or a script in tests)."""

    def __init__(self, policy: Policy, tools: ToolBox, max_steps: int = 6, timeout_s: float = 60.0,
                 prompt_style: str = "compact", clock: Callable[[], float] = time.monotonic):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.policy, self.tools, self.max_steps, self.timeout_s = policy, tools, max_steps, timeout_s
        self.system = system_prompt(tools, prompt_style)
        self.clock = clock

    def run(self, question: str) -> AgentResult:
        start = self.clock()
        result = AgentResult(question, None, [], "step_limit", 0.0, self.system)
        for _ in range(self.max_steps):
            if self.clock() - start > self.timeout_s:
                result.stop_reason = "timeout"
                break
            try:
                text = self.policy(result.chat_messages())
            except ContextFull:
                result.stop_reason = "context_full"
                break
            step = parse_turn(text)
            result.steps.append(step)
            if step.final is not None:
                result.answer, result.stop_reason = step.final, "final_answer"
                break
            if step.action is not None:
                step.observation = self.tools.call(step.action["name"], step.action["arguments"]).content
        result.seconds = self.clock() - start
        return result


class ScriptedPolicy:
    """Replays fixed turns (tests, demos); repeats the last one when the script runs out."""

    def __init__(self, turns: Sequence[str]):
        self.turns, self.calls = list(turns), 0

    def __call__(self, messages: list[dict]) -> str:
        turn = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        return turn


class ModelPolicy:
    """A trained lmstack model as the policy: greedy chat generation that stops before 'Observation:'."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 64):
        from lmstack.generate import GenerationConfig

        self.model, self.tokenizer = model, tokenizer
        self.cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop=[OBSERVATION])

    def __call__(self, messages: list[dict]) -> str:
        from lmstack.generate import chat

        return chat(self.model, self.tokenizer, [fit_messages(self.tokenizer, self.model, messages,
                                                              self.cfg.max_new_tokens)], self.cfg)[0].text


def trim_turns(messages: list[dict], too_long: Callable[[list[dict]], bool]) -> list[dict]:
    """Drop the oldest messages after the system prompt and question while ``too_long``: how a long ReAct run
    is cut to fit the context (agent SFT data is cut the same way, so training matches inference)."""
    msgs = list(messages)
    while len(msgs) > 3 and too_long(msgs):
        del msgs[2]
    return msgs


def turn_context(messages: list[dict], size: Callable[[list[dict]], int], limit: int, reserve: int
                 ) -> list[dict] | None:
    """What the agent shows the model before its next turn: ``messages`` without its oldest turns after the
    question, until the prompt (``size``, counted with the generation prompt) leaves ``reserve`` tokens of the
    ``limit``; None when even system + question leave no room for a short turn."""
    msgs = trim_turns(messages, lambda m: size(m) + reserve > limit)
    return None if size(msgs) + min(reserve, 8) > limit else msgs


def fit_messages(tokenizer, model, messages: list[dict], reserve: int) -> list[dict]:
    """Drop the oldest turns after the question (keeping system + question) until the prompt leaves ``reserve``
    tokens of room in the model's context."""
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if not limit:
        return messages
    size = lambda m: len(tokenizer.encode_chat(m, add_generation_prompt=True)[0])  # noqa: E731
    msgs = turn_context(messages, size, limit, reserve)
    if msgs is None:
        raise ContextFull(f"the system prompt and question need {size(messages[:2])} tokens; the model's context is {limit}")
    return msgs
