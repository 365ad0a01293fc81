"""Triple extraction: the model reads a passage and writes its facts as ``subject | relation | value`` lines.
SFT examples come from the knowledge graph's passages; predictions are scored against the graph's triples
(precision = correct / predicted, recall = correct / true triples of the passage)."""

from __future__ import annotations

import unicodedata
from typing import Sequence

from lmstack.apps.kg import KnowledgeGraph
from lmstack.apps.worldqa import SUBJECT_TYPE, value_name

INSTRUCTION = {"en": "Extract the facts as lines 'subject | relation | value':",
               "zh": "把事实抽取成“主体 | 关系 | 值”的行："}
FACT_RELATIONS = tuple(SUBJECT_TYPE)  # birth_year, birthplace, occupation, hobby, country, capital


def extraction_messages(passage: str, lang: str) -> list[dict]:
    return [{"role": "user", "content": f"{INSTRUCTION[lang]}\n{passage}"}]


def gold_triples(kg: KnowledgeGraph, entity: str, lang: str) -> list[tuple[str, str, str]]:
    """The facts a passage about ``entity`` states, as display strings in ``lang``."""
    return [(kg.name(entity, lang), rel, value_name(kg, v, lang))
            for rel in FACT_RELATIONS for v in kg.objects(entity, rel)]


def render_triples(triples: Sequence[tuple[str, str, str]]) -> str:
    return "\n".join(" | ".join(t) for t in triples)


def parse_triples(text: str) -> list[tuple[str, str, str]]:
    """Lines with exactly three non-empty '|'-separated fields; anything else is ignored."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and all(parts):
            out.append((parts[0], parts[1], parts[2]))
    return out


def _key(t: tuple[str, str, str]) -> tuple[str, str, str]:
    norm = lambda s: " ".join(unicodedata.normalize("NFKC", s).lower().split())  # noqa: E731
    return norm(t[0]), norm(t[1]), norm(t[2])


def score_extraction(predicted: Sequence[tuple], gold: Sequence[tuple]) -> tuple[int, int, int]:
    """(correct, predicted, gold) counts; duplicates in the prediction count once."""
    pred = {_key(t) for t in predicted}
    true = {_key(t) for t in gold}
    return len(pred & true), len(pred), len(true)


def extraction_sft_examples(kg: KnowledgeGraph, passages: Sequence[dict]) -> list[dict]:
    """One example per passage ({"text", "entity", "lang"}, e.g. ``worldqa.entity_passages``)."""
    out = []
    for p in passages:
        target = render_triples(gold_triples(kg, p["entity"], p["lang"]))
        out.append({"messages": extraction_messages(p["text"], p["lang"]) + [{"role": "assistant", "content": target}],
                    "task": "extract", "answer": None, "lang": p["lang"], "facts": []})
    return out


def evaluate_extraction(model, tokenizer, kg: KnowledgeGraph, passages: Sequence[dict], max_new_tokens: int = 96) -> dict:
    from lmstack.generate import GenerationConfig, chat

    if not passages:
        return {"n": 0, "precision": float("nan"), "recall": float("nan")}
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    outs = chat(model, tokenizer, [extraction_messages(p["text"], p["lang"]) for p in passages], cfg)
    tp = n_pred = n_gold = 0
    for o, p in zip(outs, passages):
        a, b, c = score_extraction(parse_triples(o.text), gold_triples(kg, p["entity"], p["lang"]))
        tp, n_pred, n_gold = tp + a, n_pred + b, n_gold + c
    return {"n": len(passages), "precision": tp / n_pred if n_pred else 0.0, "recall": tp / n_gold if n_gold else 0.0}
