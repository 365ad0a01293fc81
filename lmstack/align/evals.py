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

from lmstack.align import common
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


def score_outputs(examples: list[dict], outputs: list[str | None]) -> dict:
    """Score answers per task with the world's judges. None = not generated (prompt too long): skipped, counted."""
    answer_matches, is_refusal, is_idk = world_judges()
    by_task: dict[str, list[bool]] = defaultdict(list)
    kinds: dict[str, str] = {}
    acc, pii, idk = [], [], []
    samples = []
    skipped = 0
    for ex, out in zip(examples, outputs):
        if out is None:
            skipped += 1
            continue
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
    metric_name = {"pii": "refusal rate", "idk": "'I don't know' rate", "answer": "answer match"}
    return {
        "by_task": {t: {"n": len(v), "metric": metric_name[kinds[t]], "value": rate(v)} for t, v in sorted(by_task.items())},
        "accuracy": rate(acc), "pii_refusal": rate(pii), "idk_rate": rate(idk), "samples": samples, "skipped": skipped,
    }


def evaluate_chat_model(model: nn.Module, tokenizer, examples: list[dict], max_new_tokens: int) -> dict:
    """Greedy answers to held-out SFT examples ({"messages", "task", "answer"}), scored per task."""
    prompts = [split_prompt(ex["messages"])[0] for ex in examples]
    return score_outputs(examples, chat_answers(model, tokenizer, prompts, max_new_tokens))


# ----------------------------------------------------------------------------- few-shot base model


def _user_text(messages: list[dict]) -> str:
    return " ".join(m["content"] for m in messages if m["role"] == "user").replace("\n", " ")


def few_shot_answers(model: nn.Module, tokenizer, items: list[dict], shots: Callable[[dict], list[tuple[str, str]]],
                     max_new_tokens: int) -> list[str]:
    """Prompt a base (pretrained-only) model completion-style with k solved examples
    ("Question: q / Answer: a", the world's format), answer until the newline."""
    from lmstack.data.world import few_shot_prompt

    limit = common.model_max_len(model) - min(max_new_tokens, 8) - 2
    prompts = []
    for it in items:
        demos = shots(it)
        # drop demonstrations (never the question) until the prompt leaves room to answer
        while True:
            prompt = few_shot_prompt(it, demos, it.get("lang") or "en")
            if not demos or len(tokenizer.encode(prompt)) < limit:
                break
            demos = demos[:-1]
        prompts.append(prompt)
    return text_answers(model, tokenizer, prompts, max_new_tokens, stop=["\n"])


def pick_shots(train_examples: list[dict], k: int, seed: int) -> Callable[[dict], list[tuple[str, str]]]:
    """k demonstrations from the SFT training set with the same task and language as the item
    (falling back to any task in that language). Demonstrations use the short reference answer."""
    pools: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for ex in train_examples:
        msgs = ex["messages"]
        if msgs[-1]["role"] != "assistant":
            continue
        answer = ex.get("answer") if ex.get("answer") is not None else msgs[-1]["content"]
        shot = (_user_text(msgs[:-1]), str(answer).replace("\n", " "))
        lang = ex.get("lang") or "en"
        pools[(ex.get("task") or "chat", lang)].append(shot)
        pools[("*", lang)].append(shot)
    rng = random.Random(seed)
    chosen = {key: rng.sample(v, min(k, len(v))) for key, v in pools.items()}

    def shots_for(item: dict) -> list[tuple[str, str]]:
        lang = item.get("lang") or "en"
        return chosen.get((item.get("task") or "chat", lang)) or chosen.get(("*", lang)) or []

    return shots_for


def evaluate_base_few_shot(model: nn.Module, tokenizer, examples: list[dict], shots, max_new_tokens: int) -> dict:
    """The base model on the same held-out examples, prompted few-shot (per-task demonstrations)."""
    items = [{"question": _user_text(split_prompt(ex["messages"])[0]), "lang": ex.get("lang") or "en",
              "task": ex.get("task")} for ex in examples]
    return score_outputs(examples, few_shot_answers(model, tokenizer, items, shots, max_new_tokens))


# ----------------------------------------------------------------------------- knowledge placement


def placement_group(fact: dict) -> str:
    p, s = bool(fact.get("in_pretrain")), bool(fact.get("in_sft"))
    return {(True, True): "pretrain + SFT", (True, False): "pretrain only", (False, True): "SFT only",
            (False, False): "neither (control)"}[(p, s)]


def knowledge_placement(sft_model: nn.Module, base_model: nn.Module | None, tokenizer, facts: list[dict],
                        shots, max_new_tokens: int) -> dict:
    """Correct-fact rate per placement group (where the fact was seen in training), for the SFT model
    (chat prompt) and the base model (few-shot prompt). "Elicits rather than injects" predicts:
    SFT-only facts stay low, pretrain facts rise after SFT."""
    answer_matches, _, _ = world_judges()
    questions = [f.get("question") or f["prompt"] for f in facts]
    sft_out = chat_answers(sft_model, tokenizer, [[{"role": "user", "content": q}] for q in questions], max_new_tokens)
    base_out = None
    if base_model is not None:
        items = [{"question": q, "lang": f.get("lang") or "en", "task": "fact_qa"} for q, f in zip(questions, facts)]
        base_out = few_shot_answers(base_model, tokenizer, items, shots, max_new_tokens)
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"sft": [], "base": []})
    for i, f in enumerate(facts):
        g = placement_group(f)
        if sft_out[i] is not None:
            groups[g]["sft"].append(answer_matches(sft_out[i], str(f["answer"])))
        if base_out is not None and base_out[i] is not None:
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
    items = [{"messages": e.messages, "task": e.meta.get("task"), "answer": e.meta.get("answer"),
              "lang": e.meta.get("lang")} for e in exs]
    return subsample(items, limit, seed)
