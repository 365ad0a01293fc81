"""The world's entities: sizes (``WorldConfig``), the entity tables (countries, cities, people, facts) and
the ``World`` object that holds them and everything rendered from them.

Determinism: every random choice comes from ``random.Random`` seeded with a string derived from the seed
(seeding with a str hashes it with SHA-512, not ``hash()``), and nothing iterates over a set of strings.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from lmstack.data import world_text as T

FORMAT_VERSION = "lmstack-world/1"

# Share of each SFT task in sft_train and in sft_eval (largest-remainder rounding keeps the total exact).
# The held-out mix is fixed so that changes to the training mix are measured on the same questions.
SFT_TASK_MIX = {"fact_qa": 0.36, "multiturn": 0.12, "translate": 0.15, "arith": 0.13, "refuse_pii": 0.12, "idk": 0.12}
SFT_EVAL_TASK_MIX = {"fact_qa": 0.36, "multiturn": 0.12, "translate": 0.15, "arith": 0.13, "refuse_pii": 0.12, "idk": 0.12}
PREF_CATEGORY_MIX = {"helpful": 1 / 3, "honest": 1 / 3, "harmless": 1 / 3}


@dataclass
class WorldConfig:
    """Sizes of the synthetic world. Defaults are the cpu-speedrun values, except sft_extra and
    arith_fact_share, which the recipe sets (the tests build small worlds from these defaults)."""

    n_people: int = 80                 # people whose facts are stated in pretraining documents
    n_sft_only_people: int = 12        # held-out group: facts stated only in SFT conversations
    sft_people_fraction: float = 0.5   # share of the n_people whose facts are also asked in SFT
    n_cities: int = 12                 # fictional cities (each in one of the countries)
    n_countries: int = 20              # real country-capital pairs used (at most len(world_text.COUNTRIES))
    sft_place_fraction: float = 0.5    # share of city->country and country->capital facts also asked in SFT
    bios_per_person: int = 12          # biographies per person (alternating English / Chinese when bilingual_bios)
    # How biographies state facts (Allen-Zhu & Li 2023, "Physics of Language Models 3.1": knowledge is
    # extractable by later fine-tuning only when pretraining states it in diverse ways):
    bio_templates: Literal["varied", "fixed"] = "varied"  # fixed: one template per fact, no filler sentences
    bio_permute: bool = True           # shuffle the order of the facts inside each biography
    bio_full_names: bool = False       # Chinese: repeat the full name in every sentence, not 他/她 (English always
                                       # does); off by default: the data stage's Gopher repetition filter drops
                                       # many Chinese pages that repeat a 3-7 character name in every sentence
    bilingual_bios: bool = True        # biographies alternate English / Chinese (false: English only)
    quiz_people: Literal["all", "sft"] = "all"  # whose facts the quizzes ask: every pretrained person, or
                                                # only the pretrain+sft group ("QA mixed into pretraining")
    n_stories: int = 240               # short stories (one or two people each)
    n_geo_docs: int = 60               # geography notes (city->country, country->capital)
    n_quiz_docs: int = 160             # "Question: ... Answer: ..." quizzes with training phrasings (QA mixed into pretraining)
    n_arith_docs: int = 160            # arithmetic written out with answers (word problems, EN and ZH)
    n_arith_drill_docs: int = 400      # pages of two-digit sums and differences stated in words (EN)
    arith_fact_share: float = 0.0      # share of those problems that are one-digit column facts ("7 plus 8 is 15",
                                       # "15 minus 9 is 6"): the sums inside SFT's worked answers (the recipe sets it)
    n_parallel_docs: int = 120         # parallel EN/ZH sentences
    n_copy_docs: int = 300             # pages of invented names and codes, each repeated: learning to copy
    phone_in_bio_prob: float = 0.3     # chance a biography states the phone number (PII in the corpus)
    n_sft_train: int = 3000
    # + this many training conversations per SFT task ("arith", "translate", ...), each task from a random
    # stream of its own so the rest of the set is unchanged (the default recipe sets them: cpu-speedrun.toml)
    sft_extra: dict[str, int] = field(default_factory=dict)
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
        unknown = sorted(set(self.sft_extra) - set(SFT_TASK_MIX))
        if unknown or any(not isinstance(n, int) or n < 0 for n in self.sft_extra.values()):
            raise ValueError(f"WorldConfig.sft_extra={self.sft_extra}: counts must be ints >= 0 and the tasks among "
                             f"{sorted(SFT_TASK_MIX)}")
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
        if self.arith_fact_share > 1:
            raise ValueError(f"WorldConfig.arith_fact_share={self.arith_fact_share} must be in [0, 1]")


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



# ----------------------------------------------------------------------------------------- helpers


def largest_remainder(total: int, mix: dict[str, float]) -> dict[str, int]:
    raw = {k: total * w / sum(mix.values()) for k, w in mix.items()}
    counts = {k: int(v) for k, v in raw.items()}
    order = sorted(mix, key=lambda k: (-(raw[k] - counts[k]), list(mix).index(k)))
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]



class Cycle:
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
    def rng(self, part: str) -> random.Random:
        return random.Random(f"lmstack-world:{self.seed}:{part}")

    def reindex(self) -> None:
        """Rebuild the id -> entity lookups after the entity tables change."""
        self._country_by_id = {k.id: k for k in self.countries}
        self._city_by_id = {c.id: c for c in self.cities}
        self._person_by_id = {p.id: p for p in self.people}
        self._fact_by_id = {f.id: f for f in self.facts}

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
            f.update(Pron=cap(f["pron"]), Poss=cap(f["poss"]))
        else:
            pron = "她" if gender == "f" else "他"
            f = {"name": name_zh, "pron": pron, "Pron": pron, "poss": pron + "的", "Poss": pron + "的"}
        if isinstance(p, Person):
            f.update(self.city_fields(self.city(p.birthplace), lang))
            f["year"] = p.birth_year
            f["phone"] = p.phone
            if lang == "en":
                f.update(occ=p.occupation_en, a_occ=article(p.occupation_en), Occ=cap(p.occupation_en),
                         hobby=p.hobby_en, Hobby=cap(p.hobby_en))
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
            return {"country": k.name_en, "Country": cap(k.name_en), "capital": k.capital_en}
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



# ----------------------------------------------------------------------------------------- entities


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
            en, zh, gender = f"{sur_en} {cap(g1_en)}{g2_en}", sur_zh + g1_zh + g2_zh, rng.choice("fm")
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


class UnseenNames:
    """Names for more entities that do not exist: none equals or contains a name of the world ``w`` (its invented
    people and places of both splits included) or another name drawn here."""

    def __init__(self, w: World):
        self._pool = _NamePool()
        for e in w.people + w.cities:
            self._pool.add(e.name_en, e.name_zh)
        for k in w.countries:
            self._pool.add(k.name_en.removeprefix("the "), k.name_zh)
            self._pool.add(k.capital_en, k.capital_zh)
        for split in ("train", "eval"):
            for e in w.unknown_people[split] + w.unknown_cities[split]:
                self._pool.add(e["name_en"], e["name_zh"])

    def person(self, rng: random.Random) -> dict:
        en, zh, gender = _new_person_name(rng, self._pool)
        return {"name_en": en, "name_zh": zh, "gender": gender}

    def city(self, rng: random.Random) -> dict:
        en, zh = _new_city_name(rng, self._pool)
        return {"name_en": en, "name_zh": zh}


def _new_phone(rng: random.Random, chinese: bool, used: set[str]) -> str:
    while True:
        if chinese:
            phone = f"+86 1{rng.choice('3589')}{rng.randrange(10)}-{rng.randrange(10_000):04d}-{rng.randrange(10_000):04d}"
        else:  # 555-01XX is reserved for fiction in North America
            phone = f"+1 ({rng.randrange(201, 990)}) 555-01{rng.randrange(100):02d}"
        if phone not in used:
            used.add(phone)
            return phone


def make_entities(w: World) -> None:
    cfg = w.config
    rng = w.rng("entities")
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


def sft_fact_ids(w: World) -> list[str]:
    """Facts that SFT / preference training data may state."""
    people = {p.id for p in w.people_in("pretrain+sft", "sft_only")}
    return [f.id for f in w.facts
            if (f.type in T.PERSON_FACTS and f.entity in people) or f.id in w.sft_place_facts]


def pretrain_fact_ids(w: World) -> list[str]:
    people = {p.id for p in w.people_in("pretrain+sft", "pretrain_only")}
    return [f.id for f in w.facts if f.type not in T.PERSON_FACTS or f.entity in people]

