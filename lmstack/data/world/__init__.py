"""A synthetic bilingual (English / Chinese) world with known facts, for measuring every stage.

``build_world(WorldConfig(), seed)`` invents people (English and Chinese names, birth year, birthplace,
occupation, hobby, and a phone number as a PII field), fictional cities placed in real countries, and
uses real country-capital pairs (``entities``). From that single entity table it renders:

- pretraining documents (``documents``): several biographies per person in varied templates with shuffled
  sentence order, in English and Chinese, plus stories, geography notes, quizzes, written-out arithmetic
  and parallel EN/ZH sentences. Following Allen-Zhu & Li ("Physics of Language Models 3.1", 2023), facts
  are stated in diverse ways so that fine-tuning can later extract them; ``WorldConfig``'s ``bio_*`` and
  ``quiz_people`` fields switch each augmentation off for the knowledge experiment;
- dialogues (``dialogues``): SFT conversations (fact QA, multi-turn follow-ups, EN<->ZH translation,
  arithmetic, polite refusals of phone-number requests, honest "I don't know" about entities that do not
  exist), preference pairs (helpful / honest / harmless), and evaluation questions whose phrasings are
  HELD OUT from every training text.

People come in three groups, which supports the "SFT elicits rather than injects knowledge" experiment:
``pretrain+sft`` (facts in pretraining docs and asked in SFT), ``pretrain_only`` (facts only in pretraining
docs) and ``sft_only`` (facts only in SFT conversations, never in pretraining docs).
``facts_eval`` items carry ``in_pretrain`` / ``in_sft`` flags computed from what was actually written.

Judging answers (normalisation, matching, refusal and "I don't know" detection) lives in
``lmstack.eval.answers``; the world only produces the texts and the reference answers.
``python -m lmstack.data.world`` (``cli``) prints its statistics and samples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmstack.data.world.dialogues import DialogBuilder, few_shot_prompt, make_facts_eval, qa_prompt
from lmstack.data.world.documents import make_pretrain_docs
from lmstack.data.world.entities import (FORMAT_VERSION, City, Country, Fact, Person, World, WorldConfig,
                                         make_entities)
from lmstack.runs import read_json

__all__ = ["FORMAT_VERSION", "City", "Country", "Fact", "Person", "World", "WorldConfig", "build_world",
           "few_shot_prompt", "load_world", "qa_prompt"]


def build_world(cfg: WorldConfig | None = None, seed: int = 0) -> World:
    """Generate the world deterministically from ``cfg`` and ``seed``."""
    cfg = cfg or WorldConfig()
    w = World(cfg, seed)
    make_entities(w)
    w.reindex()
    make_pretrain_docs(w)
    b = DialogBuilder(w)
    w.sft_train = b.sft("train", cfg.n_sft_train) + b.sft_extra(cfg.sft_extra)
    w.sft_eval = b.sft("eval", cfg.n_sft_eval)
    w.prefs_train = b.prefs("train", cfg.n_prefs_train)
    w.prefs_eval = b.prefs("eval", cfg.n_prefs_eval)
    make_facts_eval(w)
    # Which group a conversation's (last) fact belongs to, for the elicit-vs-inject analysis on chat data.
    group = {f: item["group"] for item in w.facts_eval for f in [item["fact"]]}
    for item in w.sft_train + w.sft_eval:
        item["group"] = group[item["facts"][-1]] if item["facts"] else None
    return w


def load_world(directory: str | Path) -> World:
    """Rebuild the world recorded in ``directory/world.json`` (from its seed and config) and check that the
    entity table matches the file, so a changed generator cannot silently mislabel an old run's data."""
    path = Path(directory) / "world.json"
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (the data stage writes it)") from None
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {data.get('format')!r}, this lmstack reads {FORMAT_VERSION!r}")
    known = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(data["config"]) - known)
    if unknown:
        raise ValueError(f"{path}: config key {unknown[0]!r} is not a WorldConfig field ({', '.join(sorted(known))})")
    w = build_world(WorldConfig(**data["config"]), int(data["seed"]))
    if [dataclasses.asdict(p) for p in w.people] != data["people"] or \
            [dataclasses.asdict(c) for c in w.cities] != data["cities"]:
        raise ValueError(f"{path}: the world generator has changed since this file was written; "
                         "regenerate the data stage")
    return w


