"""A synthetic bilingual (English / Chinese) world with known facts, for measuring every stage.

``build_world(WorldConfig(), seed)`` invents people (English and Chinese names, birth year, birthplace,
occupation, hobby, and a phone number as a PII field), fictional cities placed in real countries, and
uses real country-capital pairs. From that single entity table it renders:

- pretraining documents (biographies, short stories, geography notes, quizzes, written-out arithmetic,
  parallel EN/ZH sentences) that state each fact many times in many phrasings;
- SFT conversations (fact QA, multi-turn follow-ups, EN<->ZH translation, arithmetic, polite refusals of
  phone-number requests, honest "I don't know" about entities that do not exist);
- preference pairs (helpful / honest / harmless);
- evaluation sets whose questions use HELD-OUT phrasings that no training text contains.

People come in three groups, which supports the "SFT elicits rather than injects knowledge" experiment:
``pretrain+sft`` (facts in pretraining docs and asked in SFT), ``pretrain_only`` (facts only in pretraining
docs) and ``sft_only`` (facts only in SFT conversations, never in pretraining docs).
``facts_eval`` items carry ``in_pretrain`` / ``in_sft`` flags computed from what was actually written.

Determinism: every random choice comes from ``random.Random`` seeded with a string derived from the seed
(seeding with a str hashes it with SHA-512, not ``hash()``), and nothing iterates over a set of strings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import string
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from lmstack.data import world_text as T
from lmstack.runs import read_json

FORMAT_VERSION = "lmstack-world/1"

# Share of each SFT task in sft_train / sft_eval (largest-remainder rounding keeps the total exact).
SFT_TASK_MIX = {"fact_qa": 0.40, "multiturn": 0.12, "translate": 0.16, "arith": 0.14, "refuse_pii": 0.09, "idk": 0.09}
PREF_CATEGORY_MIX = {"helpful": 1 / 3, "honest": 1 / 3, "harmless": 1 / 3}


@dataclass
class WorldConfig:
    """Sizes of the synthetic world. Defaults are the cpu-speedrun values."""

    n_people: int = 40                 # people whose facts are stated in pretraining documents
    n_sft_only_people: int = 8         # held-out group: facts stated only in SFT conversations
    sft_people_fraction: float = 0.5   # share of the n_people whose facts are also asked in SFT
    n_cities: int = 12                 # fictional cities (each in one of the countries)
    n_countries: int = 20              # real country-capital pairs used (at most len(world_text.COUNTRIES))
    sft_place_fraction: float = 0.5    # share of city->country and country->capital facts also asked in SFT
    bios_per_person: int = 12          # biographies per person, alternating English / Chinese
    n_stories: int = 240               # short stories (one or two people each)
    n_geo_docs: int = 60               # geography notes (city->country, country->capital)
    n_quiz_docs: int = 80              # "Question: ... Answer: ..." quizzes with training phrasings
    n_arith_docs: int = 160            # arithmetic written out with answers
    n_parallel_docs: int = 120         # parallel EN/ZH sentences
    phone_in_bio_prob: float = 0.3     # chance a biography states the phone number (PII in the corpus)
    n_sft_train: int = 1500
    n_sft_eval: int = 300
    n_prefs_train: int = 800
    n_prefs_eval: int = 150
    n_unknown_people: int = 24         # names of people who do not exist (half for training, half for eval)
    n_unknown_cities: int = 12         # names of cities that do not exist (half for training, half for eval)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"WorldConfig.{f.name}={value} must be >= 0")
        if self.n_people < 2:
            raise ValueError(f"WorldConfig.n_people={self.n_people}: need at least 2 (one pretrain+sft, one pretrain-only)")
        if self.n_cities < 2:
            raise ValueError(f"WorldConfig.n_cities={self.n_cities}: need at least 2 (wrong answers need an alternative)")
        if not 2 <= self.n_countries <= len(T.COUNTRIES):
            raise ValueError(f"WorldConfig.n_countries={self.n_countries}: must be between 2 and "
                             f"{len(T.COUNTRIES)} (the built-in real country-capital pairs)")
        for name in ("sft_people_fraction", "sft_place_fraction", "phone_in_bio_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)} must be between 0 and 1")
        if round(self.n_people * self.sft_people_fraction) + self.n_sft_only_people == 0 and \
                (self.n_sft_train or self.n_prefs_train):
            raise ValueError("WorldConfig: SFT needs people to ask about; raise sft_people_fraction "
                             "or n_sft_only_people above 0 (or set n_sft_train = n_prefs_train = 0)")
        if self.n_unknown_people < 2 or self.n_unknown_cities < 2:
            raise ValueError("WorldConfig.n_unknown_people and n_unknown_cities must be >= 2 "
                             "(one half for training, the other for evaluation)")


@dataclass
class Country:
    id: str
    name_en: str
    name_zh: str
    capital_en: str
    capital_zh: str


@dataclass
class City:
    id: str
    name_en: str
    name_zh: str
    country: str  # Country.id


@dataclass
class Person:
    id: str
    name_en: str
    name_zh: str
    gender: str  # "f" | "m"
    birth_year: int
    birthplace: str  # City.id
    occupation_en: str
    occupation_zh: str
    hobby_en: str
    hobby_zh: str
    phone: str  # PII
    group: str  # "pretrain+sft" | "pretrain_only" | "sft_only"


@dataclass
class Fact:
    id: str           # "person:p003:birthplace", "city:c02:country", "country:france:capital"
    type: str         # one of world_text.FACT_TYPES
    entity: str       # entity id
    answer_en: str
    answer_zh: str


# ----------------------------------------------------------------------------------------- answer checks

_SPAN_END = re.compile(r"[\n.!?。！？;；]")
_NUMBER = re.compile(r"-?\d+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")


def normalize_answer(s: str) -> str:
    """Lower-case, NFKC (full-width -> ASCII), punctuation and English articles removed, spaces collapsed,
    and no spaces between Chinese characters (SQuAD-style normalization, extended to Chinese)."""
    s = unicodedata.normalize("NFKC", s).lower().replace("\u2019", "'")
    s = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    s = " ".join(s.split())
    return _CJK_GAP.sub("", s)


def first_answer_span(text: str) -> str:
    """The first clause of a model's answer: up to the first newline or sentence end.
    A completion such as " Paris\\nQuestion: ..." or "Li Wei was born in 1987. Later ..." is cut there."""
    text = unicodedata.normalize("NFKC", text).strip()
    m = _SPAN_END.search(text)
    return text[: m.start()] if m else text


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _contains_as_span(haystack: str, needle: str) -> bool:
    start = 0
    while (i := haystack.find(needle, start)) >= 0:
        before = haystack[i - 1] if i > 0 else ""
        j = i + len(needle)
        after = haystack[j] if j < len(haystack) else ""
        if not (before and _is_word_char(before)) and not (after and _is_word_char(after)):
            return True
        start = i + 1
    return False


def answer_matches(pred: str, answer: str, exact: bool = False) -> bool:
    """True if the first clause of ``pred`` states ``answer``.

    - numeric answers: the LAST number in the first clause must equal it ("23 + 45 = 68" -> 68,
      "Li Wei was born in 1987." -> 1987), so restating the operands does not count;
    - other answers: the normalized answer occurs in the normalized first clause as a whole word
      ("Li Wei was born in Valmora" matches "Valmora"; "Valmorax" does not);
    - ``exact=True``: the normalized first clause must equal the normalized answer.
    """
    span = first_answer_span(pred)
    norm_answer = normalize_answer(answer)
    if not norm_answer:
        return False
    if exact:
        return normalize_answer(span) == norm_answer
    if re.fullmatch(r"-?\d+", norm_answer.replace(" ", "")):
        numbers = _NUMBER.findall(span)
        return bool(numbers) and int(numbers[-1]) == int(norm_answer.replace(" ", ""))
    return _contains_as_span(normalize_answer(span), norm_answer)


_REFUSAL_RES = [
    re.compile(r"\b(?:can't|cannot|can not|won't|unable to|not able to|not allowed to|shouldn't)\b[^.!?]{0,40}?"
               r"\b(?:share|give|provide|disclose|reveal|hand out|discuss)\b"),
    re.compile(r"\bprivacy\b|\bprivate (?:information|data|details|phone)"),
    re.compile(r"(?:不能|无法|不便|不可以|不方便|不会)(?:提供|透露|分享|告诉|讨论|给出)"),
    re.compile(r"隐私"),
]
_IDK_RES = [
    re.compile(r"\b(?:don't|do not|doesn't) know\b"),
    re.compile(r"\bno (?:information|record|idea|knowledge)\b"),
    re.compile(r"\bnot aware of\b|\bnever heard of\b|\bnot sure\b|\bunknown to me\b"),
    re.compile(r"不知道|不清楚|没听说过|不了解|不确定"),
    re.compile(r"没有[^。，,.]{0,12}(?:信息|记录|资料)"),
]


def _casefold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")


def is_refusal(text: str) -> bool:
    """Does ``text`` decline to give information (the world's PII refusals, EN and ZH, and similar)?"""
    t = _casefold(text)
    return any(rx.search(t) for rx in _REFUSAL_RES)


def is_idk(text: str) -> bool:
    """Does ``text`` admit not knowing ("I don't know", "I have no information about ...", 我不知道, 没听说过 ...)?"""
    t = _casefold(text)
    return any(rx.search(t) for rx in _IDK_RES)


def qa_prompt(question: str, lang: str) -> str:
    """Completion-style prompt: "Question: ...\\nAnswer:" (EN) or "问题：...\\n答案：" (ZH)."""
    fmt, _ = T.QA_FORMAT[_check_lang(lang)]
    return fmt.format(q=question)


def few_shot_prompt(item: dict, shots: Sequence[dict | tuple[str, str]], lang: str | None = None) -> str:
    """A few-shot completion prompt: each shot as "Question: q\\nAnswer: a", then ``item``'s question.

    ``item`` and dict shots are facts_eval-style (keys ``question`` and ``answer``); shots may also be
    ``(question, answer)`` tuples. A shot with the same question as ``item`` is skipped, so an item never
    sees its own answer. ``lang`` defaults to ``item["lang"]`` and picks the Question/问题 format.
    """
    lang = _check_lang(lang or item.get("lang", "en"))
    fmt, sep = T.QA_FORMAT[lang]
    if "question" not in item:
        raise KeyError("few_shot_prompt: item has no 'question' field (use a facts_eval item)")
    parts = []
    for shot in shots:
        q, a = (shot["question"], shot["answer"]) if isinstance(shot, dict) else shot
        if q == item["question"]:
            continue
        parts.append(fmt.format(q=q) + sep + a)
    parts.append(fmt.format(q=item["question"]))
    return "\n\n".join(parts)


def _check_lang(lang: str) -> str:
    if lang not in ("en", "zh"):
        raise ValueError(f"lang={lang!r}: expected 'en' or 'zh'")
    return lang


# ----------------------------------------------------------------------------------------- the world


def _largest_remainder(total: int, mix: dict[str, float]) -> dict[str, int]:
    raw = {k: total * w / sum(mix.values()) for k, w in mix.items()}
    counts = {k: int(v) for k, v in raw.items()}
    order = sorted(mix, key=lambda k: (-(raw[k] - counts[k]), list(mix).index(k)))
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class World:
    """The generated world: entity tables plus every text rendered from them (see module docstring)."""

    def __init__(self, cfg: WorldConfig, seed: int):
        self.config = cfg
        self.seed = seed
        self.countries: list[Country] = []
        self.cities: list[City] = []
        self.people: list[Person] = []
        self.unknown_people: dict[str, list[dict]] = {"train": [], "eval": []}
        self.unknown_cities: dict[str, list[dict]] = {"train": [], "eval": []}
        self.facts: list[Fact] = []
        self.sft_place_facts: list[str] = []  # city->country / capital facts that SFT also asks about
        self.docs: list[dict] = []
        self.sft_train: list[dict] = []
        self.sft_eval: list[dict] = []
        self.prefs_train: list[dict] = []
        self.prefs_eval: list[dict] = []
        self.facts_eval: list[dict] = []
        # fact id -> {"en": n, "zh": n}: how many times pretraining documents state it
        self.pretrain_mentions: dict[str, Counter] = {}
        # kind -> number of items (bio paragraphs, stories, statements, quiz questions, problems, sentence pairs)
        self.doc_items: Counter = Counter()

    # ------------------------------------------------------------------ lookups
    def _rng(self, part: str) -> random.Random:
        return random.Random(f"lmstack-world:{self.seed}:{part}")

    def country(self, cid: str) -> Country:
        return self._country_by_id[cid]

    def city(self, cid: str) -> City:
        return self._city_by_id[cid]

    def person(self, pid: str) -> Person:
        return self._person_by_id[pid]

    def fact(self, fid: str) -> Fact:
        return self._fact_by_id[fid]

    def people_in(self, *groups: str) -> list[Person]:
        return [p for p in self.people if p.group in groups]

    # ------------------------------------------------------------------ template fields
    def person_fields(self, p: Person | dict, lang: str) -> dict[str, Any]:
        """Fields for the templates of world_text; ``p`` may be an unknown person (dict with name/gender)."""
        if isinstance(p, dict):  # a person who does not exist: only a name and a gender
            name_en, name_zh, gender = p["name_en"], p["name_zh"], p["gender"]
        else:
            name_en, name_zh, gender = p.name_en, p.name_zh, p.gender
        if lang == "en":
            f = {"name": name_en, "pron": "she" if gender == "f" else "he", "poss": "her" if gender == "f" else "his"}
            f.update(Pron=_cap(f["pron"]), Poss=_cap(f["poss"]))
        else:
            pron = "她" if gender == "f" else "他"
            f = {"name": name_zh, "pron": pron, "Pron": pron, "poss": pron + "的", "Poss": pron + "的"}
        if isinstance(p, Person):
            f.update(self.city_fields(self.city(p.birthplace), lang))
            f["year"] = p.birth_year
            f["phone"] = p.phone
            if lang == "en":
                f.update(occ=p.occupation_en, a_occ=_article(p.occupation_en), Occ=_cap(p.occupation_en),
                         hobby=p.hobby_en, Hobby=_cap(p.hobby_en))
            else:
                f.update(occ=p.occupation_zh, a_occ=p.occupation_zh, Occ=p.occupation_zh,
                         hobby=p.hobby_zh, Hobby=p.hobby_zh)
        return f

    def city_fields(self, c: City | dict, lang: str) -> dict[str, Any]:
        if isinstance(c, dict):  # a city that does not exist
            return {"city": c["name_en"] if lang == "en" else c["name_zh"]}
        f = {"city": c.name_en if lang == "en" else c.name_zh}
        f.update(self.country_fields(self.country(c.country), lang))
        return f

    def country_fields(self, k: Country, lang: str) -> dict[str, Any]:
        if lang == "en":
            return {"country": k.name_en, "Country": _cap(k.name_en), "capital": k.capital_en}
        return {"country": k.name_zh, "Country": k.name_zh, "capital": k.capital_zh}

    def fact_fields(self, fact: Fact, lang: str) -> dict[str, Any]:
        if fact.type in T.PERSON_FACTS:
            return self.person_fields(self.person(fact.entity), lang)
        if fact.type == "city_country":
            return self.city_fields(self.city(fact.entity), lang)
        return self.country_fields(self.country(fact.entity), lang)

    def answer(self, fact: Fact, lang: str) -> str:
        return fact.answer_en if lang == "en" else fact.answer_zh

    # ------------------------------------------------------------------ public API
    def pretrain_docs(self) -> Iterator[dict]:
        """Pretraining documents: {"text", "source": "world", "lang": "en"|"zh"|"mixed", "kind"}."""
        for doc in self.docs:
            yield dict(doc)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "seed": self.seed,
            "config": dataclasses.asdict(self.config),
            "countries": [dataclasses.asdict(k) for k in self.countries],
            "cities": [dataclasses.asdict(c) for c in self.cities],
            "people": [dataclasses.asdict(p) for p in self.people],
            "unknown_people": self.unknown_people,
            "unknown_cities": self.unknown_cities,
            "facts": [dict(dataclasses.asdict(f), pretrain_mentions=dict(self.pretrain_mentions.get(f.id, {})))
                      for f in self.facts],
            "stats": self.stats(),
        }

    def stats(self) -> dict:
        """Document counts and characters per kind, and how often pretraining states each fact type."""
        by_kind: dict[str, dict[str, int]] = {}
        for d in self.docs:
            s = by_kind.setdefault(d["kind"], {"docs": 0, "items": self.doc_items.get(d["kind"], 0), "chars": 0})
            s["docs"] += 1
            s["chars"] += len(d["text"])
        mentions: dict[str, dict[str, float]] = {}
        for ftype in T.FACT_TYPES:
            counts = [sum(self.pretrain_mentions.get(f.id, Counter()).values())
                      for f in self.facts if f.type == ftype]
            stated = [c for c in counts if c > 0]
            mentions[ftype] = {
                "facts": len(counts), "facts_in_pretrain": len(stated),
                "min": min(stated) if stated else 0, "max": max(stated) if stated else 0,
                "mean": round(sum(stated) / len(stated), 2) if stated else 0.0,
            }
        return {
            "docs": len(self.docs), "chars": sum(len(d["text"]) for d in self.docs),
            "docs_by_kind": dict(sorted(by_kind.items())),
            "people": len(self.people), "cities": len(self.cities), "countries": len(self.countries),
            "facts": len(self.facts), "fact_mentions_in_pretrain": mentions,
            "sft_train": len(self.sft_train), "sft_eval": len(self.sft_eval),
            "prefs_train": len(self.prefs_train), "prefs_eval": len(self.prefs_eval),
            "facts_eval": len(self.facts_eval),
        }

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write world.json and the SFT / preference / eval jsonl files atomically; returns their paths."""
        from lmstack.runs import atomic_write_json, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, rows in (("sft_train", self.sft_train), ("sft_eval", self.sft_eval),
                           ("prefs_train", self.prefs_train), ("prefs_eval", self.prefs_eval),
                           ("facts_eval", self.facts_eval)):
            path = directory / f"{name}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            out[name] = path
        # world.json last: its presence marks a complete write.
        out["world"] = directory / "world.json"
        atomic_write_json(out["world"], self.to_json())
        return out


# ----------------------------------------------------------------------------------------- building


def build_world(cfg: WorldConfig | None = None, seed: int = 0) -> World:
    """Generate the world deterministically from ``cfg`` and ``seed``."""
    cfg = cfg or WorldConfig()
    w = World(cfg, seed)
    _make_entities(w)
    _index(w)
    _make_pretrain_docs(w)
    b = _DialogBuilder(w)
    w.sft_train = b.sft("train", cfg.n_sft_train)
    w.sft_eval = b.sft("eval", cfg.n_sft_eval)
    w.prefs_train = b.prefs("train", cfg.n_prefs_train)
    w.prefs_eval = b.prefs("eval", cfg.n_prefs_eval)
    _make_facts_eval(w)
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


def _index(w: World) -> None:
    w._country_by_id = {k.id: k for k in w.countries}
    w._city_by_id = {c.id: c for c in w.cities}
    w._person_by_id = {p.id: p for p in w.people}
    w._fact_by_id = {f.id: f for f in w.facts}


class _NamePool:
    """Unique names: no full name (EN or ZH) equals or contains another, so string checks stay exact."""

    def __init__(self):
        self.en: list[str] = []
        self.zh: list[str] = []

    def fits(self, en: str, zh: str) -> bool:
        for a, b in ((en, self.en), (zh, self.zh)):
            if any(a in x or x in a for x in b):
                return False
        return True

    def add(self, en: str, zh: str) -> None:
        self.en.append(en)
        self.zh.append(zh)


def _new_person_name(rng: random.Random, pool: _NamePool) -> tuple[str, str, str]:
    for _ in range(10_000):
        if rng.random() < 0.5:
            sur_zh, sur_en = rng.choice(T.CN_SURNAMES)
            (g1_zh, g1_en), (g2_zh, g2_en) = rng.sample(T.CN_GIVEN, 2)
            en, zh, gender = f"{sur_en} {_cap(g1_en)}{g2_en}", sur_zh + g1_zh + g2_zh, rng.choice("fm")
        else:
            first_en, first_zh, gender = rng.choice(T.WESTERN_GIVEN)
            last_en, last_zh = rng.choice(T.WESTERN_SURNAMES)
            en, zh = f"{first_en} {last_en}", f"{first_zh}·{last_zh}"
        if pool.fits(en, zh):
            pool.add(en, zh)
            return en, zh, gender
    raise RuntimeError("ran out of unique person names; lower n_people / n_unknown_people")


def _new_city_name(rng: random.Random, pool: _NamePool) -> tuple[str, str]:
    for _ in range(10_000):
        (s_en, s_zh), (m_en, m_zh), (e_en, e_zh) = (rng.choice(T.CITY_STARTS), rng.choice(T.CITY_MIDS),
                                                    rng.choice(T.CITY_ENDS))
        en, zh = s_en + m_en + e_en, s_zh + m_zh + e_zh
        if pool.fits(en, zh):
            pool.add(en, zh)
            return en, zh
    raise RuntimeError("ran out of unique city names; lower n_cities / n_unknown_cities")


def _new_phone(rng: random.Random, chinese: bool, used: set[str]) -> str:
    while True:
        if chinese:
            phone = f"+86 1{rng.choice('3589')}{rng.randrange(10)}-{rng.randrange(10_000):04d}-{rng.randrange(10_000):04d}"
        else:  # 555-01XX is reserved for fiction in North America
            phone = f"+1 ({rng.randrange(201, 990)}) 555-01{rng.randrange(100):02d}"
        if phone not in used:
            used.add(phone)
            return phone


def _make_entities(w: World) -> None:
    cfg = w.config
    rng = w._rng("entities")
    for en, zh, cap_en, cap_zh in rng.sample(T.COUNTRIES, cfg.n_countries):
        cid = re.sub(r"[^a-z]+", "_", en.lower().removeprefix("the ")).strip("_")
        w.countries.append(Country(cid, en, zh, cap_en, cap_zh))
    names = _NamePool()
    # Real country and capital names join the pool so no invented name contains one.
    for k in w.countries:
        names.add(k.name_en.removeprefix("the "), k.name_zh)
        names.add(k.capital_en, k.capital_zh)
    for i in range(cfg.n_cities):
        en, zh = _new_city_name(rng, names)
        # Round-robin over countries first so that cities spread over many countries.
        country = w.countries[i % len(w.countries)].id if i < len(w.countries) else rng.choice(w.countries).id
        w.cities.append(City(f"c{i:02d}", en, zh, country))
    n_total = cfg.n_people + cfg.n_sft_only_people
    n_both = round(cfg.n_people * cfg.sft_people_fraction)
    groups = (["pretrain+sft"] * n_both + ["pretrain_only"] * (cfg.n_people - n_both)
              + ["sft_only"] * cfg.n_sft_only_people)
    rng.shuffle(groups)
    phones: set[str] = set()
    for i in range(n_total):
        en, zh, gender = _new_person_name(rng, names)
        occ_en, occ_zh = rng.choice(T.OCCUPATIONS)
        hob_en, hob_zh = rng.choice(T.HOBBIES)
        w.people.append(Person(
            id=f"p{i:03d}", name_en=en, name_zh=zh, gender=gender, birth_year=rng.randrange(1940, 2006),
            birthplace=rng.choice(w.cities).id, occupation_en=occ_en, occupation_zh=occ_zh,
            hobby_en=hob_en, hobby_zh=hob_zh, phone=_new_phone(rng, "·" not in zh, phones), group=groups[i]))
    for split, n in (("train", cfg.n_unknown_people - cfg.n_unknown_people // 2),
                     ("eval", cfg.n_unknown_people // 2)):
        for _ in range(n):
            en, zh, gender = _new_person_name(rng, names)
            w.unknown_people[split].append({"name_en": en, "name_zh": zh, "gender": gender})
    for split, n in (("train", cfg.n_unknown_cities - cfg.n_unknown_cities // 2),
                     ("eval", cfg.n_unknown_cities // 2)):
        for _ in range(n):
            en, zh = _new_city_name(rng, names)
            w.unknown_cities[split].append({"name_en": en, "name_zh": zh})

    city = {c.id: c for c in w.cities}
    country = {k.id: k for k in w.countries}
    for p in w.people:
        c = city[p.birthplace]
        w.facts += [
            Fact(f"person:{p.id}:birth_year", "birth_year", p.id, str(p.birth_year), str(p.birth_year)),
            Fact(f"person:{p.id}:birthplace", "birthplace", p.id, c.name_en, c.name_zh),
            Fact(f"person:{p.id}:occupation", "occupation", p.id, p.occupation_en, p.occupation_zh),
            Fact(f"person:{p.id}:hobby", "hobby", p.id, p.hobby_en, p.hobby_zh),
        ]
    for c in w.cities:
        k = country[c.country]
        w.facts.append(Fact(f"city:{c.id}:country", "city_country", c.id, k.name_en, k.name_zh))
    for k in w.countries:
        w.facts.append(Fact(f"country:{k.id}:capital", "capital", k.id, k.capital_en, k.capital_zh))
    # Which place facts SFT also asks about (person facts follow the person's group).
    for ftype in ("city_country", "capital"):
        facts = [f.id for f in w.facts if f.type == ftype]
        w.sft_place_facts += sorted(rng.sample(facts, round(len(facts) * cfg.sft_place_fraction)))


def _sft_fact_ids(w: World) -> list[str]:
    """Facts that SFT / preference training data may state."""
    people = {p.id for p in w.people_in("pretrain+sft", "sft_only")}
    return [f.id for f in w.facts
            if (f.type in T.PERSON_FACTS and f.entity in people) or f.id in w.sft_place_facts]


def _pretrain_fact_ids(w: World) -> list[str]:
    people = {p.id for p in w.people_in("pretrain+sft", "pretrain_only")}
    return [f.id for f in w.facts if f.type not in T.PERSON_FACTS or f.entity in people]


# ----------------------------------------------------------------------------------------- pretraining


class _Cycle:
    """Endless shuffled passes over ``items``: balanced coverage instead of independent draws."""

    def __init__(self, rng: random.Random, items: Sequence):
        self.rng, self.items, self.queue = rng, list(items), []

    def next(self):
        if not self.items:
            raise ValueError("WorldConfig leaves nothing to draw from here (e.g. no people for SFT questions)")
        if not self.queue:
            self.queue = self.items[:]
            self.rng.shuffle(self.queue)
        return self.queue.pop()

    def next_where(self, ok) -> Any:
        """The next item satisfying ``ok`` (skipped items stay queued), or simply the next one if none does."""
        if not self.queue:
            self.queue = self.items[:]
            self.rng.shuffle(self.queue)
        for i in range(len(self.queue) - 1, -1, -1):
            if ok(self.queue[i]):
                return self.queue.pop(i)
        return self.queue.pop()


class _Picker:
    """Template choice without replacement inside one document: a page that repeats a template word for word
    trips repetition filters (Gopher's duplicate n-gram rules) and reads unnaturally."""

    def __init__(self, rng: random.Random):
        self.rng, self.left = rng, {}

    def pick(self, key, options: Sequence) -> Any:
        left = self.left.get(key)
        if not left:
            left = self.left[key] = list(options)
        return left.pop(self.rng.randrange(len(left)))


class _FreshPicker:
    """Per-key template choice without replacement across the whole corpus (a person's stories, a fact's quiz
    questions), preferring templates not yet on the current page: identical lines in two documents are
    removed by span deduplication, and identical n-grams on one page by repetition filters."""

    def __init__(self, rng: random.Random):
        self.rng, self.left = rng, {}

    def pick(self, key, options: Sequence, avoid: set) -> Any:
        left = self.left.get(key)
        if not left:
            left = self.left[key] = list(options)
        fresh = [i for i, t in enumerate(left) if t not in avoid] or list(range(len(left)))
        choice = left.pop(fresh[self.rng.randrange(len(fresh))])
        avoid.add(choice)
        return choice


def _count(w: World, fact_id: str, lang: str) -> None:
    w.pretrain_mentions.setdefault(fact_id, Counter())[lang] += 1


def _state(w: World, picker: _Picker, fact: Fact, lang: str, fields: dict | None = None) -> str:
    _count(w, fact.id, lang)
    return picker.pick((lang, fact.type), T.STATEMENTS[lang][fact.type]).format(**(fields or w.fact_fields(fact, lang)))


def _groups(rng: random.Random, items: list, low: int, high: int) -> list[list]:
    """Split ``items`` into consecutive groups of ``low``..``high`` (a short tail joins the previous group)."""
    groups, i = [], 0
    while i < len(items):
        size = rng.randint(low, high)
        groups.append(items[i:i + size])
        i += size
    if len(groups) > 1 and len(groups[-1]) < low:
        tail = groups.pop()
        groups[-1] = groups[-1] + tail
    return groups


def _spread_birthplaces(order: list[Person]) -> None:
    """Reorder so that neighbours (who share a page) rarely share a birthplace: one city name repeated on a
    short Chinese page is enough to trip duplicate n-gram filters."""
    for i in range(1, len(order)):
        window = {p.birthplace for p in order[max(0, i - 2):i]}
        if order[i].birthplace in window:
            for j in range(i + 1, len(order)):
                if order[j].birthplace not in window:
                    order[i], order[j] = order[j], order[i]
                    break


def _bio_paragraph(w: World, rng: random.Random, picker: _Picker, p: Person, lang: str) -> str:
    cfg = w.config
    named = w.person_fields(p, lang)
    # Chinese names (3-7 characters, each a "word") repeated in every sentence would make the page fail
    # duplicate n-gram filters: after the first sentence Chinese mostly refers back with 他/她.
    pronoun = dict(named, name=named["pron"]) if lang == "zh" else named
    facts = [w.fact(f"person:{p.id}:{t}") for t in T.PERSON_FACTS]
    rng.shuffle(facts)
    sentences = []
    for i, fact in enumerate(facts):
        fields = named if i == 0 or lang == "en" else pronoun
        sentences.append(_state(w, picker, fact, lang, fields))
        if fact.type == "birthplace" and rng.random() < (0.4 if lang == "en" else 0.2):
            sentences.append(_state(w, picker, w.fact(f"city:{p.birthplace}:country"), lang))
    for _ in range(rng.randint(1, 2)):
        filler = picker.pick((lang, "filler"), T.BIO_FILLERS[lang]).format(**(pronoun if lang == "zh" else named))
        sentences.insert(rng.randrange(1, len(sentences) + 1), filler)
    if rng.random() < cfg.phone_in_bio_prob:
        sentences.append(picker.pick((lang, "phone"), T.STATEMENTS[lang]["phone"]).format(**named))
    return {"en": " ", "zh": ""}[lang].join(sentences)


def _make_pretrain_docs(w: World) -> None:
    cfg = w.config
    rng = w._rng("pretrain")
    docs: list[dict] = []
    pretrain_people = w.people_in("pretrain+sft", "pretrain_only")
    joiner = {"en": " ", "zh": ""}
    w.doc_items = Counter()

    # Biographies: pages of 2-3 people; every paragraph states all four facts of its person. Each round is a
    # permutation of the people, so everyone gets exactly bios_per_person paragraphs, alternating EN / ZH.
    for r in range(cfg.bios_per_person):
        lang = "en" if r % 2 == 0 else "zh"
        order = pretrain_people[:]
        rng.shuffle(order)
        _spread_birthplaces(order)
        for group in _groups(rng, order, 2, 3):
            picker = _Picker(rng)
            paragraphs = [_bio_paragraph(w, rng, picker, p, lang) for p in group]
            w.doc_items["bio"] += len(paragraphs)
            docs.append({"text": rng.choice(T.BIO_TITLES[lang]) + "\n\n" + "\n\n".join(paragraphs),
                         "lang": lang, "kind": "bio"})

    # Stories: people in turn, so everyone appears about equally often; 2-3 stories per page.
    story_fact = {"year": "birth_year", "city": "birthplace", "occ": "occupation", "a_occ": "occupation",
                  "hobby": "hobby"}
    people_cycle = _Cycle(rng, pretrain_people)
    story_picker = _FreshPicker(rng)
    made = pages = 0
    while made < cfg.n_stories:
        lang = "en" if pages % 2 == 0 else "zh"
        pages += 1
        on_page: set[str] = set()
        group = []
        for _ in range(min(rng.randint(2, 3), cfg.n_stories - made)):
            p = people_cycle.next()
            template = story_picker.pick((p.id, lang), T.STORIES[lang], on_page)
            fields = w.person_fields(p, lang)
            used = set(_template_fields(template))
            if "name2" in used:
                q = rng.choice([x for x in pretrain_people if x.id != p.id])
                f2 = w.person_fields(q, lang)
                fields.update(name2=f2["name"], poss2=f2["poss"], hobby2=f2["hobby"])
                _count(w, f"person:{q.id}:hobby", lang)
            for ftype in sorted({story_fact[k] for k in used if k in story_fact}):
                _count(w, f"person:{p.id}:{ftype}", lang)
            group.append(template.format(**fields))
        made += len(group)
        w.doc_items["story"] += len(group)
        docs.append({"text": rng.choice(T.STORY_TITLES[lang]) + "\n\n" + "\n\n".join(group),
                     "lang": lang, "kind": "story"})

    # Geography notes: city->country and country->capital, each fact in turn.
    place_cycle = _Cycle(rng, [f for f in w.facts if f.type in T.PLACE_FACTS])
    for i in range(cfg.n_geo_docs):
        lang = "en" if i % 2 == 0 else "zh"
        picker = _Picker(rng)
        lines = [_state(w, picker, place_cycle.next(), lang) for _ in range(rng.randint(10, 12))]
        w.doc_items["geo"] += len(lines)
        docs.append({"text": rng.choice(T.GEO_TITLES[lang]) + "\n" + joiner[lang].join(lines),
                     "lang": lang, "kind": "geo"})

    # Quizzes with the TRAINING question phrasings (the eval phrasings stay unseen).
    quiz_cycle = _Cycle(rng, [w.fact(fid) for fid in _pretrain_fact_ids(w)])
    question_picker = _FreshPicker(rng)
    for i in range(cfg.n_quiz_docs):
        lang = "en" if i % 2 == 0 else "zh"
        fmt, sep = T.QA_FORMAT[lang]
        on_page: set[str] = set()
        blocks = []
        entities: set[str] = set()
        for _ in range(rng.randint(6, 8)):
            fact = quiz_cycle.next_where(lambda f: f.entity not in entities)
            entities.add(fact.entity)
            q = question_picker.pick((lang, fact.id), T.QUESTIONS_TRAIN[lang][fact.type], on_page).format(
                **w.fact_fields(fact, lang))
            blocks.append(fmt.format(q=q) + sep + w.answer(fact, lang))
            _count(w, fact.id, lang)
        w.doc_items["quiz"] += len(blocks)
        docs.append({"text": rng.choice(T.QUIZ_TITLES[lang]) + "\n\n" + "\n\n".join(blocks),
                     "lang": lang, "kind": "quiz"})

    # Arithmetic written out: word problems plus a plain statement (only problems outside the eval split).
    for i in range(cfg.n_arith_docs):
        lang = "en" if i % 2 == 0 else "zh"
        picker = _Picker(rng)
        lines = []
        # Chinese pages stay under 20 numbers, where the mean-word-length rule would start to count digits.
        combos = [(op, t) for op, ts in T.WORD_PROBLEMS[lang].items() for t in ts]
        for _ in range(rng.randint(4, 5) if lang == "en" else rng.randint(3, 4)):
            op, template = combos[int(picker.pick("problem", [str(k) for k in range(len(combos))]))]
            op, a, b, c = _arith_problem(rng, "train", op)
            items, item, mw = picker.pick("countable", T.COUNTABLES)
            f = dict(w.person_fields(rng.choice(pretrain_people), lang), a=a, b=b, c=c, items=items, item=item, mw=mw)
            lines.append(template.format(**f))
        op, a, b, c = _arith_problem(rng, "train")
        plain = [t for t in T.ARITH_STATEMENTS[lang][op] if "=" not in t]
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(plain).format(a=a, b=b, c=c))
        w.doc_items["arith"] += len(lines)
        docs.append({"text": rng.choice(T.ARITH_TITLES[lang]) + "\n" + joiner[lang].join(lines),
                     "lang": lang, "kind": "arith"})

    # Parallel sentences: distinct pairs, one format per line (a format repeated on every line is boilerplate).
    for _ in range(cfg.n_parallel_docs):
        pairs: list[tuple[str, str]] = []
        for _ in range(40):
            if len(pairs) == 6:
                break
            pair = _sentence_pair(w, rng, "train", pretrain_people)
            if pair not in pairs:
                pairs.append(pair)
        picker = _Picker(rng)
        lines = [picker.pick("format", T.PARALLEL_FORMATS).format(en=en, zh=zh) for en, zh in pairs]
        w.doc_items["parallel"] += len(lines)
        docs.append({"text": rng.choice(T.PARALLEL_TITLES) + "\n" + "\n".join(lines), "lang": "mixed",
                     "kind": "parallel"})

    rng.shuffle(docs)
    w.docs = [{"text": d["text"], "source": "world", "lang": d["lang"], "kind": d["kind"]} for d in docs]


def _arith_is_heldout(op: str, a: int, b: int) -> bool:
    # A fixed arithmetic rule (no hash()): about one problem in seven is reserved for evaluation.
    return (a * 7 + b * 13 + "+-*".index(op)) % 7 == 0


def _arith_problem(rng: random.Random, split: str, op: str | None = None) -> tuple[str, int, int, int]:
    fixed_op = op
    while True:
        op = fixed_op or rng.choice("+-*")
        if op == "+":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            c = a + b
        elif op == "-":
            a = rng.randint(10, 99)
            b = rng.randint(2, a - 1)
            c = a - b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            c = a * b
        if _arith_is_heldout(op, a, b) == (split == "eval"):
            return op, a, b, c


def _sentence_pair(w: World, rng: random.Random, split: str, people: Sequence[Person]) -> tuple[str, str]:
    """A simple (English, Chinese) sentence pair from the train or held-out sentence templates."""
    ids = [i for i in range(len(T.SENTENCES)) if (i in T.TRANSLATION_EVAL_TEMPLATES) == (split == "eval")]
    _, en_t, zh_t = T.SENTENCES[rng.choice(ids)]
    animal, animals, animal_zh, mw = rng.choice(T.ANIMALS)
    p, p2 = rng.sample(list(people), 2) if len(people) >= 2 else (people[0], people[0])
    fe, fz, fe2, fz2 = (w.person_fields(p, "en"), w.person_fields(p, "zh"),
                        w.person_fields(p2, "en"), w.person_fields(p2, "zh"))
    adj, food, drink, obj, rel, feel, num, weather = (
        rng.choice(T.ANIMAL_ADJ), rng.choice(T.FOODS), rng.choice(T.DRINKS), rng.choice(T.OBJECTS),
        rng.choice(T.RELATIVES), rng.choice(T.FEELINGS), rng.choice(T.NUMBERS), rng.choice(T.WEATHER))
    fields = dict(animal=animal, animals=animals, animal_zh=animal_zh, mw=mw, adj=adj[0], adj_zh=adj[1],
                  food=food[0], food_zh=food[1], drink=drink[0], drink_zh=drink[1], object=obj[0], object_zh=obj[1],
                  rel=rel[0], rel_zh=rel[1], feel=feel[0], feel_zh=feel[1], n=num[0], n_zh=num[1],
                  weather=weather[0], weather_zh=weather[1], name=fe["name"], poss=fe["poss"], name_zh=fz["name"],
                  pron_zh=fz["pron"], name2=fe2["name"], name2_zh=fz2["name"])
    return en_t.format(**fields), zh_t.format(**fields)


# ----------------------------------------------------------------------------------------- SFT and preferences


class _DialogBuilder:
    def __init__(self, w: World):
        self.w = w
        self.sft_facts = [w.fact(fid) for fid in _sft_fact_ids(w)]
        self.all_facts = list(w.facts)
        self.sft_people = w.people_in("pretrain+sft", "sft_only")
        self.pretrain_people = w.people_in("pretrain+sft", "pretrain_only")

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _lang(rng: random.Random) -> str:
        return "en" if rng.random() < 0.5 else "zh"

    def _system(self, rng, split, domain, lang) -> dict:
        return {"role": "system", "content": rng.choice(T.SYSTEM_PROMPTS[split][domain][lang])}

    def _question(self, rng, split, fact: Fact, lang) -> str:
        bank = T.QUESTIONS_TRAIN if split == "train" else T.QUESTIONS_EVAL
        return rng.choice(bank[lang][fact.type]).format(**self.w.fact_fields(fact, lang))

    def _answer_text(self, rng, fact: Fact, lang, fields: dict | None = None) -> str:
        return rng.choice(T.ANSWERS[lang][fact.type]).format(**(fields or self.w.fact_fields(fact, lang)))

    def _wrong_fields(self, rng, fact: Fact, lang) -> dict:
        """Template fields with the fact's value replaced by another plausible value."""
        w = self.w
        f = dict(w.fact_fields(fact, lang))
        if fact.type == "birth_year":
            f["year"] = int(f["year"]) + rng.choice([-1, 1]) * rng.randint(1, 15)
        elif fact.type == "birthplace":
            f["city"] = w.city_fields(rng.choice([c for c in w.cities if c.id != w.person(fact.entity).birthplace]),
                                      lang)["city"]
        elif fact.type == "occupation":
            occ_en, occ_zh = rng.choice([o for o in T.OCCUPATIONS if o[0] != w.person(fact.entity).occupation_en])
            f.update(occ=occ_en if lang == "en" else occ_zh, a_occ=_article(occ_en) if lang == "en" else occ_zh,
                     Occ=_cap(occ_en) if lang == "en" else occ_zh)
        elif fact.type == "hobby":
            h_en, h_zh = rng.choice([h for h in T.HOBBIES if h[0] != w.person(fact.entity).hobby_en])
            f.update(hobby=h_en if lang == "en" else h_zh, Hobby=_cap(h_en) if lang == "en" else h_zh)
        elif fact.type == "city_country":
            other = rng.choice([k for k in w.countries if k.id != w.city(fact.entity).country])
            f.update({k: v for k, v in w.country_fields(other, lang).items() if k in ("country", "Country")})
        else:
            other = rng.choice([k for k in w.countries if k.id != fact.entity])
            f["capital"] = w.country_fields(other, lang)["capital"]
        return f

    def _unknown(self, rng, split) -> tuple[str, dict]:
        if rng.random() < 0.7:
            return "person", rng.choice(self.w.unknown_people[split])
        return "city", rng.choice(self.w.unknown_cities[split])

    def _unknown_question(self, rng, split, kind, entity, lang) -> tuple[str, str]:
        """A question about an entity that does not exist, and the fact type it asks for."""
        bank = T.QUESTIONS_TRAIN if split == "train" else T.QUESTIONS_EVAL
        if kind == "person":
            ftype = rng.choice(T.PERSON_FACTS)
            return rng.choice(bank[lang][ftype]).format(**self.w.person_fields(entity, lang)), ftype
        return rng.choice(bank[lang]["city_country"]).format(**self.w.city_fields(entity, lang)), "city_country"

    def _idk_text(self, rng, kind, entity, lang) -> str:
        if kind == "person":
            return rng.choice(T.IDK_PERSON[lang]).format(**self.w.person_fields(entity, lang))
        return rng.choice(T.IDK_CITY[lang]).format(**self.w.city_fields(entity, lang))

    def _fabrication(self, rng, kind, entity, ftype, lang) -> str:
        """A confident made-up answer (of the asked fact type) about an entity that does not exist."""
        w = self.w
        if kind == "person":  # borrow a real person's values under the unknown name
            f = dict(w.person_fields(rng.choice(w.people), lang))
            f.update(w.person_fields(entity, lang))
        else:
            f = dict(w.city_fields(rng.choice(w.cities), lang))
            f["city"] = w.city_fields(entity, lang)["city"]
        return rng.choice(T.ANSWERS[lang][ftype][:2]).format(**f)

    def _translation(self, rng, split) -> tuple[str, str, str, str]:
        en, zh = _sentence_pair(self.w, rng, split, self.pretrain_people)
        direction = rng.choice(["en_zh", "zh_en"])
        src, tgt = (en, zh) if direction == "en_zh" else (zh, en)
        request = rng.choice(T.TRANSLATE_REQUESTS[split][direction]).format(src=src)
        return direction, request, tgt, src

    def _arith(self, rng, split, lang) -> tuple[str, int, dict]:
        op, a, b, c = _arith_problem(rng, split)
        opw, opw_zh = T.OPS[op]
        f = dict(a=a, b=b, c=c, op=op, opw=opw, opw_zh=opw_zh)
        return rng.choice(T.ARITH_QUESTIONS[split][lang]).format(**f), c, f

    # -------------------------------------------------------------- SFT
    def sft(self, split: str, n: int) -> list[dict]:
        rng = self.w._rng(f"sft:{split}")
        counts = _largest_remainder(n, SFT_TASK_MIX)
        facts = self.sft_facts if split == "train" else self.all_facts
        people = self.sft_people if split == "train" else self.w.people
        fact_cycle = _Cycle(rng, facts)
        person_cycle = _Cycle(rng, people)
        seen: set[str] = set()
        items: list[dict] = []

        def add(item: dict) -> bool:
            # The user turns identify an item; retry on a repeat so eval sets do not count one question twice.
            key = "\x1f".join(m["content"] for m in item["messages"] if m["role"] == "user")
            if key in seen:
                return False
            seen.add(key)
            items.append(item)
            return True

        makers = {"fact_qa": lambda: self._sft_fact_qa(rng, split, fact_cycle.next()),
                  "multiturn": lambda: self._sft_multiturn(rng, split, person_cycle.next()),
                  "translate": lambda: self._sft_translate(rng, split),
                  "arith": lambda: self._sft_arith(rng, split),
                  "refuse_pii": lambda: self._sft_refuse(rng, split),
                  "idk": lambda: self._sft_idk(rng, split)}
        for task, count in counts.items():
            made = 0
            for _ in range(count * 20):
                if made == count:
                    break
                made += add(makers[task]())
            while made < count:  # the space of distinct items is exhausted: allow repeats
                items.append(makers[task]())
                made += 1
        rng.shuffle(items)
        return items

    def _sft_fact_qa(self, rng, split, fact: Fact) -> dict:
        lang = self._lang(rng)
        q = self._question(rng, split, fact, lang)
        return {"messages": [self._system(rng, split, "qa", lang), {"role": "user", "content": q},
                             {"role": "assistant", "content": self._answer_text(rng, fact, lang)}],
                "task": "fact_qa", "answer": self.w.answer(fact, lang), "lang": lang, "facts": [fact.id]}

    def _sft_multiturn(self, rng, split, p: Person) -> dict:
        w = self.w
        lang = self._lang(rng)
        t1, t2 = rng.sample(T.PERSON_FACTS, 2)
        f1, f2 = w.fact(f"person:{p.id}:{t1}"), w.fact(f"person:{p.id}:{t2}")
        fields = w.person_fields(p, lang)
        follow = T.FOLLOWUPS_TRAIN if split == "train" else T.FOLLOWUPS_EVAL
        msgs = [self._system(rng, split, "qa", lang),
                {"role": "user", "content": self._question(rng, split, f1, lang)},
                {"role": "assistant", "content": self._answer_text(rng, f1, lang)},
                {"role": "user", "content": rng.choice(follow[lang][t2]).format(**fields)},
                {"role": "assistant", "content": T.FOLLOWUP_ANSWERS[lang][t2].format(**fields)}]
        facts, answer = [f1.id, f2.id], w.answer(f2, lang)
        if t2 == "birthplace" and rng.random() < 0.5:
            f3 = w.fact(f"city:{p.birthplace}:country")
            msgs += [{"role": "user", "content": rng.choice(follow[lang]["city_country"]).format(**fields)},
                     {"role": "assistant", "content": T.FOLLOWUP_ANSWERS[lang]["city_country"].format(**fields)}]
            facts.append(f3.id)
            answer = w.answer(f3, lang)
        return {"messages": msgs, "task": "multiturn", "answer": answer, "lang": lang, "facts": facts}

    def _sft_translate(self, rng, split) -> dict:
        direction, request, target, _ = self._translation(rng, split)
        lang = direction.split("_")[1]
        return {"messages": [self._system(rng, split, "translate", lang), {"role": "user", "content": request},
                             {"role": "assistant", "content": target}],
                "task": "translate", "answer": target, "lang": lang, "direction": direction, "facts": []}

    def _sft_arith(self, rng, split) -> dict:
        lang = self._lang(rng)
        q, c, f = self._arith(rng, split, lang)
        return {"messages": [self._system(rng, split, "arith", lang), {"role": "user", "content": q},
                             {"role": "assistant", "content": rng.choice(T.ARITH_ANSWERS[lang]).format(**f)}],
                "task": "arith", "answer": str(c), "lang": lang, "facts": []}

    def _sft_refuse(self, rng, split) -> dict:
        w = self.w
        lang = self._lang(rng)
        msgs = [self._system(rng, split, "qa", lang)]
        facts = []
        if rng.random() < 0.3:  # ask a fact first, then the phone number with a pronoun
            p = rng.choice(self.sft_people if split == "train" else w.people)
            fact = w.fact(f"person:{p.id}:{rng.choice(T.PERSON_FACTS)}")
            msgs += [{"role": "user", "content": self._question(rng, split, fact, lang)},
                     {"role": "assistant", "content": self._answer_text(rng, fact, lang)},
                     {"role": "user", "content": rng.choice(T.PHONE_FOLLOWUPS[split][lang]).format(
                         **w.person_fields(p, lang))}]
            facts.append(fact.id)
        else:
            p = rng.choice(w.people)
            msgs.append({"role": "user", "content": rng.choice(T.PHONE_REQUESTS[split][lang]).format(
                **w.person_fields(p, lang))})
        msgs.append({"role": "assistant", "content": rng.choice(T.REFUSALS[lang]).format(**w.person_fields(p, lang))})
        return {"messages": msgs, "task": "refuse_pii", "answer": None, "lang": lang, "facts": facts}

    def _sft_idk(self, rng, split) -> dict:
        lang = self._lang(rng)
        kind, entity = self._unknown(rng, split)
        return {"messages": [self._system(rng, split, "qa", lang),
                             {"role": "user", "content": self._unknown_question(rng, split, kind, entity, lang)[0]},
                             {"role": "assistant", "content": self._idk_text(rng, kind, entity, lang)}],
                "task": "idk", "answer": None, "lang": lang, "facts": []}

    # -------------------------------------------------------------- preferences
    def prefs(self, split: str, n: int) -> list[dict]:
        rng = self.w._rng(f"prefs:{split}")
        counts = _largest_remainder(n, PREF_CATEGORY_MIX)
        fact_cycle = _Cycle(rng, self.sft_facts if split == "train" else self.all_facts)
        seen: set[str] = set()
        items: list[dict] = []
        makers = {"helpful": lambda: self._pref_helpful(rng, split, fact_cycle.next()),
                  "honest": lambda: self._pref_honest(rng, split, fact_cycle.next()),
                  "harmless": lambda: self._pref_harmless(rng, split)}
        for category, count in counts.items():
            made = 0
            for _ in range(count * 20):
                if made == count:
                    break
                item = makers[category]()
                if item["prompt"] + "\x1f" + item["rejected"] not in seen:
                    seen.add(item["prompt"] + "\x1f" + item["rejected"])
                    items.append(item)
                    made += 1
            while made < count:
                items.append(makers[category]())
                made += 1
        rng.shuffle(items)
        return items

    def _pref(self, prompt, chosen, rejected, category, kind, lang, facts) -> dict:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": category,
                "kind": kind, "lang": lang, "facts": facts}

    def _pref_helpful(self, rng, split, fact: Fact) -> dict:
        lang = self._lang(rng)
        kind = rng.choice(["unhelpful", "over_refusal", "wrong_arith", "untranslated"])
        if kind == "over_refusal" and fact.type not in T.PERSON_FACTS:
            kind = "unhelpful"  # refusing to talk about a person only makes sense for person facts
        if kind in ("unhelpful", "over_refusal"):
            fields = self.w.fact_fields(fact, lang)
            bank = T.UNHELPFUL if kind == "unhelpful" else T.OVER_REFUSALS
            return self._pref(self._question(rng, split, fact, lang), self._answer_text(rng, fact, lang),
                              rng.choice(bank[lang]).format(**fields), "helpful", kind, lang, [fact.id])
        if kind == "wrong_arith":
            q, c, f = self._arith(rng, split, lang)
            template = rng.choice(T.ARITH_ANSWERS[lang])
            wrong = dict(f, c=c + rng.choice([-1, 1]) * rng.randint(1, 10))
            return self._pref(q, template.format(**f), template.format(**wrong), "helpful", kind, lang, [])
        direction, request, target, source = self._translation(rng, split)
        return self._pref(request, target, source, "helpful", kind, direction.split("_")[1], [])

    def _pref_honest(self, rng, split, fact: Fact) -> dict:
        lang = self._lang(rng)
        if rng.random() < 0.5:
            template = rng.choice(T.ANSWERS[lang][fact.type][:2])
            return self._pref(self._question(rng, split, fact, lang), template.format(**self.w.fact_fields(fact, lang)),
                              template.format(**self._wrong_fields(rng, fact, lang)), "honest", "wrong_fact", lang,
                              [fact.id])
        kind, entity = self._unknown(rng, split)
        question, ftype = self._unknown_question(rng, split, kind, entity, lang)
        return self._pref(question, self._idk_text(rng, kind, entity, lang),
                          self._fabrication(rng, kind, entity, ftype, lang), "honest", "fabrication", lang, [])

    def _pref_harmless(self, rng, split) -> dict:
        lang = self._lang(rng)
        p = rng.choice(self.w.people)
        fields = self.w.person_fields(p, lang)
        return self._pref(rng.choice(T.PHONE_REQUESTS[split][lang]).format(**fields),
                          rng.choice(T.REFUSALS[lang]).format(**fields),
                          rng.choice(T.PHONE_LEAKS[lang]).format(**fields), "harmless", "pii_leak", lang, [])


# ----------------------------------------------------------------------------------------- facts eval


def _make_facts_eval(w: World) -> None:
    rng = w._rng("facts_eval")
    in_sft = {fid for item in w.sft_train for fid in item["facts"]}
    in_prefs = {fid for item in w.prefs_train for fid in item["facts"]}
    person_group = {p.id: p.group for p in w.people}
    items = []
    for fact in w.facts:
        in_pretrain = sum(w.pretrain_mentions.get(fact.id, Counter()).values()) > 0
        for lang in ("en", "zh"):
            question = rng.choice(T.QUESTIONS_EVAL[lang][fact.type]).format(**w.fact_fields(fact, lang))
            items.append({
                "prompt": qa_prompt(question, lang), "question": question, "answer": w.answer(fact, lang),
                "lang": lang, "fact": fact.id, "fact_type": fact.type,
                "group": person_group.get(fact.entity, "place"),
                "in_pretrain": in_pretrain, "in_sft": fact.id in in_sft, "in_prefs": fact.id in in_prefs,
            })
    w.facts_eval = items


# ----------------------------------------------------------------------------------------- CLI


def format_stats(w: World) -> str:
    s = w.stats()
    lines = ["| kind | docs | items | chars |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['docs']} | {v['items']} | {v['chars']} |" for k, v in s["docs_by_kind"].items()]
    lines += [f"| **total** | {s['docs']} | | {s['chars']} |", "",
              "| fact type | facts | stated in pretraining | times stated (min / mean / max) |", "|---|---:|---:|---|"]
    lines += [f"| {k} | {v['facts']} | {v['facts_in_pretrain']} | {v['min']} / {v['mean']} / {v['max']} |"
              for k, v in s["fact_mentions_in_pretrain"].items()]
    lines += ["", f"people {s['people']}, cities {s['cities']}, countries {s['countries']}; "
              f"sft_train {s['sft_train']}, sft_eval {s['sft_eval']}, prefs_train {s['prefs_train']}, "
              f"prefs_eval {s['prefs_eval']}, facts_eval {s['facts_eval']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m lmstack.data.world [--seed N] [--set n_people=10 ...] [--out DIR] [--sample N]``"""
    from lmstack.config import ConfigError, config_from_dict, parse_override

    ap = argparse.ArgumentParser(prog="lmstack.data.world", description="Generate the synthetic bilingual world.")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a WorldConfig field")
    ap.add_argument("--out", help="write world.json and the jsonl sets (plus pretrain.jsonl) here")
    ap.add_argument("--sample", type=int, default=0, help="print N sample documents and conversations")
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    try:
        for text in args.set:
            path, value = parse_override(text)
            overrides[".".join(path)] = value
        cfg = config_from_dict(WorldConfig, overrides, "world")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    w = build_world(cfg, args.seed)
    print(format_stats(w))
    rng = random.Random(0)
    for doc in rng.sample(w.docs, min(args.sample, len(w.docs))):
        print(f"\n--- {doc['kind']} ({doc['lang']})\n{doc['text']}")
    for item in rng.sample(w.sft_train, min(args.sample, len(w.sft_train))):
        print(f"\n--- sft {item['task']} ({item['lang']})")
        for m in item["messages"]:
            print(f"[{m['role']}] {m['content']}")
    if args.out:
        from lmstack.runs import atomic_write_text

        paths = w.write(args.out)
        atomic_write_text(Path(args.out) / "pretrain.jsonl",
                          "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in w.docs))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())} and {Path(args.out) / 'pretrain.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
