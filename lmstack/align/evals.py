"""Generation-based evaluations shared by sft / lora / dpo / ppo: answers to held-out conversations,
the base model prompted few-shot, and the knowledge-placement table.

Judging (does an answer state the reference, refuse, or admit not knowing) lives in ``lmstack.eval``:
``lmstack.eval.answers`` for one answer, ``lmstack.eval.scoring`` for a set of conversations per task.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

from torch import nn

from lmstack.align import common
from lmstack.align.common import chat_answers, rate, text_answers
from lmstack.report import markdown_table
from lmstack.eval.answers import answer_matches, is_idk, is_refusal
from lmstack.eval.scoring import placement_group, score_outputs, split_prompt, task_kind

__all__ = ["arithmetic_probe", "chat_probe", "evaluate_base_few_shot", "evaluate_chat_model", "few_shot_answers",
           "knowledge_placement", "load_eval_examples", "pick_shots", "placement_group", "placement_table", "score_outputs",
           "split_prompt", "subsample", "task_kind", "world_judges"]


def world_judges() -> tuple[Callable[[str, str], bool], Callable[[str], bool], Callable[[str], bool]]:
    """The answer matcher, refusal detector and "I don't know" detector of ``lmstack.eval.answers``."""
    return answer_matches, is_refusal, is_idk


def subsample(items: list, n: int, seed: int) -> list:
    if n <= 0 or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in idx]


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


# ----------------------------------------------------------------------------- arithmetic probe


def arithmetic_probe(model: nn.Module, tokenizer, builder, n: int, seed: int, max_new_tokens: int) -> dict:
    """``n`` held-out arithmetic questions of the run's world (``builder``: its ``DialogBuilder``; problems and
    phrasings no training text uses), answered in chat and scored per kind: two-digit + and - (issue 14's goal)
    and small x. sft_eval holds ~39 arithmetic questions in all, too few for a goal of 0.80."""
    items = builder.probe_conversations("arith", n, seed)
    outputs = chat_answers(model, tokenizer, [split_prompt(ex["messages"])[0] for ex in items], max_new_tokens)
    judged: dict[str, list[bool]] = {"addsub": [], "mul": []}
    for ex, out in zip(items, outputs):
        judged["mul" if ex["op"] == "*" else "addsub"].append(out is not None and answer_matches(out, ex["answer"]))
    return {**{f"arith_{k}": rate(v) for k, v in judged.items()}, **{f"n_arith_{k}": len(v) for k, v in judged.items()}}


def chat_probe(model: nn.Module, tokenizer, builder, n: int, seed: int, max_new_tokens: int) -> dict:
    """Up to ``n`` held-out multi-turn follow-ups and ``n`` phone-number requests of the run's world (``builder``:
    its ``DialogBuilder``), drawn like sft_eval's (which holds ~36 of each: a standard error of ~0.07) and scored
    the same way."""
    out = {}
    for task, key in (("multiturn", "probe_multiturn"), ("refuse_pii", "probe_pii_refusal")):
        items = builder.probe_conversations(task, n, seed)
        outputs = chat_answers(model, tokenizer, [split_prompt(ex["messages"])[0] for ex in items], max_new_tokens)
        out[key], out[f"n_{key}"] = score_outputs(items, outputs)["by_task"][task]["value"], len(items)
    return out


# ----------------------------------------------------------------------------- knowledge placement


def knowledge_placement(sft_model: nn.Module, base_model: nn.Module | None, tokenizer, facts: list[dict],
                        shots, max_new_tokens: int, answers_out: list | None = None) -> dict:
    """Correct-fact rate per placement group (where the fact was seen in training), for the SFT model
    (chat prompt) and the base model (few-shot prompt). "Elicits rather than injects" predicts:
    SFT-only facts stay low, pretrain facts rise after SFT. ``answers_out`` (a list) receives one row per
    question with the SFT model's answer and its judgement."""
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
            if answers_out is not None:
                answers_out.append({"question": questions[i], "answer": f["answer"], "lang": f.get("lang"),
                                    "group": g, "output": sft_out[i], "correct": groups[g]["sft"][-1]})
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
