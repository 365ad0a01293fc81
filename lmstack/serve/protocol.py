"""The OpenAI wire format: request validation, sampling settings, tool calls and error objects.

Requests are parsed by hand rather than by a schema library so every problem becomes an OpenAI-style
error object (``{"error": {"message", "type", "param", "code"}}``) with a 4xx status that names the
offending field, and never a 500.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

from lmstack.generate import GenerationConfig


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


MIN_TEMPERATURE = 1e-4


@dataclass
class Limits:
    max_request_bytes: int = 1 << 20
    max_tokens: int = 1024  # largest max_tokens a request may ask for
    max_n: int = 8
    max_concurrent: int = 64  # requests in flight; more get 429
    max_stop: int = 4
    max_top_logprobs: int = 20


@dataclass
class ParsedRequest:
    """Everything the server needs from a /v1/chat/completions or /v1/completions body."""
    kind: str  # "chat" | "completion"
    prompts: list  # chat: one message list; completion: one or more prompts (str or token ids)
    cfg: GenerationConfig
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    tools: list[dict] = field(default_factory=list)
    tool_choice: Any = "auto"
    echo: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    rag: Optional[bool] = None  # lmstack extra: answer from the server's --rag index (None: the server's default)
    citations: Optional[list] = None  # set when the prompt was built from retrieved passages


def _number(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)  # 3.0 is how some clients spell 3
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name,
                       "invalid_type")
    if not (lo <= value <= hi) or (isinstance(value, float) and math.isnan(value)):
        raise APIError(400, f"'{name}' must be between {lo} and {hi}, got {value}", name, "invalid_value")
    return value


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false, got {value!r}", name, "invalid_type")
    return value


def _stop(body: dict, limits: Limits) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of non-empty strings", "stop", "invalid_type")
    if len(stop) > limits.max_stop:
        raise APIError(400, f"'stop' may hold at most {limits.max_stop} strings, got {len(stop)}", "stop",
                       "invalid_value")
    return stop


def _logit_bias(body: dict) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict) or len(bias) > 300:
        raise APIError(400, "'logit_bias' must map at most 300 token ids to numbers", "logit_bias", "invalid_value")
    out = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise APIError(400, f"logit_bias key {key!r} is not a token id", "logit_bias", "invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias[{key}] must be a number between -100 and 100", "logit_bias",
                           "invalid_value")
        out[int(key)] = float(value)
    return out


def _unsupported(body: dict) -> None:
    """Refuse, rather than silently ignore, OpenAI fields this server does not implement."""
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise APIError(400, "'response_format' other than {'type': 'text'} is not supported by this server",
                       "response_format", "unsupported_parameter")
    for name, hint in (("functions", "; use 'tools'"), ("function_call", "; use 'tool_choice'"), ("suffix", "")):
        if body.get(name) is not None:
            raise APIError(400, f"'{name}' is not supported by this server{hint}", name, "unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise APIError(400, "'best_of' is not supported by this server; use n", "best_of", "unsupported_parameter")


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.content[{i}]: only text parts are supported", f"{where}.content",
                               "invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"{where}.content must be a string or a list of text parts", f"{where}.content",
                   "invalid_type")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages",
                       "invalid_value")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object", where, "invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise APIError(400, f"{where}.role must be system, user, assistant or tool, got {role!r}",
                           f"{where}.role", "invalid_value")
        text = _content_text(m.get("content"), where)
        if role == "assistant" and m.get("tool_calls"):
            text += "".join(render_tool_call(c, where) for c in m["tool_calls"])
        if role == "tool":
            role, text = "user", f"<tool_response>{text}</tool_response>"
        out.append({"role": role, "content": text})
    return out


def _tools(body: dict) -> tuple[list[dict], Any]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise APIError(400, "'tools' must be a list", "tools", "invalid_type")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}",
                           f"tools[{i}]", "invalid_value")
    choice = body.get("tool_choice", "auto" if tools else "none")
    names = {t["function"]["name"] for t in tools}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or name not in names:
            raise APIError(400, f"tool_choice names function {name!r}, which is not in 'tools'", "tool_choice",
                           "invalid_value")
    elif choice not in ("auto", "none", "required"):
        raise APIError(400, "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', ...}",
                       "tool_choice", "invalid_value")
    if choice == "required" and not tools:
        raise APIError(400, "tool_choice 'required' needs 'tools'", "tool_choice", "invalid_value")
    return tools, choice


def _completion_prompts(body: dict) -> list:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                   "prompt", "invalid_value")


def parse_request(body: Any, kind: str, model_names: set[str], limits: Limits) -> ParsedRequest:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "'model' is required (GET /v1/models lists the served model)", "model", "invalid_value")
    if model not in model_names:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {sorted(model_names)}",
                       "model", "model_not_found")
    if kind == "chat":
        prompts: list = [_messages(body)]
        tools, tool_choice = _tools(body)
        logprobs = _bool(body, "logprobs", False)
        top = _number(body, "top_logprobs", 0, 0, limits.max_top_logprobs, integer=True)
        if top and not logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        prompts = _completion_prompts(body)
        tools, tool_choice = [], "none"
        top = _number(body, "logprobs", None, 0, min(5, limits.max_top_logprobs), integer=True)
        logprobs = top is not None
        top = top or 0
        max_tokens = body.get("max_tokens", min(16, limits.max_tokens))  # the OpenAI completions default
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", limits.max_tokens, 1, limits.max_tokens,
                         integer=True)
    n = _number(body, "n", 1, 1, limits.max_n, integer=True)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0  # logits / 1e-200 overflow to inf and sampling sees NaN: this close to 0 is greedy
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0", "top_p", "invalid_value")
    seed = _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True)
    strategy = body.get("strategy", "sample")
    if strategy not in ("greedy", "sample"):
        raise APIError(400, f"'strategy' must be 'greedy' or 'sample' on the server, got {strategy!r}", "strategy",
                       "invalid_value")
    try:
        cfg = GenerationConfig(
            strategy=strategy, max_new_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p),
            top_k=_number(body, "top_k", 0, 0, 1 << 20, integer=True),
            min_p=float(_number(body, "min_p", 0.0, 0.0, 1.0)),
            presence_penalty=float(_number(body, "presence_penalty", 0.0, -2.0, 2.0)),
            frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2.0, 2.0)),
            repetition_penalty=float(_number(body, "repetition_penalty", 1.0, 0.01, 10.0)),
            min_new_tokens=_number(body, "min_tokens", 0, 0, limits.max_tokens, integer=True),
            ignore_eos=_bool(body, "ignore_eos", False), stop=_stop(body, limits),
            seed=None if seed is None else int(seed), logprobs=logprobs)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options", "invalid_type")
    echo = _bool(body, "echo", False)
    _unsupported(body)
    rag = None if body.get("rag") is None else _bool(body, "rag", False)
    if rag and kind != "chat":
        raise APIError(400, "'rag' works on /v1/chat/completions only", "rag", "invalid_value")
    return ParsedRequest(kind, prompts, cfg, n=int(n), stream=stream, include_usage=bool(opts.get("include_usage")),
                         logit_bias=_logit_bias(body), rag=rag,
                         logprobs=logprobs, top_logprobs=int(top), tools=tools, tool_choice=tool_choice, echo=echo)


# ---------------------------------------------------------------- tools
# The model is told about tools in a system message and answers a call as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call> (the convention of Hermes/Qwen chat models).
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def render_tool_call(call: Any, where: str) -> str:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise APIError(400, f"{where}.tool_calls: each call needs function.name", f"{where}.tool_calls",
                       "invalid_value")
    args = fn.get("arguments", "{}")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        raise APIError(400, f"{where}.tool_calls: function.arguments is not valid JSON", f"{where}.tool_calls",
                       "invalid_value") from None
    return f"{TOOL_OPEN}{json.dumps({'name': fn['name'], 'arguments': args}, ensure_ascii=False)}{TOOL_CLOSE}"


def tools_system_text(tools: list[dict]) -> str:
    specs = "\n".join(json.dumps(t["function"], ensure_ascii=False, sort_keys=True) for t in tools)
    return ("You may call these functions. To call one, answer with "
            f'{TOOL_OPEN}{{"name": NAME, "arguments": {{...}}}}{TOOL_CLOSE}.\nFunctions:\n{specs}')


def with_tools(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The conversation with the tool descriptions added to (or as) the system message."""
    if not tools:
        return messages
    text = tools_system_text(tools)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def forced_tool_prefix(tool_choice: Any) -> str:
    """Text the assistant turn is started with so the model must call a tool (tool_choice required/named)."""
    if tool_choice == "required":
        return TOOL_OPEN
    if isinstance(tool_choice, dict):
        return TOOL_OPEN + '{"name": ' + json.dumps(tool_choice["function"]["name"]) + ', "arguments": '
    return ""


def parse_tool_calls(text: str, tools: list[dict]) -> tuple[Optional[str], list[dict]]:
    """(content before the first call or None, OpenAI tool_calls); no calls if any block is malformed."""
    names = {t["function"]["name"] for t in tools}
    start = text.find(TOOL_OPEN)
    if not tools or start < 0:
        return text, []
    calls, pos = [], start
    while pos >= 0:
        end = text.find(TOOL_CLOSE, pos)
        if end < 0:
            end = len(text)  # the model stopped (e.g. at <|end|>) before closing the last call
        try:
            obj = json.loads(text[pos + len(TOOL_OPEN):end])
        except json.JSONDecodeError:
            return text, []
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return text, []
        args = obj.get("arguments", {})
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
        pos = text.find(TOOL_OPEN, end)
    content = text[:start].strip()
    return (content or None), calls


# ---------------------------------------------------------------- OpenAPI request schemas
# Published in /openapi.json (the handlers parse bodies by hand, so FastAPI cannot derive them).

def _sampling_schema(limits: Limits) -> dict:
    return {
        "model": {"type": "string"},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_tokens},
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_n},
        "stop": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"},
                           {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": limits.max_stop}]},
        "seed": {"type": ["integer", "null"]},
        "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
        "strategy": {"type": "string", "enum": ["greedy", "sample"], "description": "lmstack extra"},
        "top_k": {"type": "integer", "minimum": 0, "description": "lmstack extra"},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1, "description": "lmstack extra"},
        "repetition_penalty": {"type": "number", "minimum": 0.01, "maximum": 10, "description": "lmstack extra"},
        "ignore_eos": {"type": "boolean", "description": "lmstack extra"},
        "logit_bias": {"type": ["object", "null"], "maxProperties": 300,
                       "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
    }


_TEXT = {"type": "string"}
_FUNCTION = {"type": "object", "required": ["name"], "properties": {"name": _TEXT}}


def chat_request_schema(limits: Limits) -> dict:
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [_TEXT, {"type": "null"}, {"type": "array", "items": {
            "type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": _TEXT}}}]},
        "tool_calls": {"type": "array", "items": {"type": "object", "required": ["function"], "properties": {
            "function": dict(_FUNCTION, properties={"name": _TEXT, "arguments": _TEXT})}}},
        "tool_call_id": _TEXT}}
    tool = {"type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"},
        "function": dict(_FUNCTION, properties={"name": dict(_TEXT, minLength=1), "description": _TEXT,
                                                "parameters": {"type": "object"}})}}
    return {"type": "object", "required": ["model", "messages"], "properties": dict(_sampling_schema(limits), **{
        "messages": {"type": "array", "minItems": 1, "items": message},
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": limits.max_top_logprobs},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_tokens},
        "tools": {"type": "array", "items": tool},
        "tool_choice": {"anyOf": [{"type": "string", "enum": ["auto", "none", "required"]}, {"type": "object"}]},
        "rag": {"type": ["boolean", "null"], "description": "lmstack extra: answer from the server's --rag index"},
    })}


def completion_request_schema(limits: Limits) -> dict:
    tokens = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    return {"type": "object", "required": ["model", "prompt"], "properties": dict(_sampling_schema(limits), **{
        "prompt": {"anyOf": [_TEXT, {"type": "array", "minItems": 1, "items": _TEXT}, tokens,
                             {"type": "array", "minItems": 1, "items": tokens}]},
        "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 5},
        "echo": {"type": ["boolean", "null"]},
    })}


def openapi_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
