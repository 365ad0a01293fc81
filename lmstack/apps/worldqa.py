"""Questions and passages rendered from the knowledge graph (our own phrasings, not the world's):

- ``fact_questions``: one-hop questions per (entity, relation), in a TRAIN and a disjoint EVAL phrasing family;
- ``multihop_questions``: two- and three-hop questions ("In which country was the carpenter who likes
  singing born?") with the conjunctive query that answers them;
- ``entity_passages``: one short passage per entity and language, the corpus RAG retrieves from;
- ``answer_with_graph``: parse a multi-hop question of these templates and answer it by graph lookups.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from lmstack.apps.kg import KnowledgeGraph

# relation -> lang -> split -> templates; fields: {name} {city} {country}
FACT_QUESTIONS = {
    "birth_year": {"en": {"train": ["In what year was {name} born?", "What is the birth year of {name}?"],
                          "eval": ["{name} was born in which year?"]},
                   "zh": {"train": ["{name}是哪一年出生的？", "{name}的出生年份是哪一年？"],
                          "eval": ["{name}出生于哪一年？"]}},
    "birthplace": {"en": {"train": ["Where was {name} born?", "What is the birthplace of {name}?"],
                          "eval": ["In which city was {name} born?"]},
                   "zh": {"train": ["{name}出生在哪里？", "{name}的出生地是哪里？"],
                          "eval": ["{name}出生在哪座城市？"]}},
    "occupation": {"en": {"train": ["What does {name} do for a living?", "What is the job of {name}?"],
                          "eval": ["What is {name}'s profession?"]},
                   "zh": {"train": ["{name}是做什么工作的？", "{name}的职业是什么？"],
                          "eval": ["{name}从事什么职业？"]}},
    "hobby": {"en": {"train": ["What does {name} like to do in free time?", "What is the hobby of {name}?"],
                     "eval": ["Which pastime does {name} enjoy?"]},
              "zh": {"train": ["{name}业余时间喜欢做什么？", "{name}的爱好是什么？"],
                     "eval": ["{name}平时有什么爱好？"]}},
    "country": {"en": {"train": ["Which country is {name} in?", "In what country is the city of {name}?"],
                       "eval": ["{name} belongs to which country?"]},
                "zh": {"train": ["{name}在哪个国家？", "{name}这座城市属于哪个国家？"],
                       "eval": ["{name}位于哪个国家？"]}},
    "capital": {"en": {"train": ["What is the capital of {name}?", "Which city is the capital of {name}?"],
                       "eval": ["Name the capital city of {name}."]},
                "zh": {"train": ["{name}的首都是哪里？", "{name}的首都是哪座城市？"],
                       "eval": ["哪座城市是{name}的首都？"]}},
}

# kind -> lang -> template; the fields say which entities the question names.
MULTIHOP = {
    "occ_hobby_country": {"en": "In which country was the {occ} who likes {hobby} born?",
                          "zh": "喜欢{hobby}的{occ}出生在哪个国家？"},
    "person_capital": {"en": "What is the capital of the country where {name} was born?",
                       "zh": "{name}出生的国家的首都是哪里？"},
    "occ_city_year": {"en": "In which year was the {occ} from {city} born?",
                      "zh": "来自{city}的{occ}是哪一年出生的？"},
    "person_country": {"en": "In which country was {name} born?", "zh": "{name}出生在哪个国家？"},
}
_MULTIHOP_PATTERNS = {
    "occ_hobby_country": [("?p", "occupation", "{occ}"), ("?p", "hobby", "{hobby}"), ("?p", "birthplace", "?c"),
                          ("?c", "country", "?answer")],
    "person_capital": [("{name}", "birthplace", "?c"), ("?c", "country", "?k"), ("?k", "capital", "?answer")],
    "occ_city_year": [("?p", "occupation", "{occ}"), ("?p", "birthplace", "{city}"), ("?p", "birth_year", "?answer")],
    "person_country": [("{name}", "birthplace", "?c"), ("?c", "country", "?answer")],
}
SUBJECT_TYPE = {"birth_year": "person", "birthplace": "person", "occupation": "person", "hobby": "person",
                "country": "city", "capital": "country"}


def value_name(kg: KnowledgeGraph, value: str, lang: str) -> str:
    """An object's display form: a literal as is, an entity by its name."""
    return kg.name(value, lang) if kg.objects(value, "type") else value


def fact_questions(kg: KnowledgeGraph, split: str, langs: Sequence[str] = ("en", "zh"),
                   entities: Sequence[str] | None = None) -> list[dict]:
    """Every (entity, relation) fact as a question of the ``split`` phrasing family, in each language."""
    out = []
    for relation, by_lang in FACT_QUESTIONS.items():
        for eid in kg.entities_of_type(SUBJECT_TYPE[relation]):
            if entities is not None and eid not in entities:
                continue
            for value in kg.objects(eid, relation):
                for lang in langs:
                    for template in by_lang[lang][split]:
                        out.append({"question": template.format(name=kg.name(eid, lang)), "lang": lang,
                                    "entity": eid, "relation": relation, "answer": value_name(kg, value, lang),
                                    "group": kg.meta.get(eid, {}).get("group", "place")})
    return out


def _fill(patterns, ids: dict) -> list[tuple[str, str, str]]:
    return [tuple(ids.get(x[1:-1], x) if x.startswith("{") else x for x in pat) for pat in patterns]


def multihop_questions(kg: KnowledgeGraph, langs: Sequence[str] = ("en", "zh")) -> list[dict]:
    """All multi-hop questions of the templates whose answer is unique in the graph."""
    people = kg.entities_of_type("person")
    cases = []
    for p in people:
        occ, hob, city = kg.objects(p, "occupation")[0], kg.objects(p, "hobby")[0], kg.objects(p, "birthplace")[0]
        cases += [("occ_hobby_country", {"occ": occ, "hobby": hob}), ("person_capital", {"name": p}),
                  ("occ_city_year", {"occ": occ, "city": city}), ("person_country", {"name": p})]
    out, seen = [], set()
    for kind, ids in cases:
        key = (kind, tuple(sorted(ids.items())))
        if key in seen:
            continue
        seen.add(key)
        patterns = _fill(_MULTIHOP_PATTERNS[kind], ids)
        answers = {r["?answer"] for r in kg.query(patterns)}
        if len(answers) != 1:
            continue  # ambiguous description (two carpenters who like singing): not a fair question
        answer = answers.pop()
        for lang in langs:
            fields = {k: kg.name(v, lang) for k, v in ids.items()}
            out.append({"question": MULTIHOP[kind][lang].format(**fields), "lang": lang, "kind": kind,
                        "patterns": [list(p) for p in patterns], "answer": value_name(kg, answer, lang),
                        "answer_id": answer, "hops": len(patterns) - (1 if kind.startswith("occ_") else 0)})
    return out


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    body = "".join(f"(?P<{p[1:-1]}>.+?)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(rf"^\s*{body}\s*$", re.IGNORECASE)


_PARSERS = [(kind, lang, _template_regex(t)) for kind, by_lang in MULTIHOP.items() for lang, t in by_lang.items()]
_FIELD_TYPE = {"occ": "occupation", "hobby": "hobby", "city": "city", "name": "person"}


def parse_multihop(kg: KnowledgeGraph, question: str) -> tuple[str, str, list] | None:
    """(kind, lang, patterns) for a question of the MULTIHOP templates whose names resolve in the graph."""
    for kind, lang, rx in _PARSERS:
        m = rx.match(question)
        if not m:
            continue
        ids = {}
        for field, text in m.groupdict().items():
            found = [e for e in kg.resolve(text) if _FIELD_TYPE[field] in kg.objects(e, "type")]
            if len(found) != 1:
                break
            ids[field] = found[0]
        else:
            return kind, lang, _fill(_MULTIHOP_PATTERNS[kind], ids)
    return None


def answer_with_graph(kg: KnowledgeGraph, question: str) -> str | None:
    """The answer (in the question's language) found by graph lookups, or None if the question is not of a
    known template, names an unknown entity, or has no unique answer."""
    parsed = parse_multihop(kg, question)
    if parsed is None:
        return None
    _, lang, patterns = parsed
    answers = sorted({r["?answer"] for r in kg.query(patterns)})
    return value_name(kg, answers[0], lang) if len(answers) == 1 else None


# ------------------------------------------------------------------ passages

# Each passage is built from these clauses, and a quoted RAG answer (``answer_clause``) is the clause that states
# the asked relation, so the two cannot drift apart. A person's hobby follows the occupation clause without the
# name ("X works as a teacher and enjoys chess."); quoted alone it takes the name ("X enjoys chess").
CLAUSES = {"en": {"born": "{name} was born in {year} in {city}", "occupation": "{name} works as a {occ}",
                  "hobby": "enjoys {hobby}", "country": "{city} is a city in {country}",
                  "capital": "The capital of {country} is {capital}"},
           "zh": {"born": "{name}于{year}年出生在{city}", "occupation": "{name}是一名{occ}",
                  "hobby": "业余时间喜欢{hobby}", "country": "{city}是{country}的一座城市",
                  "capital": "{country}的首都是{capital}"}}
# which clause states a relation; born states both the year and the city
_RELATION_CLAUSE = {"birth_year": "born", "birthplace": "born", "occupation": "occupation", "hobby": "hobby",
                    "country": "country", "capital": "capital"}


def _fields(kg: KnowledgeGraph, entity: str, lang: str) -> dict[str, str]:
    """The names and values an entity's clauses need."""
    one = lambda rel: kg.objects(entity, rel)[0]  # noqa: E731
    kind = kg.objects(entity, "type")[0]
    if kind == "person":
        return {"name": kg.name(entity, lang), "year": one("birth_year"), "city": kg.name(one("birthplace"), lang),
                "occ": kg.name(one("occupation"), lang), "hobby": kg.name(one("hobby"), lang)}
    if kind == "city":
        return {"city": kg.name(entity, lang), "country": kg.name(one("country"), lang)}
    return {"country": kg.name(entity, lang), "capital": kg.name(one("capital"), lang)}


def _passage(kg: KnowledgeGraph, entity: str, lang: str) -> str:
    c, f = CLAUSES[lang], _fields(kg, entity, lang)
    kind = kg.objects(entity, "type")[0]
    if kind == "person":
        if lang == "en":
            return f"{c['born']}. {c['occupation']} and {c['hobby']}.".format(**f)
        return f"{c['born']}。{c['occupation']}，{c['hobby']}。".format(**f)
    return (c["country"] if kind == "city" else c["capital"]).format(**f) + ("." if lang == "en" else "。")


def answer_clause(kg: KnowledgeGraph, entity: str, relation: str, lang: str) -> str:
    """The clause of ``entity``'s passage (``entity_passages``) that states ``relation``, restated with the
    subject's name: a RAG answer that quotes its passage ("Oscar Nilsson works as a teacher"). Quoting lets
    a small model answer by copying the tokens that follow the clause's opening in the passage, instead of
    recalling a value; the answer judge reads the value in it (the last number for years)."""
    if relation not in _RELATION_CLAUSE:
        raise ValueError(f"no passage clause for relation {relation!r} (known: {', '.join(SUBJECT_TYPE)})")
    f = _fields(kg, entity, lang)
    clause = CLAUSES[lang][_RELATION_CLAUSE[relation]].format(**f)
    return f["name"] + (" " if lang == "en" else "") + clause if relation == "hobby" else clause


# "the passages do not say": opens like the answer clause (the asked subject, copied from the question), so the
# model decides answer-or-refuse at the token after the subject, where it can look for that subject in the
# passage, rather than at the first token. en capital answers open with "The capital of {country} is". The default
# 1.3M-parameter model cannot make that check (it copies the name, then the passage's clause): the apps stage
# uses the plain CANNOT_FIND target (stage.Config.rag_no_answer).
NO_ANSWER = {"en": "{subject} is not in the passages.", "zh": "{subject}不在资料中。"}


def no_answer_clause(kg: KnowledgeGraph, entity: str, relation: str, lang: str) -> str:
    """The RAG target when no passage states ``entity``'s ``relation``: "Laura Foster is not in the passages.",
    "The capital of Norland is not in the passages.", "劳拉·福斯特不在资料中。" (the shared opening with
    ``answer_clause`` is why it names the subject)."""
    if relation not in _RELATION_CLAUSE:
        raise ValueError(f"no passage clause for relation {relation!r} (known: {', '.join(SUBJECT_TYPE)})")
    subject = kg.name(entity, lang)
    if relation == "capital" and lang == "en":
        return f"The capital of {subject} is not in the passages."
    return NO_ANSWER[lang].format(subject=subject)


def entity_passages(kg: KnowledgeGraph, langs: Sequence[str] = ("en", "zh")) -> list[dict]:
    """One passage per person, city and country and language: {"id", "text", "entity", "lang"}."""
    return [{"id": f"{e}:{lang}", "text": _passage(kg, e, lang), "entity": e, "lang": lang}
            for lang in langs for kind in ("person", "city", "country") for e in kg.entities_of_type(kind)]


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
