"""Fictional people for the apps stage's training data: facts that no model has seen.

Why: the RAG and agent SFT data used to ask only about the world's training people, whose facts the model
learned in pretraining. A model can then answer those examples from memory and never learn to read the
passage or copy the name into a tool call, which is exactly what it must do for the held-out people it is
measured on. People invented per run (names from the world's name parts, random birth years, cities,
occupations and hobbies) leave copying as the only way to get the training answers right.

``augmented_graph`` adds them to a copy of the knowledge graph, so the same passage renderer, question
templates and tools (``kg_lookup``, ``kg_find``) produce their RAG examples and tool-use traces; the
measurements keep using the world's own graph.
"""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

from lmstack.apps.kg import KnowledgeGraph, world_triples
from lmstack.data import world_text as T

FICTIONAL_GROUP = "fictional"

# Extra TRAIN phrasings of our own (distinct from worldqa's EVAL family), so the model sees more than two
# wordings per relation and learns to find the name rather than memorise the question's shape.
EXTRA_TRAIN_QUESTIONS = {
    "birth_year": {"en": ["When was {name} born?", "Which year was {name} born in?"],
                   "zh": ["{name}生于哪一年？", "{name}哪年出生？"]},
    "birthplace": {"en": ["Which city is {name} from?", "Where does {name} come from?"],
                   "zh": ["{name}是哪里人？", "{name}来自哪座城市？"]},
    "occupation": {"en": ["What is {name}'s line of work?", "What work does {name} do?"],
                   "zh": ["{name}做什么工作？", "{name}的工作是什么？"]},
    "hobby": {"en": ["What hobby does {name} have?", "What does {name} enjoy doing?"],
              "zh": ["{name}喜欢做什么？", "{name}有什么兴趣爱好？"]},
}


def _fits(en: str, zh: str, taken_en: list[str], taken_zh: list[str]) -> bool:
    """No new name equals or contains a taken one (or the reverse), as in the world's own name pool."""
    return not any(en in x or x in en for x in taken_en) and not any(zh in x or x in zh for x in taken_zh)


def fictional_people(kg: KnowledgeGraph, n: int, seed: int | str, id_prefix: str = "f",
                     avoid: KnowledgeGraph | None = None) -> list[SimpleNamespace]:
    """``n`` invented people (the world's Person fields) born in the graph's cities, with names that clash
    with no entity of the graph (nor of ``avoid``) and with no other invented person; ids ``{id_prefix}0000``..."""
    rng = random.Random(f"fictional:{seed}")
    named = [(g, e) for g in (kg, avoid) if g is not None for e in _named_entities(g)]
    taken_en = [g.name(e, "en") for g, e in named]
    taken_zh = [g.name(e, "zh") for g, e in named]
    cities = kg.entities_of_type("city")
    if not cities:
        raise ValueError("the knowledge graph has no cities: fictional people need a birthplace")
    out = []
    for i in range(n):
        for _ in range(1000):
            if rng.random() < 0.5:
                sur_zh, sur_en = rng.choice(T.CN_SURNAMES)
                (g1_zh, g1_en), (g2_zh, g2_en) = rng.sample(T.CN_GIVEN, 2)
                en, zh = f"{sur_en} {g1_en.capitalize()}{g2_en}", sur_zh + g1_zh + g2_zh
            else:
                first_en, first_zh, _ = rng.choice(T.WESTERN_GIVEN)
                last_en, last_zh = rng.choice(T.WESTERN_SURNAMES)
                en, zh = f"{first_en} {last_en}", f"{first_zh}·{last_zh}"
            if _fits(en, zh, taken_en, taken_zh):
                break
        else:
            raise ValueError(f"ran out of unique fictional names after {i} people; lower apps.n_fictional")
        taken_en.append(en)
        taken_zh.append(zh)
        occ_en, occ_zh = rng.choice(T.OCCUPATIONS)
        hob_en, hob_zh = rng.choice(T.HOBBIES)
        out.append(SimpleNamespace(id=f"{id_prefix}{i:04d}", name_en=en, name_zh=zh, birth_year=rng.randrange(1900, 2021),
                                   birthplace=rng.choice(cities), occupation_en=occ_en, occupation_zh=occ_zh,
                                   hobby_en=hob_en, hobby_zh=hob_zh, group=FICTIONAL_GROUP))
    return out


def _named_entities(kg: KnowledgeGraph) -> list[str]:
    return list(dict.fromkeys(s for s, p, _ in kg.triples if p == "name_en"))


def augmented_graph(kg: KnowledgeGraph, n: int, seed: int | str, id_prefix: str = "f",
                    avoid: KnowledgeGraph | None = None) -> KnowledgeGraph:
    """A copy of ``kg`` plus ``n`` fictional people (meta group ``fictional``) named unlike anyone in ``avoid``."""
    people = fictional_people(kg, n, seed, id_prefix, avoid) if n > 0 else []
    triples, meta = world_triples(SimpleNamespace(countries=[], cities=[], people=people))
    return KnowledgeGraph(list(kg.triples) + triples, {**kg.meta, **meta})


def world_train_phrasings() -> dict[str, dict[str, list[str]]]:
    """The world's own TRAINING question forms for a person's relations (``world_text.QUESTIONS_TRAIN``, the
    forms its pretraining and SFT text ask) that name only ``{name}`` and that neither ``worldqa``'s own
    forms nor EXTRA_TRAIN_QUESTIONS already hold. Every held-out form is left out: worldqa's EVAL family (some
    of which the world trains on) and the world's QUESTIONS_EVAL. relation -> lang -> forms."""
    from lmstack.apps.worldqa import FACT_QUESTIONS

    out: dict[str, dict[str, list[str]]] = {}
    for relation in EXTRA_TRAIN_QUESTIONS:
        for lang in ("en", "zh"):
            ours = FACT_QUESTIONS[relation][lang]
            taken = set(ours["eval"]) | set(T.QUESTIONS_EVAL[lang][relation]) | set(ours["train"]) | \
                set(EXTRA_TRAIN_QUESTIONS[relation][lang])
            out.setdefault(relation, {})[lang] = [t for t in T.QUESTIONS_TRAIN[lang][relation] if t not in taken
                                                  and set(re.findall(r"\{(\w+)\}", t)) == {"name"}]
    return out


def extra_fact_questions(kg: KnowledgeGraph, entities, langs=("en", "zh"), templates: dict | None = None) -> list[dict]:
    """``worldqa.fact_questions`` items in the EXTRA_TRAIN_QUESTIONS phrasings (or ``templates``: relation ->
    lang -> forms, e.g. ``world_train_phrasings()``), for people in ``entities``."""
    from lmstack.apps.worldqa import value_name

    out = []
    for relation, by_lang in (EXTRA_TRAIN_QUESTIONS if templates is None else templates).items():
        for eid in entities:
            for value in kg.objects(eid, relation):
                for lang in langs:
                    for template in by_lang[lang]:
                        out.append({"question": template.format(name=kg.name(eid, lang)), "lang": lang,
                                    "entity": eid, "relation": relation, "answer": value_name(kg, value, lang),
                                    "group": kg.meta.get(eid, {}).get("group")})
    return out


COPY_PROMPTS = {"en": ["Repeat exactly: {s}", "Copy this: {s}", "Say it back: {s}"],
                "zh": ["原样重复：{s}", "照抄：{s}", "请复述：{s}"]}


def copy_chat_examples(kg: KnowledgeGraph, n: int, seed: int, people: list[str] | None = None) -> list[dict]:
    """Chat turns whose answer is a verbatim copy of a string in the question: names (of the graph's people,
    fictional ones included), numbers, arithmetic expressions and city names. Mixed into SFT, they keep the
    copy mechanism (``copying.py``) in use in the chat format, where the RAG and tool answers need it.
    ``people``: whose names may appear (default: every person of the graph)."""
    rng = random.Random(f"copy-chat:{seed}")
    people = kg.entities_of_type("person") if people is None else list(people)
    cities = kg.entities_of_type("city")
    out = []
    for i in range(n):
        lang = "en" if i % 2 == 0 else "zh"
        parts = []
        for _ in range(rng.randint(2, 6)):
            kind = rng.random()
            if kind < 0.35 and people:
                parts.append(kg.name(rng.choice(people), lang))
            elif kind < 0.55 and cities:
                parts.append(kg.name(rng.choice(cities), lang))
            elif kind < 0.8:
                parts.append(str(rng.randint(10, 99999)))
            else:
                a, b = rng.randint(10, 9999), rng.randint(2, 999)
                parts.append(f"{a} {rng.choice('+-×')} {b}")
        text = (", " if lang == "en" else "，").join(parts)
        prompt = rng.choice(COPY_PROMPTS[lang]).format(s=text)
        out.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}],
                    "task": "copy", "answer": text, "lang": lang, "facts": []})
    return out
