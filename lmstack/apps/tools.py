"""Tools for the agent, described in the JSON function-calling format of OpenAI's ``tools`` API
({"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}), so the agent
and an OpenAI-compatible server share one schema. Arguments are validated against the schema before a tool
runs; every problem comes back as a readable error for the model to fix.

The calculator parses arithmetic with ``ast`` and evaluates the tree itself: no ``eval``, no names, no calls,
no attribute access, and bounded exponents, so ``__import__('os')`` is rejected at parse time.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

# --------------------------------------------------------------------------- schema validation

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind not in _TYPES:
        raise ValueError(f"schema type {kind!r} is not supported")
    return isinstance(value, _TYPES[kind])


def validate_arguments(schema: dict, value: Any, path: str = "arguments") -> list[str]:
    """Errors of ``value`` against the subset of JSON Schema that tool definitions use: type (incl. lists of
    types), properties, required, additionalProperties (bool), enum, minimum/maximum, minLength/maxLength,
    items, minItems/maxItems. An empty list means valid."""
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_type_ok(value, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {type(value).__name__} {json.dumps(value)[:40]}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {json.dumps(value)[:40]} is not one of {json.dumps(schema['enum'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: allows at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate_arguments(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required field {name!r}")
        for name, item in value.items():
            if name in props:
                errors += validate_arguments(props[name], item, f"{path}.{name}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: unknown field {name!r} (allowed: {', '.join(props) or 'none'})")
    return errors


# --------------------------------------------------------------------------- tools

class ToolError(Exception):
    """A tool could not do what was asked; the message is shown to the model as the observation."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable[..., str]

    def to_openai(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def signature(self) -> str:
        """A compact one-line description for small models' prompts: ``name(arg, arg?): description``."""
        required = set(self.parameters.get("required", []))
        args = ", ".join(a if a in required else a + "?" for a in self.parameters.get("properties", {}))
        return f"{self.name}({args}): {self.description}"


@dataclass
class ToolResult:
    ok: bool
    content: str


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (JSON-like: nested lists and objects) with ``fn`` applied to every string in it."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    return value


def strip_strings(value: Any) -> Any:
    """``value`` with the whitespace around every string (in nested lists and objects too) removed: a model may
    write ``" nurse"`` so that a word copied from the question keeps the token it has there (a BPE word token
    carries its leading space; ``"nurse"`` would have to be spelled out of other pieces)."""
    return map_strings(value, str.strip)


class ToolBox:
    """Named tools; ``call`` strips the whitespace around string arguments, validates, runs and turns every
    failure into an error message."""

    def __init__(self, tools: list[Tool]):
        self.tools = {t.name: t for t in tools}

    def schemas(self) -> list[dict]:
        return [t.to_openai() for t in self.tools.values()]

    def call(self, name: Any, arguments: Any) -> ToolResult:
        if name not in self.tools:
            return ToolResult(False, f"Error: unknown tool {name!r}; available tools: {', '.join(self.tools)}")
        if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return ToolResult(False, f"Error: arguments of {name} are not valid JSON ({e.msg} at {e.pos})")
        tool = self.tools[name]
        arguments = strip_strings(arguments)
        errors = validate_arguments(tool.parameters, arguments)
        if errors:
            return ToolResult(False, f"Error: invalid arguments for {name}: " + "; ".join(errors))
        try:
            return ToolResult(True, str(tool.fn(**arguments)))
        except ToolError as e:
            return ToolResult(False, f"Error: {e}")


# --------------------------------------------------------------------------- calculator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e30


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("division by zero")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
            raise ToolError("result out of range")
        return result
    what = type(node).__name__
    if isinstance(node, (ast.Call, ast.Name, ast.Attribute, ast.Subscript)):
        what = {"Call": "function calls", "Name": "names", "Attribute": "attribute access",
                "Subscript": "indexing"}[what]
    raise ToolError(f"only numbers, + - * / // % ** and parentheses are allowed, not {what}")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression safely; the result as text (integers without a decimal point)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = (expression.replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
            .replace(",", "").replace("=", "").strip())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot parse {expression!r} as arithmetic") from None
    value = _evaluate(tree)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolError("result is not a finite number")
        if value.is_integer():
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


def calculator_tool() -> Tool:
    return Tool("calculator", "evaluate an arithmetic expression such as (23 + 45) * 3",
                {"type": "object", "properties": {"expression": {"type": "string", "minLength": 1,
                                                                 "maxLength": MAX_EXPRESSION_CHARS}},
                 "required": ["expression"], "additionalProperties": False}, calculate)


def date_tool(today: Callable[[], _dt.date] = _dt.date.today) -> Tool:
    def current_date() -> str:
        d = today()
        return f"{d.isoformat()} ({d.strftime('%A')})"
    return Tool("current_date", "today's date", {"type": "object", "properties": {}, "additionalProperties": False},
                current_date)


# --------------------------------------------------------------------------- knowledge graph and search

def kg_tools(kg) -> list[Tool]:
    from lmstack.apps.kg import RELATIONS
    from lmstack.apps.worldqa import value_name
    from lmstack.data.text import lang_of

    relations = [r for r in RELATIONS if r not in ("type", "name_en", "name_zh")]

    def one_entity(name: str) -> str:
        found = kg.resolve(name)
        if not found:
            raise ToolError(f"no entity named {name!r} in the knowledge graph")
        return found[0]

    def lookup(entity: str, relation: str) -> str:
        eid = one_entity(entity)
        values = kg.objects(eid, relation)
        if not values:
            raise ToolError(f"{entity} has no {relation!r}")
        return ", ".join(value_name(kg, v, lang_of(entity)) for v in values)

    def find(conditions: list[dict]) -> str:
        patterns = []
        for c in conditions:
            value = c["value"]
            ids = kg.resolve(value) or [value]  # a literal such as a year resolves to itself
            patterns.append([("?x", c["relation"], i) for i in ids])
        matches = None
        for alternatives in patterns:
            found = {r["?x"] for pat in alternatives for r in kg.query([pat])}
            matches = found if matches is None else matches & found
        if not matches:
            raise ToolError("no entity matches all conditions")
        lang = lang_of(" ".join(c["value"] for c in conditions))
        return ", ".join(sorted(kg.name(m, lang) for m in matches))

    condition = {"type": "object", "properties": {"relation": {"type": "string", "enum": relations},
                                                  "value": {"type": "string", "minLength": 1}},
                 "required": ["relation", "value"], "additionalProperties": False}
    return [
        Tool("kg_lookup", "the value of a relation of an entity in the knowledge graph",
             {"type": "object", "properties": {"entity": {"type": "string", "minLength": 1},
                                               "relation": {"type": "string", "enum": relations}},
              "required": ["entity", "relation"], "additionalProperties": False}, lookup),
        Tool("kg_find", "entities that satisfy every (relation, value) condition",
             {"type": "object", "properties": {"conditions": {"type": "array", "items": condition, "minItems": 1,
                                                              "maxItems": 4}},
              "required": ["conditions"], "additionalProperties": False}, find),
    ]


def search_tool(store, k_default: int = 3, mode: str = "bm25") -> Tool:
    def search(query: str, k: int = k_default) -> str:
        hits = store.search(query, k, mode=mode)
        if not hits:
            return "no results"
        return "\n".join(f"[{i}] {h.text}" for i, h in enumerate(hits, start=1))
    return Tool("search", "search the document store; returns numbered passages",
                {"type": "object", "properties": {"query": {"type": "string", "minLength": 1},
                                                  "k": {"type": "integer", "minimum": 1, "maximum": 10}},
                 "required": ["query"], "additionalProperties": False}, search)
