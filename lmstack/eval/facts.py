"""Few-shot fact completion: does a pretrained base model recall the world's facts?

Each eval item is ``{"prompt", "answer", "lang", "fact", "in_pretrain", ...}`` (from
``data/world/facts_eval.jsonl``). The model sees ``shots`` solved examples of the same language
followed by the prompt, decodes greedily up to a newline, and is right when the first clause of the
completion states the answer (``lmstack.eval.answers.answer_matches``). Facts that never appeared in pretraining
(``in_pretrain = false``) are a control: a model that really recalls facts, rather than guessing
frequent names, scores clearly higher on the ``in_pretrain`` ones.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from lmstack.data.world import few_shot_prompt
from lmstack.eval.answers import answer_matches
from lmstack.runs import iter_jsonl


def _join(prompt: str, answer: str, lang: str) -> str:
    sep = "" if lang == "zh" or prompt.endswith((" ", "\n")) else " "
    return f"{prompt}{sep}{answer}"


def build_few_shot_prompt(item: dict, pool: Sequence[dict], shots: int, rng: random.Random) -> str:
    """``shots`` solved examples (same language, different facts) then the query, one per line."""
    same = [p for p in pool if p.get("lang") == item.get("lang") and p.get("fact") != item.get("fact")]
    examples = rng.sample(same, min(shots, len(same)))
    lines = [_join(e["prompt"], e["answer"], e.get("lang", "en")) for e in examples]
    lines.append(item["prompt"])
    return "\n".join(lines)


def read_facts(path: str | Path) -> list[dict]:
    path = Path(path)
    items = []
    for lineno, obj in iter_jsonl(path):
        for key in ("prompt", "answer"):
            if not isinstance(obj.get(key), str):
                raise ValueError(f"{path} line {lineno}: field {key!r} missing or not a string")
        items.append(obj)
    return items


def fact_accuracy(model, tokenizer, facts: Sequence[dict], *, shots: int = 3, max_new_tokens: int = 16,
                  seed: int = 0, max_items: int | None = None, batch_size: int = 32) -> dict:
    """Greedy few-shot accuracy; returns overall / per-language / in- vs out-of-pretraining accuracy
    plus a few example rows for the report."""
    from lmstack.generate import GenerationConfig, generate

    rng = random.Random(seed)
    items = list(facts)
    if max_items is not None and len(items) > max_items:
        items = rng.sample(items, max_items)
    if not items:
        raise ValueError("fact_accuracy: no eval items")
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    prompt_ids = []
    for item in items:
        if "question" in item:
            # The world's own "Question: ...\nAnswer: ..." format, with shots of other facts.
            pool = [f for f in facts if f.get("lang") == item.get("lang") and f.get("fact") != item.get("fact")]
            text = few_shot_prompt(item, rng.sample(pool, min(shots, len(pool))))
        else:
            text = build_few_shot_prompt(item, facts, shots, rng)
        ids = tokenizer.encode(text)
        bos = getattr(tokenizer, "bos_id", None)
        ids = ([bos] if bos is not None else []) + ids
        if context is not None and len(ids) + max_new_tokens > context:
            ids = ids[-(context - max_new_tokens):]  # drop the oldest shots, keep the query
        prompt_ids.append(ids)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, strategy="greedy", stop=["\n"])
    gens = generate(model, tokenizer, prompt_ids, cfg, batch_size=batch_size)
    groups: dict[str, list[bool]] = defaultdict(list)
    rows = []
    for item, gen in zip(items, gens):
        ok = answer_matches(gen.text, item["answer"])
        groups["all"].append(ok)
        groups[f"lang={item.get('lang', '?')}"].append(ok)
        if "in_pretrain" in item:
            groups["in_pretrain" if item["in_pretrain"] else "not_in_pretrain"].append(ok)
        rows.append({"prompt": item["prompt"], "answer": item["answer"], "output": gen.text.split("\n")[0], "correct": ok})
    order = ["all", "in_pretrain", "not_in_pretrain"]
    keys = [k for k in order if k in groups] + sorted(k for k in groups if k not in order)
    acc = {k: sum(groups[k]) / len(groups[k]) for k in keys}
    counts = {k: len(groups[k]) for k in keys}
    return {"accuracy": acc, "counts": counts, "examples": rows}
