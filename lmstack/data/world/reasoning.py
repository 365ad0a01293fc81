"""Step-by-step reasoning problems over the synthetic world, with a parseable final answer line.

Two kinds, each with a difficulty measured in steps:

- ``arith``: a left-nested chain of operations such as ``((7 + 5) * 3) - 4`` (``n`` operations = ``n`` steps);
  the trace writes one ``a op b = c`` line per step.
- ``hop``: multi-hop questions over the world's entity table, person -> birthplace city -> country -> capital.
  One hop asks a stored fact directly; two and three hops chain them ("What is the capital of the country
  where X was born?"); the trace states one fact per line.

Every trace ends with a line ``Answer: <value>``, so a rule can check a sampled answer without a learned
judge (the verifiable reward of DeepSeek-R1-style RL). ``direct_text`` is the same answer without the steps,
for the direct-answer baseline. The problems are built from the ``world.json`` dict a run's data stage
writes (not by regenerating the world), so an older run's entities stay valid when the generators change.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

TRACE_SYSTEM = ("Think step by step. Write each step on its own line, "
                "then give the final answer on a last line that starts with 'Answer:'.")
DIRECT_SYSTEM = "Give only the final answer, on one line that starts with 'Answer:'."
ANSWER_PREFIX = "Answer:"
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.+?)\s*\.?\s*$", re.MULTILINE)
_ARITH_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*(?:;.*)?$")


@dataclass
class Problem:
    kind: str                 # "arith" | "hop"
    question: str
    steps: list[str]          # one line of the worked trace per step
    answer: str
    meta: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.steps)


def trace_text(p: Problem) -> str:
    return "\n".join(([p.meta["plan"]] if p.meta.get("plan") else []) + p.steps + [f"{ANSWER_PREFIX} {p.answer}"])


def direct_text(p: Problem) -> str:
    return f"{ANSWER_PREFIX} {p.answer}"


def parse_final_answer(text: str) -> str | None:
    """The value on the LAST ``Answer:`` line of a response, or None when there is none."""
    found = _ANSWER_LINE.findall(text or "")
    return found[-1].strip() if found else None


def is_correct(text: str, answer: str) -> bool:
    got = parse_final_answer(text)
    return got is not None and got.casefold() == str(answer).casefold()


def arith_step_accuracy(text: str) -> tuple[int, int]:
    """(correct, total) over the ``a op b = c`` lines of a trace: a step-level check of the arithmetic."""
    ok = total = 0
    for line in (text or "").splitlines():
        m = _ARITH_STEP.match(line)
        if m:
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            total += 1
            ok += _apply(a, op, b) == c
    return ok, total


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


# ----------------------------------------------------------------------------- arithmetic chains


def arith_chain(rng: random.Random, n_ops: int, scratchpad: bool = False) -> Problem:
    """A left-nested chain of ``n_ops`` operations with one-digit operands; every value stays in 1..49, so
    each step is a fact a small model can learn (the run's 1M-parameter models get 2-digit sums wrong).

    ``scratchpad`` writes the trace so that no line needs to count: first the operations in the order they
    apply (the question without its brackets), then each step with the operations still left
    ("14 - 7 = 7; left: * 3, - 7"), so the next step reads the first of them and "none" ends the chain
    (a scratchpad in the sense of Nye et al. 2021). The question and the answer are the same either way."""
    if n_ops < 1:
        raise ValueError(f"n_ops={n_ops} must be >= 1")
    value = rng.randint(2, 9)
    expr, steps, ops, start = str(value), [], [], value
    for i in range(n_ops):
        choices = (["+"] if value <= 40 else []) + (["-"] if value >= 2 else []) + (["*"] if value <= 12 else [])
        op = rng.choice(choices)
        b = rng.randint(1, 9) if op == "+" else rng.randint(1, min(9, value - 1)) if op == "-" else rng.randint(2, 3)
        new = _apply(value, op, b)
        steps.append(f"{value} {op} {b} = {new}")
        ops.append(f"{op} {b}")
        expr = f"({expr}) {op} {b}" if i > 0 else f"{expr} {op} {b}"
        value = new
    meta = {"expr": expr}
    if scratchpad:
        steps = [f"{line}; left: {', '.join(ops[i + 1:]) or 'none'}" for i, line in enumerate(steps)]
        meta["plan"] = f"Operations: {start}, {', '.join(ops)}"
    return Problem("arith", f"Compute {expr}.", steps, str(value), meta)


# ----------------------------------------------------------------------------- multi-hop world questions


def _index(world: dict):
    countries = {k["id"]: k for k in world["countries"]}
    cities = {c["id"]: c for c in world["cities"]}
    return countries, cities


def hop_chain(world: dict, person: dict | None, city: dict | None, n_hops: int, rng: random.Random) -> Problem:
    """A question of ``n_hops`` (1..3) hops. Starting from a person: birthplace (1), country of birth (2),
    capital of that country (3). Starting from a city: its country (1), that country's capital (2)."""
    countries, cities = _index(world)
    if person is not None:
        c = cities[person["birthplace"]]
        k = countries[c["country"]]
        name = person["name_en"]
        facts = [f"{name} was born in {c['name_en']}.", f"{c['name_en']} is in {k['name_en']}.",
                 f"The capital of {k['name_en']} is {k['capital_en']}."]
        answers = [c["name_en"], k["name_en"], k["capital_en"]]
        questions = [rng.choice([f"Where was {name} born?", f"In which city was {name} born?"]),
                     rng.choice([f"In which country was {name} born?", f"Which country is {name} from?"]),
                     rng.choice([f"What is the capital of the country where {name} was born?",
                                 f"What is the capital of the country {name} comes from?"])]
        start = person["id"]
    elif city is not None:
        k = countries[city["country"]]
        facts = [f"{city['name_en']} is in {k['name_en']}.", f"The capital of {k['name_en']} is {k['capital_en']}."]
        answers = [k["name_en"], k["capital_en"]]
        questions = [rng.choice([f"Which country is {city['name_en']} in?", f"In which country is {city['name_en']}?"]),
                     f"What is the capital of the country that {city['name_en']} is in?"]
        start = city["id"]
    else:
        raise ValueError("hop_chain needs a person or a city to start from")
    if not 1 <= n_hops <= len(facts):
        raise ValueError(f"n_hops={n_hops}: a chain from {start} has 1..{len(facts)} hops")
    return Problem("hop", questions[n_hops - 1], facts[:n_hops], answers[n_hops - 1], {"start": start})


def hop_problems(world: dict, n_hops: int, rng: random.Random) -> list[Problem]:
    """Every chain of ``n_hops`` the world allows: from each person whose facts were in pretraining
    (so the model can know them), and from each city."""
    people = [p for p in world["people"] if p.get("group") != "sft_only"]
    out = [hop_chain(world, p, None, n_hops, rng) for p in people]
    if n_hops <= 2:
        out += [hop_chain(world, None, c, n_hops, rng) for c in world["cities"]]
    return out


# ----------------------------------------------------------------------------- datasets


def _unique(problems, seen: set) -> list[Problem]:
    out = []
    for p in problems:
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def make_reasoning_sets(world: dict, seed: int, n_train: int, n_eval_per_level: int,
                        train_arith_ops=(1, 2, 3), eval_arith_ops=(4, 5),
                        train_hops=(1, 2), eval_hops=(3,), arith_share: float = 0.6,
                        n_rl: int = 0, rl_arith_ops=(), scratchpad: bool = False) -> dict[str, list[Problem]]:
    """``train`` (n_train problems at the training difficulties), ``eval_same`` (held-out problems at the
    training difficulties) and ``eval_hard`` (more steps than any training problem). Arithmetic questions
    never repeat across sets; hop chains of one length are split between train and eval_same. With ``n_rl``,
    ``rl`` holds that many further arithmetic chains of ``rl_arith_ops`` operations for RL, none of them in
    another set (the other sets are the same with or without it). ``scratchpad``: the arithmetic traces'
    format (``arith_chain``); the problems are the same either way."""
    rng = random.Random(seed)
    seen: set[str] = set()
    n_arith = round(n_train * arith_share)
    sets: dict[str, list[Problem]] = {"train": [], "eval_same": [], "eval_hard": []}
    for target, levels, count in (("eval_hard", eval_arith_ops, n_eval_per_level),
                                  ("eval_same", train_arith_ops, n_eval_per_level)):
        for n in levels:
            sets[target] += _unique((arith_chain(rng, n, scratchpad) for _ in range(count * 3)), seen)[:count]
    per_level = -(-n_arith // len(train_arith_ops))
    for n in train_arith_ops:
        sets["train"] += _unique((arith_chain(rng, n, scratchpad) for _ in range(per_level * 3)), seen)[:per_level]
    sets["train"] = sets["train"][:n_arith]
    for n in eval_hops:
        pool = hop_problems(world, n, rng)
        rng.shuffle(pool)
        sets["eval_hard"] += pool[:n_eval_per_level]
    hop_train: list[Problem] = []
    for n in train_hops:
        pool = hop_problems(world, n, rng)
        rng.shuffle(pool)
        k = min(n_eval_per_level, len(pool) // 4)  # a quarter at most is held out
        sets["eval_same"] += pool[:k]
        hop_train += pool[k:]
    n_hop = n_train - len(sets["train"])
    # fewer distinct chains than wanted: repeat them
    while hop_train and len(hop_train) < n_hop:
        hop_train += hop_train[: n_hop - len(hop_train)]
    sets["train"] += hop_train[:n_hop]
    rng.shuffle(sets["train"])
    if n_rl > 0:
        if not rl_arith_ops:
            raise ValueError("make_reasoning_sets: n_rl > 0 needs rl_arith_ops")
        per_rl = -(-n_rl // len(rl_arith_ops))
        sets["rl"] = [p for n in rl_arith_ops
                      for p in _unique((arith_chain(rng, n, scratchpad) for _ in range(per_rl * 3)), seen)[:per_rl]]
        rng.shuffle(sets["rl"])
        sets["rl"] = sets["rl"][:n_rl]
    return sets


def to_chat(p: Problem, with_trace: bool) -> dict:
    """A chat record (messages + the answer and difficulty as metadata) in the SFT file format."""
    system = TRACE_SYSTEM if with_trace else DIRECT_SYSTEM
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": p.question},
                         {"role": "assistant", "content": trace_text(p) if with_trace else direct_text(p)}],
            "task": f"reason_{p.kind}", "answer": p.answer, "kind": p.kind, "n_steps": p.n_steps, "lang": "en"}
