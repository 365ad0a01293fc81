"""Task declarations for ``lmstack eval``: a TOML or YAML file of tasks, each pointing at a JSONL data file.

A task file holds one table per task (TOML ``[[task]]``, YAML a list under ``task:`` or a top-level list)::

    [[task]]
    name = "capitals"                      # unique name, used with --tasks
    type = "multiple_choice"               # multiple_choice | generate | perplexity
    data = "capitals.jsonl"                # JSONL, relative to the task file
    template = "Question: {question}\\nAnswer:"   # str.format over each JSONL record's fields
    choices = "options"                    # multiple_choice: the field holding the list of answers
    gold = "label"                         # multiple_choice: field with the right index (or the right string)
    target = "{answer}"                    # generate: the reference, a template over the record
    num_fewshot = 2                        # solved examples put before the question (sampled with `seed`)

Other keys (defaults in TaskSpec below): ``target_delimiter``, ``fewshot_delimiter``, ``fewshot_data``,
``fewshot_match``, ``seed``, ``metrics`` (exact_match, contains, f1, chrf, world_judge), ``until``, ``max_new_tokens``,
``answer_regex`` (extract group 1 of the last match), ``cot`` (extract "answer is X" or the last number),
``chat`` (wrap the prompt in the chat template, for SFT models), ``system``, ``messages`` (field holding a
whole conversation instead of ``template``), ``text`` (perplexity: the field with the document), ``limit``.
Errors name the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lmstack.runs import iter_jsonl

TASK_TYPES = ("multiple_choice", "generate", "perplexity")
METRICS_BY_TYPE = {
    "multiple_choice": ("acc", "acc_norm"),
    "generate": ("exact_match", "contains", "f1", "chrf", "world_judge", "answer_logprob"),
    "perplexity": ("bits_per_byte", "word_perplexity", "token_perplexity"),
}


class TaskError(ValueError):
    """A task declaration or its data that cannot be used; the message names file, line and field."""


@dataclass
class TaskSpec:
    name: str
    type: str
    data: str = ""                        # JSONL path (absolute, or relative to the task file)
    template: str = "{prompt}"
    target: str = "{answer}"
    choices: str = "choices"
    gold: str = "gold"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    fewshot_data: str = ""                # default: the other records of `data`
    fewshot_match: str = ""               # a field the examples must share with the item (e.g. "lang")
    seed: int = 1234
    metrics: list[str] = field(default_factory=list)  # default: all metrics that fit the type
    until: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 32
    answer_regex: str = ""
    cot: bool = False
    chat: bool = False
    system: str = ""
    messages: str = ""
    text: str = "text"
    limit: int = 0
    description: str = ""
    source: str = "<built-in>"            # where it was declared (for messages), not a user key
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source} line {self.line}" if self.line else self.source


USER_KEYS = {f.name for f in dataclasses.fields(TaskSpec)} - {"source", "line"}


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _check_spec(spec: TaskSpec) -> None:
    where = f"{spec.where} (task {spec.name!r})"
    if spec.type not in TASK_TYPES:
        raise TaskError(f"{where}: field 'type' is {spec.type!r}; choose one of {', '.join(TASK_TYPES)}")
    for m in spec.metrics:
        if m not in METRICS_BY_TYPE[spec.type]:
            raise TaskError(f"{where}: field 'metrics' has {m!r}, not a metric of a {spec.type} task "
                            f"({', '.join(METRICS_BY_TYPE[spec.type])})")
    if spec.num_fewshot < 0 or spec.limit < 0 or spec.max_new_tokens < 1:
        raise TaskError(f"{where}: num_fewshot and limit must be >= 0 and max_new_tokens >= 1")
    if spec.answer_regex:
        try:
            re.compile(spec.answer_regex)
        except re.error as e:
            raise TaskError(f"{where}: field 'answer_regex' is not a valid regular expression ({e})") from None
    if spec.chat and spec.type != "generate":
        raise TaskError(f"{where}: field 'chat' applies to generate tasks only")
    for key in ("template", "target"):
        try:
            template_fields(getattr(spec, key))
        except ValueError as e:
            raise TaskError(f"{where}: field {key!r} is not a valid template ({e})") from None


def _typed(value: Any, default: Any, key: str, where: str) -> Any:
    """``value`` if it has the type of the field's default (bool, int, str or list of str), else TaskError."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        kind = {bool: "a boolean (true / false)", int: "an integer", str: "a string", list: "a list of strings"}
        raise TaskError(f"{where}: field {key!r} must be {kind[type(default)]}, got {value!r}")
    return value


def spec_from_dict(raw: Any, source: str, line: int) -> TaskSpec:
    where = f"{source} line {line}" if line else source
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: a task must be a table of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - USER_KEYS)
    if unknown:
        raise TaskError(f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(USER_KEYS))}")
    for key in ("name", "type"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise TaskError(f"{where}: field {key!r} is missing or not a string")
    values = {}
    defaults = TaskSpec(name="", type="")
    for f in dataclasses.fields(TaskSpec):
        if f.name in raw:
            values[f.name] = _typed(raw[f.name], getattr(defaults, f.name), f.name, where)
    spec = TaskSpec(**values, source=source, line=line)
    if spec.data and not Path(spec.data).is_absolute():
        spec.data = str(Path(source).parent / spec.data)
    if spec.fewshot_data and not Path(spec.fewshot_data).is_absolute():
        spec.fewshot_data = str(Path(source).parent / spec.fewshot_data)
    _check_spec(spec)
    return spec


def _header_lines(text: str, pattern: str) -> list[int]:
    return [i for i, ln in enumerate(text.splitlines(), 1) if re.match(pattern, ln)]


def _parse_toml(path: Path, text: str) -> list[tuple[Any, int]]:
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{path}: invalid TOML ({e})") from None
    tasks = doc.get("task")
    if not isinstance(tasks, list):
        raise TaskError(f"{path}: no [[task]] tables found (each task is a [[task]] table)")
    lines = _header_lines(text, r"\s*\[\[\s*task\s*\]\]")
    return [(t, lines[i] if i < len(lines) else 0) for i, t in enumerate(tasks)]


def _parse_yaml(path: Path, text: str) -> list[tuple[Any, int]]:
    try:
        import yaml
    except ImportError:
        raise TaskError(f"{path}: YAML task files need PyYAML (pip install pyyaml), or write the file as TOML") from None
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: invalid YAML ({e})") from None
    items, nodes = doc, node
    if isinstance(doc, dict) and "task" in doc:
        items = doc["task"]
        nodes = next(v for k, v in node.value if k.value == "task")
    if isinstance(items, dict):
        return [(items, nodes.start_mark.line + 1)]
    if not isinstance(items, list):
        raise TaskError(f"{path}: expected a list of tasks (or a mapping with a 'task' list)")
    return [(t, n.start_mark.line + 1) for t, n in zip(items, nodes.value)]


def load_task_file(path: str | Path) -> list[TaskSpec]:
    """Every task declared in a .toml / .yaml / .yml file, validated (TaskError names file, line, field)."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"{path}: task file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        raw = _parse_toml(path, text)
    elif path.suffix in (".yaml", ".yml"):
        raw = _parse_yaml(path, text)
    else:
        raise TaskError(f"{path}: task files are .toml, .yaml or .yml")
    specs = [spec_from_dict(t, str(path), line) for t, line in raw]
    seen: dict[str, TaskSpec] = {}
    for s in specs:
        if s.name in seen:
            raise TaskError(f"{s.where}: task name {s.name!r} already declared at line {seen[s.name].line}")
        seen[s.name] = s
    return specs


# ------------------------------------------------------------------------------------------------ data

def required_fields(spec: TaskSpec) -> list[str]:
    if spec.type == "perplexity":
        return [spec.text]
    if spec.messages:
        fields = [spec.messages]
    else:
        fields = template_fields(spec.template)
    if spec.type == "multiple_choice":
        return fields + [spec.choices, spec.gold]
    return fields + template_fields(spec.target)


def check_doc(spec: TaskSpec, doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        raise TaskError(f"{where}: each record must be a JSON object, got {type(doc).__name__}")
    for key in required_fields(spec):
        if key not in doc:
            raise TaskError(f"{where}: field {key!r} missing (task {spec.name!r} declared at {spec.where} uses it)")
    if spec.type == "multiple_choice":
        choices, gold = doc[spec.choices], doc[spec.gold]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TaskError(f"{where}: field {spec.choices!r} must be a list of at least two strings")
        if not (isinstance(gold, int) and 0 <= gold < len(choices)) and gold not in choices:
            raise TaskError(f"{where}: field {spec.gold!r} = {gold!r} is neither an index into "
                            f"{spec.choices!r} nor one of its strings")
    if spec.messages and not isinstance(doc[spec.messages], list):
        raise TaskError(f"{where}: field {spec.messages!r} must be a list of {{role, content}} messages")


def load_docs(spec: TaskSpec, path: Optional[str] = None) -> list[dict]:
    path = path or spec.data
    if not path:
        raise TaskError(f"{spec.where}: task {spec.name!r} has no field 'data'")
    if not Path(path).exists():
        raise TaskError(f"{spec.where}: task {spec.name!r}: data file {path} not found")
    docs = []
    for lineno, doc in iter_jsonl(path, error=TaskError):
        check_doc(spec, doc, f"{path} line {lineno}")
        docs.append(doc)
    if not docs:
        raise TaskError(f"{path}: no records (task {spec.name!r})")
    return docs


def gold_index(spec: TaskSpec, doc: dict) -> int:
    gold = doc[spec.gold]
    return gold if isinstance(gold, int) and not isinstance(gold, bool) else doc[spec.choices].index(gold)


def render(template: str, doc: dict) -> str:
    return template.format(**doc)


def solved_example(spec: TaskSpec, doc: dict) -> str:
    """A few-shot example: the prompt followed by its answer."""
    prompt = render(spec.template, doc)
    if spec.type == "multiple_choice":
        answer = doc[spec.choices][gold_index(spec, doc)]
    else:
        answer = render(spec.target, doc)
    return prompt + spec.target_delimiter + answer


def fewshot_context(spec: TaskSpec, doc: dict, index: int, pool: list[dict], num_fewshot: int) -> str:
    """The task's prompt for ``doc`` after ``num_fewshot`` solved examples. The examples are drawn from
    ``pool`` (never the item itself) by a generator seeded with (task seed, item index): the same
    prompts on every run, whatever other items or models are evaluated."""
    prompt = render(spec.template, doc)
    if num_fewshot == 0:
        return prompt
    rng = random.Random(f"{spec.seed}:{spec.name}:{index}")
    candidates = [d for d in pool if d is not doc and d != doc and
                  (not spec.fewshot_match or d.get(spec.fewshot_match) == doc.get(spec.fewshot_match))]
    shots = rng.sample(candidates, min(num_fewshot, len(candidates)))
    return spec.fewshot_delimiter.join([solved_example(spec, d) for d in shots] + [prompt])
