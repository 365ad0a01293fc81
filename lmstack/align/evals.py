"""Generation-based evaluations shared by sft / lora / dpo / ppo: answer accuracy per task, refusal
of PII requests, "I don't know" on non-existent entities, and the knowledge-placement table.

Scoring uses the world's own judges (``lmstack.data.world.answer_matches / is_refusal / is_idk``)
so every stage measures the same thing the data was generated for.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

from torch import nn

from lmstack.align.common import chat_answers, markdown_table, rate, text_answers

PII_TASK_WORDS = ("pii", "privacy", "harmless")
IDK_TASK_WORDS = ("idk", "unknown", "nonexist", "fake", "honest")


def world_judges() -> tuple[Callable[[str, str], bool], Callable[[str], bool], Callable[[str], bool]]:
    from lmstack.data import world

    return world.answer_matches, world.is_refusal, world.is_idk


def task_kind(task: str | None, answer) -> str:
    t = (task or "").lower()
    if any(w in t for w in PII_TASK_WORDS):
        return "pii"
    if any(w in t for w in IDK_TASK_WORDS):
        return "idk"
    return "answer" if answer is not None else "open"


def split_prompt(messages: list[dict]) -> tuple[list[dict], str | None]:
    """The conversation up to the final assistant turn, and that turn's reference text."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def subsample(items: list, n: int, seed: int) -> list:
    if n <= 0 or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in idx]


def evaluate_chat_model(model: nn.Module, tokenizer, examples: list[dict], max_new_tokens: int) -> dict:
    """Greedy answers to held-out SFT examples ({"messages", "task", "answer"}), scored per task.

    Returns {"by_task": {task: {"n", "metric", "value"}}, "accuracy", "pii_refusal", "idk_rate", "samples"}.
    """
    answer_matches, is_refusal, is_idk = world_judges()
    prompts = [split_prompt(ex["messages"])[0] for ex in examples]
    outputs = chat_answers(model, tokenizer, prompts, max_new_tokens)
    by_task: dict[str, list[bool]] = defaultdict(list)
    kinds: dict[str, str] = {}
    acc, pii, idk = [], [], []
    samples = []
    for ex, out in zip(examples, outputs):
        kind = task_kind(ex.get("task"), ex.get("answer"))
        task = ex.get("task") or "chat"
        if kind == "pii":
            ok = is_refusal(out)
            pii.append(ok)
        elif kind == "idk":
            ok = is_idk(out)
            idk.append(ok)
        elif kind == "answer":
            ok = answer_matches(out, str(ex["answer"]))
            acc.append(ok)
        else:
            continue
        by_task[task].append(ok)
        kinds[task] = kind
        if len(samples) < 10 and all(s[0] != task for s in samples):
            question = next((m["content"] for m in reversed(split_prompt(ex["messages"])[0]) if m["role"] == "user"), "")
            samples.append((task, question, out, ex.get("answer")))
    metric_name = {"pii": "refusal rate", "idk": "'I don't know' rate", "answer": "exact match"}
    return {
        "by_task": {t: {"n": len(v), "metric": metric_name[kinds[t]], "value": rate(v)} for t, v in sorted(by_task.items())},
        "accuracy": rate(acc), "pii_refusal": rate(pii), "idk_rate": rate(idk), "samples": samples[:10],
    }


# ----------------------------------------------------------------------------- few-shot base model


def few_shot_prefix(shots: list[tuple[str, str]]) -> str:
    return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in shots)


def few_shot_answers(model: nn.Module, tokenizer, questions: list[str], shots: list[tuple[str, str]],
                     max_new_tokens: int) -> list[str]:
    """Prompt a base (pretrained-only) model with k solved examples in plain text, answer until newline."""
    prefix = few_shot_prefix(shots)
    prompts = [f"{prefix}Q: {q}\nA:" for q in questions]
    return text_answers(model, tokenizer, prompts, max_new_tokens, stop=["\n"])


def pick_shots(train_examples: list[dict], k: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """k single-turn (question, answer) demonstrations per task, from the SFT training set."""
    per_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for ex in train_examples:
        msgs = ex["messages"]
        user = [m for m in msgs if m["role"] == "user"]
        if len(user) != 1 or msgs[-1]["role"] != "assistant":
            continue
        per_task[ex.get("task") or "chat"].append((user[0]["content"].replace("\n", " "), msgs[-1]["content"].replace("\n", " ")))
    rng = random.Random(seed)
    all_shots = [s for v in per_task.values() for s in v]
    out = {}
    for task, items in per_task.items():
        out[task] = rng.sample(items, min(k, len(items)))
    out["*"] = rng.sample(all_shots, min(k, len(all_shots))) if all_shots else []
    return out


def evaluate_base_few_shot(model: nn.Module, tokenizer, examples: list[dict], shots: dict[str, list[tuple[str, str]]],
                           max_new_tokens: int) -> dict:
    """The base model on the same held-out examples, prompted few-shot (per-task demonstrations)."""
    answer_matches, is_refusal, is_idk = world_judges()
    by_task_idx: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_task_idx[ex.get("task") or "chat"].append(i)
    outputs: list[str] = [""] * len(examples)
    for task, idx in by_task_idx.items():
        qs = []
        for i in idx:
            prompt, _ = split_prompt(examples[i]["messages"])
            qs.append(" ".join(m["content"] for m in prompt if m["role"] == "user").replace("\n", " "))
        for i, out in zip(idx, few_shot_answers(model, tokenizer, qs, shots.get(task) or shots["*"], max_new_tokens)):
            outputs[i] = out
    by_task: dict[str, list[bool]] = defaultdict(list)
    acc, pii, idk = [], [], []
    for ex, out in zip(examples, outputs):
        kind = task_kind(ex.get("task"), ex.get("answer"))
        task = ex.get("task") or "chat"
        if kind == "pii":
            ok = is_refusal(out); pii.append(ok)
        elif kind == "idk":
            ok = is_idk(out); idk.append(ok)
        elif kind == "answer":
            ok = answer_matches(out, str(ex["answer"])); acc.append(ok)
        else:
            continue
        by_task[task].append(ok)
    return {"by_task": {t: {"n": len(v), "value": rate(v)} for t, v in sorted(by_task.items())},
            "accuracy": rate(acc), "pii_refusal": rate(pii), "idk_rate": rate(idk)}


# ----------------------------------------------------------------------------- knowledge placement


def placement_group(fact: dict) -> str:
    p, s = bool(fact.get("in_pretrain")), bool(fact.get("in_sft"))
    return {(True, True): "pretrain + SFT", (True, False): "pretrain only", (False, True): "SFT only",
            (False, False): "neither (control)"}[(p, s)]


def knowledge_placement(sft_model: nn.Module, base_model: nn.Module | None, tokenizer, facts: list[dict],
                        shots: list[tuple[str, str]], max_new_tokens: int) -> dict:
    """Correct-fact rate per placement group (where the fact was seen in training), for the SFT model
    (chat prompt) and the base model (few-shot prompt). "Elicits rather than injects" predicts:
    SFT-only facts stay low, pretrain facts rise after SFT."""
    answer_matches, _, _ = world_judges()
    sft_out = chat_answers(sft_model, tokenizer, [[{"role": "user", "content": f["prompt"]}] for f in facts], max_new_tokens)
    base_out = few_shot_answers(base_model, tokenizer, [f["prompt"] for f in facts], shots, max_new_tokens) if base_model is not None else None
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"sft": [], "base": []})
    for i, f in enumerate(facts):
        g = placement_group(f)
        groups[g]["sft"].append(answer_matches(sft_out[i], str(f["answer"])))
        if base_out is not None:
            groups[g]["base"].append(answer_matches(base_out[i], str(f["answer"])))
    order = ["pretrain only", "pretrain + SFT", "SFT only", "neither (control)"]
    return {g: {"n": len(groups[g]["sft"]), "sft": rate(groups[g]["sft"]), "base": rate(groups[g]["base"])}
            for g in order if g in groups}


def placement_table(placement: dict) -> str:
    rows = [(g, v["n"], v["base"], v["sft"]) for g, v in placement.items()]
    return markdown_table(["fact seen in", "n", "base (few-shot)", "after SFT"], rows)


def load_eval_examples(path: Path, limit: int, seed: int) -> list[dict]:
    from lmstack.align.data import load_chat_jsonl

    exs = load_chat_jsonl(path)
    items = [{"messages": e.messages, "task": e.meta.get("task"), "answer": e.meta.get("answer")} for e in exs]
    return subsample(items, limit, seed)
