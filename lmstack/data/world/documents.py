"""Pretraining documents rendered from the world's entity table: biographies, stories, geography notes,
quizzes, written-out arithmetic and parallel EN/ZH sentences.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from typing import Any, Iterator, Sequence

from lmstack.data import world_text as T
from lmstack.data.world.entities import Cycle, Fact, Person, World, pretrain_fact_ids, template_fields

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
    # Without full names, Chinese refers back with 他/她 after the first sentence, as natural prose does.
    pronoun = named if cfg.bio_full_names or lang == "en" else dict(named, name=named["pron"])
    facts = [w.fact(f"person:{p.id}:{t}") for t in T.PERSON_FACTS]
    if cfg.bio_templates == "fixed":  # the paper's "bioS single": one fixed sentence per fact, fixed order
        if cfg.bio_permute:
            rng.shuffle(facts)
        for fact in facts:
            _count(w, fact.id, lang)
        return {"en": " ", "zh": ""}[lang].join(T.STATEMENTS[lang][f.type][0].format(**(named if i == 0 else pronoun))
                                                for i, f in enumerate(facts))
    if cfg.bio_permute:
        rng.shuffle(facts)
    sentences = []
    for i, fact in enumerate(facts):
        sentences.append(_state(w, picker, fact, lang, named if i == 0 else pronoun))
        if fact.type == "birthplace" and rng.random() < (0.4 if lang == "en" else 0.2):
            sentences.append(_state(w, picker, w.fact(f"city:{p.birthplace}:country"), lang))
    for _ in range(rng.randint(1, 2)):
        filler = picker.pick((lang, "filler"), T.BIO_FILLERS[lang]).format(**pronoun)
        sentences.insert(rng.randrange(1, len(sentences) + 1), filler)
    if rng.random() < cfg.phone_in_bio_prob:
        sentences.append(picker.pick((lang, "phone"), T.STATEMENTS[lang]["phone"]).format(**named))
    return {"en": " ", "zh": ""}[lang].join(sentences)


def _biography_pages(w: World, rng: random.Random, pretrain_people: list[Person]) -> list[dict]:
    """Pages of 2-3 people; every paragraph states all four facts of its person. Each round is a permutation
    of the people, so everyone gets exactly bios_per_person paragraphs (alternating EN / ZH when bilingual)."""
    cfg = w.config
    docs = []
    for r in range(cfg.bios_per_person):
        lang = "en" if r % 2 == 0 or not cfg.bilingual_bios else "zh"
        order = pretrain_people[:]
        rng.shuffle(order)
        _spread_birthplaces(order)
        for group in _groups(rng, order, 2, 3):
            picker = _Picker(rng)
            paragraphs = [_bio_paragraph(w, rng, picker, p, lang) for p in group]
            w.doc_items["bio"] += len(paragraphs)
            docs.append({"text": rng.choice(T.BIO_TITLES[lang]) + "\n\n" + "\n\n".join(paragraphs),
                         "lang": lang, "kind": "bio"})
    return docs


def make_pretrain_docs(w: World) -> None:
    cfg = w.config
    rng = w.rng("pretrain")
    docs: list[dict] = []
    pretrain_people = w.people_in("pretrain+sft", "pretrain_only")
    joiner = {"en": " ", "zh": ""}
    w.doc_items = Counter()

    docs += _biography_pages(w, rng, pretrain_people)

    # Stories: people in turn, so everyone appears about equally often; 2-3 stories per page.
    story_fact = {"year": "birth_year", "city": "birthplace", "occ": "occupation", "a_occ": "occupation",
                  "hobby": "hobby"}
    people_cycle = Cycle(rng, pretrain_people)
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
            used = set(template_fields(template))
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
    place_cycle = Cycle(rng, [f for f in w.facts if f.type in T.PLACE_FACTS])
    for i in range(cfg.n_geo_docs):
        lang = "en" if i % 2 == 0 else "zh"
        picker = _Picker(rng)
        lines = [_state(w, picker, place_cycle.next(), lang) for _ in range(rng.randint(10, 12))]
        w.doc_items["geo"] += len(lines)
        docs.append({"text": rng.choice(T.GEO_TITLES[lang]) + "\n" + joiner[lang].join(lines),
                     "lang": lang, "kind": "geo"})

    # Quizzes with the TRAINING question phrasings (the eval phrasings stay unseen).
    quizzed = pretrain_fact_ids(w)
    if cfg.quiz_people == "sft":
        sft_people = {p.id for p in w.people_in("pretrain+sft")}
        quizzed = [fid for fid in quizzed if w.fact(fid).type not in T.PERSON_FACTS or w.fact(fid).entity in sft_people]
    quiz_cycle = Cycle(rng, [w.fact(fid) for fid in quizzed])
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
            op, a, b, c = arith_problem(rng, "train", op)
            items, item, mw = picker.pick("countable", T.COUNTABLES)
            f = dict(w.person_fields(rng.choice(pretrain_people), lang), a=a, b=b, c=c, items=items, item=item, mw=mw)
            lines.append(template.format(**f))
        op, a, b, c = arith_problem(rng, "train")
        plain = [t for t in T.ARITH_STATEMENTS[lang][op] if "=" not in t]
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(plain).format(a=a, b=b, c=c))
        w.doc_items["arith"] += len(lines)
        docs.append({"text": rng.choice(T.ARITH_TITLES[lang]) + "\n" + joiner[lang].join(lines),
                     "lang": lang, "kind": "arith"})
    docs += _arith_drills(w, rng, pretrain_people)
    docs += _copy_pages(w, rng)

    # Parallel sentences: distinct pairs, one format per line (a format repeated on every line is boilerplate).
    for _ in range(cfg.n_parallel_docs):
        pairs: list[tuple[str, str]] = []
        for _ in range(40):
            if len(pairs) == 6:
                break
            pair = sentence_pair(w, rng, "train", pretrain_people)
            if pair not in pairs:
                pairs.append(pair)
        picker = _Picker(rng)
        lines = [picker.pick("format", T.PARALLEL_FORMATS).format(en=en, zh=zh) for en, zh in pairs]
        w.doc_items["parallel"] += len(lines)
        docs.append({"text": rng.choice(T.PARALLEL_TITLES) + "\n" + "\n".join(lines), "lang": "mixed",
                     "kind": "parallel"})

    rng.shuffle(docs)
    w.docs = [{"text": d["text"], "source": "world", "lang": d["lang"], "kind": d["kind"]} for d in docs]


def invented_word(rng: random.Random) -> str:
    """A made-up capitalised word of 2-3 syllables (names, places on copy pages)."""
    return "".join(rng.choice(T.COPY_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def copy_paragraph_fields(rng: random.Random) -> dict[str, str]:
    """Fresh values for one of T.COPY_PARAGRAPHS: two invented names (x, y), a place (p), a code (c), a count (d)."""
    return dict(x=f"{invented_word(rng)} {invented_word(rng)}", y=f"{invented_word(rng)} {invented_word(rng)}",
                p=invented_word(rng), c=f"{rng.randint(100, 99999)}", d=f"{rng.randint(2, 999)}")


def copy_page(rng: random.Random) -> tuple[str, int]:
    """(text, paragraph count) of one page of invented names, places and codes, each stated and then repeated
    (see T.COPY_PARAGRAPHS). The world's pages and the data stage's fresh ones (``data.mix.copy_pages``) share it."""
    picker = _Picker(rng)
    paragraphs = []
    for _ in range(rng.randint(3, 4)):
        fields = copy_paragraph_fields(rng)  # drawn before the template: the world's random stream stays as it was
        paragraphs.append(picker.pick("copy", T.COPY_PARAGRAPHS).format(**fields))
    return rng.choice(T.COPY_TITLES) + "\n\n" + "\n\n".join(paragraphs), len(paragraphs)


def _copy_pages(w: World, rng: random.Random) -> list[dict]:
    docs = []
    for _ in range(w.config.n_copy_docs):
        text, n_paragraphs = copy_page(rng)
        w.doc_items["copy"] += n_paragraphs
        docs.append({"text": text, "lang": "en", "kind": "copy"})
    return docs


def fresh_copy_pages(n: int, seed: int, exclude: set[str] = frozenset()) -> Iterator[str]:
    """``n`` distinct copy pages from their own random stream (seeded by ``seed``, independent of the world's),
    none equal to a text in ``exclude`` (the world's own pages, so validation pages never reach train)."""
    rng = random.Random(f"fresh-copy-pages:{seed}")
    seen = set(exclude)
    made = 0
    while made < n:
        text, _ = copy_page(rng)
        if text in seen:
            continue
        seen.add(text)
        made += 1
        yield text


def _arith_drills(w: World, rng: random.Random, people: Sequence[Person]) -> list[dict]:
    """English pages of two-digit sums and differences: a model learns carrying from thousands of distinct
    problems, not from a few. Mostly word problems, because web-text quality filters (Gopher's share of
    alphabetic words) drop pages of bare statements like "47 plus 38 is 85"."""
    docs = []
    share = w.config.arith_fact_share
    for _ in range(w.config.n_arith_drill_docs):
        picker = _Picker(rng)
        lines = []
        for i in range(rng.randint(6, 8)):
            op = rng.choice("+-")
            # (the share test draws from the stream only when it is on: worlds without it stay as they were)
            small = share > 0 and rng.random() < share
            op, a, b, c = column_fact(rng, op) if small else arith_problem(rng, "train", op)
            if i % 3 == 2:
                template = picker.pick(op, [t for t in T.ARITH_STATEMENTS["en"][op] if "=" not in t])
            else:
                template = picker.pick(("problem", op), T.WORD_PROBLEMS["en"][op])
            items, item, mw = picker.pick("countable", T.COUNTABLES)
            lines.append(template.format(**w.person_fields(rng.choice(people), "en"), a=a, b=b, c=c, items=items))
        w.doc_items["arith"] += len(lines)
        docs.append({"text": rng.choice(T.ARITH_TITLES["en"]) + "\n" + " ".join(lines), "lang": "en", "kind": "arith"})
    return docs


def column_fact(rng: random.Random, op: str) -> tuple[str, int, int, int]:
    """A one-digit fact of the kind a worked column step uses: x + y with x, y in 1-9, or x - y with y in 1-9
    and x up to y + 9 (after a borrow: 15 - 9). Problems the eval split holds out are never drawn."""
    while True:
        if op == "+":
            a, b = rng.randint(1, 9), rng.randint(1, 9)
        else:
            b = rng.randint(1, 9)
            a = b + rng.randint(0, 9)
        if not _arith_is_heldout(op, a, b):
            return op, a, b, (a + b if op == "+" else a - b)


def _arith_is_heldout(op: str, a: int, b: int) -> bool:
    # A fixed arithmetic rule (no hash()): about one problem in seven is reserved for evaluation.
    return (a * 7 + b * 13 + "+-*".index(op)) % 7 == 0


def arith_problem(rng: random.Random, split: str, op: str | None = None) -> tuple[str, int, int, int]:
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


def sentence_pair(w: World, rng: random.Random, split: str, people: Sequence[Person]) -> tuple[str, str]:
    """A simple (English, Chinese) sentence pair, from the training or the held-out sentences."""
    while True:
        en, zh = _random_sentence_pair(w, rng, people)
        if translation_is_heldout(en) == (split == "eval"):
            return en, zh


def translation_is_heldout(en: str) -> bool:
    """One English sentence in five is reserved for evaluation (a fixed checksum, stable across runs). Every
    pattern and every word also occurs in training sentences, so a held-out sentence tests composition:
    "The cat is sleeping under the tree." is new although cats and sleeping under trees are not."""
    if en in WEATHER_SENTENCES:  # fixed sentences without slots: holding one out would hold out its words
        return False
    return zlib.crc32(en.encode("utf-8")) % 5 == 0


WEATHER_SENTENCES = frozenset(en for en, _ in T.WEATHER)


def _random_sentence_pair(w: World, rng: random.Random, people: Sequence[Person]) -> tuple[str, str]:
    _, en_t, zh_t = rng.choice(T.SENTENCES)
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

