"""Dialogues rendered from the world: SFT conversations, preference pairs, the held-out fact questions,
and the world's completion-style QA prompt format.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Sequence

from lmstack.data import world_text as T
from lmstack.data.world.documents import arith_problem, sentence_pair
from lmstack.data.world.entities import (PREF_CATEGORY_MIX, SFT_EVAL_TASK_MIX, SFT_TASK_MIX, Cycle, Fact, Person, UnseenNames,
                                         World, article, cap, largest_remainder, sft_fact_ids)


def qa_prompt(question: str, lang: str) -> str:
    """Completion-style prompt: "Question: ...\\nAnswer:" (EN) or "问题：...\\n答案：" (ZH)."""
    fmt, _ = T.QA_FORMAT[check_lang(lang)]
    return fmt.format(q=question)


def few_shot_prompt(item: dict, shots: Sequence[dict | tuple[str, str]], lang: str | None = None) -> str:
    """A few-shot completion prompt: each shot as "Question: q\\nAnswer: a", then ``item``'s question.

    ``item`` and dict shots are facts_eval-style (keys ``question`` and ``answer``); shots may also be
    ``(question, answer)`` tuples. A shot with the same question as ``item`` is skipped, so an item never
    sees its own answer. ``lang`` defaults to ``item["lang"]`` and picks the Question/问题 format.
    """
    lang = check_lang(lang or item.get("lang", "en"))
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


def check_lang(lang: str) -> str:
    if lang not in ("en", "zh"):
        raise ValueError(f"lang={lang!r}: expected 'en' or 'zh'")
    return lang



class DialogBuilder:
    def __init__(self, w: World):
        self.w = w
        self.sft_facts = [w.fact(fid) for fid in sft_fact_ids(w)]
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
        return self._wrap(rng, split, lang, rng.choice(bank[lang][fact.type]).format(**self.w.fact_fields(fact, lang)))

    @staticmethod
    def _wrap(rng, split, lang, question: str) -> str:
        """Training questions come inside varied openers/closers; held-out ones are asked bare."""
        return rng.choice(T.QUESTION_WRAPPERS[lang]).format(q=question) if split == "train" else question

    def _answer_text(self, rng, fact: Fact, lang, fields: dict | None = None) -> str:
        return rng.choice(T.ANSWERS[lang][fact.type]).format(**(fields or self.w.fact_fields(fact, lang)))

    def _fact_exchange(self, rng, split, person: Person, lang) -> tuple[Fact, list[dict]]:
        """A random fact of ``person`` asked and answered: the first turn of a phone-number follow-up."""
        fact = self.w.fact(f"person:{person.id}:{rng.choice(T.PERSON_FACTS)}")
        return fact, [{"role": "user", "content": self._question(rng, split, fact, lang)},
                      {"role": "assistant", "content": self._answer_text(rng, fact, lang)}]

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
            f.update(occ=occ_en if lang == "en" else occ_zh, a_occ=article(occ_en) if lang == "en" else occ_zh,
                     Occ=cap(occ_en) if lang == "en" else occ_zh)
        elif fact.type == "hobby":
            h_en, h_zh = rng.choice([h for h in T.HOBBIES if h[0] != w.person(fact.entity).hobby_en])
            f.update(hobby=h_en if lang == "en" else h_zh, Hobby=cap(h_en) if lang == "en" else h_zh)
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

    def unknown_question(self, rng, split, kind, entity, lang) -> tuple[str, str]:
        """A question about an entity that does not exist, and the fact type it asks for."""
        bank = T.QUESTIONS_TRAIN if split == "train" else T.QUESTIONS_EVAL
        if kind == "person":
            ftype = rng.choice(T.PERSON_FACTS)
            question = rng.choice(bank[lang][ftype]).format(**self.w.person_fields(entity, lang))
        else:
            ftype = "city_country"
            question = rng.choice(bank[lang][ftype]).format(**self.w.city_fields(entity, lang))
        return self._wrap(rng, split, lang, question), ftype

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
        en, zh = sentence_pair(self.w, rng, split, self.pretrain_people)
        direction = rng.choice(["en_zh", "zh_en"])
        src, tgt = (en, zh) if direction == "en_zh" else (zh, en)
        request = rng.choice(T.TRANSLATE_REQUESTS[split][direction]).format(src=src)
        return direction, request, tgt, src

    def _arith(self, rng, split, lang) -> tuple[str, int, dict]:
        op, a, b, c = arith_problem(rng, split)
        opw, opw_zh = T.OPS[op]
        f = dict(a=a, b=b, c=c, op=op, opw=opw, opw_zh=opw_zh)
        return rng.choice(T.ARITH_QUESTIONS[split][lang]).format(**f), c, f

    # -------------------------------------------------------------- SFT
    def sft(self, split: str, n: int) -> list[dict]:
        rng = self.w.rng(f"sft:{split}")
        counts = largest_remainder(n, SFT_TASK_MIX if split == "train" else SFT_EVAL_TASK_MIX)
        facts = self.sft_facts if split == "train" else self.all_facts
        people = self.sft_people if split == "train" else self.w.people
        fact_cycle = Cycle(rng, facts)
        person_cycle = Cycle(rng, people)
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

        makers = self._makers(rng, split, fact_cycle, person_cycle)
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
        if split == "train":
            _drop_some_system_prompts(rng, items)
        return items

    def _makers(self, rng, split, fact_cycle: Cycle, person_cycle: Cycle) -> dict:
        """One conversation of each SFT task per call."""
        return {"fact_qa": lambda: self._sft_fact_qa(rng, split, fact_cycle.next()),
                "multiturn": lambda: self._sft_multiturn(rng, split, person_cycle.next()),
                "translate": lambda: self._sft_translate(rng, split),
                "arith": lambda: self._sft_arith(rng, split),
                "refuse_pii": lambda: self._sft_refuse(rng, split),
                "idk": lambda: self._sft_idk(rng, split)}

    def sft_extra(self, counts: dict[str, int]) -> list[dict]:
        """More training conversations per task (``WorldConfig.sft_extra``), each task from a random stream of
        its own, so the rest of the SFT set does not change with them."""
        items: list[dict] = []
        for task, n in counts.items():
            rng = self.w.rng(f"sft:train:extra:{task}")
            make = self._makers(rng, "train", Cycle(rng, self.sft_facts), Cycle(rng, self.sft_people))[task]
            extra = [make() for _ in range(n)]
            _drop_some_system_prompts(rng, extra)
            items += extra
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
        system = self._system(rng, split, "arith", lang)
        if f["op"] in "+-" and split == "train":
            answer = worked_arith(f["op"], f["a"], f["b"], lang)
        else:
            answer = rng.choice(T.ARITH_ANSWERS[lang]).format(**f)
        return {"messages": [system, {"role": "user", "content": q}, {"role": "assistant", "content": answer}],
                "task": "arith", "answer": str(c), "lang": lang, "op": f["op"], "facts": []}

    def _sft_refuse(self, rng, split) -> dict:
        w = self.w
        lang = self._lang(rng)
        msgs = [self._system(rng, split, "qa", lang)]
        facts = []
        # Ask a fact first, then the phone number with a pronoun: half of training (the held-out set keeps 0.3);
        # at 0.3 the model answered such follow-ups with "I don't know" about a third of the time.
        if rng.random() < (0.5 if split == "train" else 0.3):
            p = rng.choice(self.sft_people if split == "train" else w.people)
            fact, exchange = self._fact_exchange(rng, split, p, lang)
            msgs += exchange + [{"role": "user", "content": rng.choice(T.PHONE_FOLLOWUPS[split][lang]).format(
                **w.person_fields(p, lang))}]
            facts.append(fact.id)
        else:
            # Training asks about SFT people and about people who do not exist, never about pretraining-only
            # people: one whose name appeared in SFT solely inside phone requests was later refused on harmless
            # questions too. Unfamiliar names keep the refusal tied to the request, not to the name.
            if split == "train":
                p = rng.choice(self.sft_people) if rng.random() < 0.5 else rng.choice(w.unknown_people["train"])
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
                             {"role": "user", "content": self.unknown_question(rng, split, kind, entity, lang)[0]},
                             {"role": "assistant", "content": self._idk_text(rng, kind, entity, lang)}],
                "task": "idk", "answer": None, "lang": lang, "facts": []}

    # -------------------------------------------------------------- preferences
    def prefs(self, split: str, n: int) -> list[dict]:
        rng = self.w.rng(f"prefs:{split}")
        counts = largest_remainder(n, PREF_CATEGORY_MIX)
        fact_cycle = Cycle(rng, self.sft_facts if split == "train" else self.all_facts)
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
        question, ftype = self.unknown_question(rng, split, kind, entity, lang)
        return self._pref(question, self._idk_text(rng, kind, entity, lang),
                          self._fabrication(rng, kind, entity, ftype, lang), "honest", "fabrication", lang, [])

    def _pref_harmless(self, rng, split) -> dict:
        lang = self._lang(rng)
        p = rng.choice(self.w.people)
        fields = self.w.person_fields(p, lang)
        return self._pref(rng.choice(T.PHONE_REQUESTS[split][lang]).format(**fields),
                          rng.choice(T.REFUSALS[lang]).format(**fields),
                          rng.choice(T.PHONE_LEAKS[lang]).format(**fields), "harmless", "pii_leak", lang, [])

    def probe_conversations(self, task: str, n: int, seed: int = 0) -> list[dict]:
        """Up to n distinct held-out conversations of one task ("refuse_pii", "idk", "arith" or "multiturn"),
        drawn like sft_eval's (eval names, phrasings, follow-ups and problems) but as many as asked: sft_eval
        holds ~36 of each, too few to tell a change of a few points from noise."""
        makers = {"refuse_pii": self._sft_refuse, "idk": self._sft_idk, "arith": self._sft_arith,
                  "multiturn": lambda rng, split: self._sft_multiturn(rng, split, rng.choice(self.w.people))}
        if task not in makers:
            raise ValueError(f"task={task!r}: probe conversations exist for {sorted(makers)}")
        rng = random.Random(f"probes:{task}:{self.w.seed}:{seed}")
        seen: dict[str, dict] = {}
        for _ in range(n * 20):
            if len(seen) == n:
                break
            item = makers[task](rng, "eval")
            seen.setdefault("\x1f".join(m["content"] for m in item["messages"] if m["role"] == "user"), item)
        return list(seen.values())

    # ------------------------------------------- extra preference pairs (DPO options; not in the world's files)
    def pii_prefs(self, n: int, seed: int = 0, followup_share: float = 0.5) -> list[dict]:
        """n PII pairs about real people; ``followup_share`` of the conversations first ask and answer a fact
        question about the person, then ask "and his phone number?" (the world's own PII pairs are single-turn),
        the rest ask for the number at once. Chosen = the world's refusal; each conversation gives two pairs,
        rejected = the leak, and rejected = "I don't know this person", the answer the SFT model gives to
        unfamiliar phrasings and DPO's fabrication pairs spread. Training phrasings only (the world's and
        ``PHONE_REQUESTS_MORE``)."""
        if not 0.0 <= followup_share <= 1.0:
            raise ValueError(f"followup_share={followup_share} must be in [0, 1]")
        rng = random.Random(f"pii-prefs:{self.w.seed}:{seed}")
        out: list[dict] = []
        while len(out) < n:
            lang = self._lang(rng)
            p = rng.choice(self.w.people)
            fields = self.w.person_fields(p, lang)
            prompt, facts, turns = [], [], "single"
            if rng.random() < followup_share:
                fact, prompt = self._fact_exchange(rng, "train", p, lang)
                facts, turns = [fact.id], "followup"
                request = rng.choice(T.PHONE_FOLLOWUPS["train"][lang] if rng.random() < 0.7 else T.PHONE_REQUESTS["train"][lang])
            else:
                request = rng.choice(T.PHONE_REQUESTS["train"][lang] + T.PHONE_REQUESTS_MORE[lang])
            prompt.append({"role": "user", "content": request.format(**fields)})
            if rng.random() >= NO_SYSTEM_SHARE:
                prompt.insert(0, self._system(rng, "train", "qa", lang))
            chosen = rng.choice(T.REFUSALS[lang]).format(**fields)
            rejects = [(f"pii_{turns}_leak", rng.choice(T.PHONE_LEAKS[lang]).format(**fields)),
                       (f"pii_{turns}_idk", rng.choice(T.IDK_PERSON[lang]))]
            for kind, rejected in rejects[:n - len(out)]:
                out.append(self._pref(prompt, chosen, rejected, "harmless", kind, lang, facts))
        return out

    def fact_prefs(self, n: int, seed: int = 0) -> list[dict]:
        """n pairs on the facts SFT teaches (training phrasings): chosen = the correct answer; rejected, in turn,
        = "I don't know this person" (``false_idk``), a phone-number refusal (``false_refusal``), a true
        statement about another attribute of the person (``off_question``: "She is a doctor." asked for her
        hobby) and the same sentence with a wrong value (``wrong_fact``), the SFT model's four kinds of error
        on these questions. Non-person facts get ``wrong_fact`` only. They balance the fabrication pairs,
        which reward "I don't know" whatever the entity. Each record's ``answer`` is the value a judge looks for."""
        rng = random.Random(f"fact-prefs:{self.w.seed}:{seed}")
        out: list[dict] = []
        for i in range(n):
            lang = self._lang(rng)
            fact = rng.choice(self.sft_facts)
            fields = self.w.fact_fields(fact, lang)
            template = rng.choice(T.ANSWERS[lang][fact.type][:2])
            kind = FACT_PAIR_KINDS[i % len(FACT_PAIR_KINDS)] if fact.type in T.PERSON_FACTS else "wrong_fact"
            if kind == "false_idk":
                rejected = rng.choice(T.IDK_PERSON[lang])
            elif kind == "false_refusal":
                rejected = rng.choice(T.REFUSALS[lang]).format(**fields)
            elif kind == "off_question":
                other = self.w.fact(f"person:{fact.entity}:{rng.choice([t for t in T.PERSON_FACTS if t != fact.type])}")
                rejected = rng.choice(T.ANSWERS[lang][other.type][:2]).format(**self.w.fact_fields(other, lang))
            else:
                rejected = template.format(**self._wrong_fields(rng, fact, lang))
            out.append(dict(self._pref(self._question(rng, "train", fact, lang), template.format(**fields), rejected,
                                       "honest" if kind == "wrong_fact" else "helpful", kind, lang, [fact.id]),
                            answer=self.w.answer(fact, lang)))
        return out

    def familiar_prompts(self, n: int, seed: int = 0) -> list[dict]:
        """n fact questions (training phrasings) about the world's real people, whatever their group, each with
        an "I don't know this person" answer: the prompts of DPO's familiar pairs, whose chosen answer is the
        model's own (``lmstack.align.dpo.familiar_pairs``). No answer of the world is attached."""
        rng = random.Random(f"familiar-prompts:{self.w.seed}:{seed}")
        out: list[dict] = []
        for _ in range(n):
            lang = self._lang(rng)
            person = rng.choice(self.w.people)
            fact = self.w.fact(f"person:{person.id}:{rng.choice(T.PERSON_FACTS)}")
            out.append({"prompt": [{"role": "user", "content": self._question(rng, "train", fact, lang)}],
                        "idk": self._idk_text(rng, "person", person, lang), "lang": lang, "facts": [fact.id]})
        return out

    def unknown_prefs(self, n: int, seed: int = 0, fresh_names: bool = False) -> list[dict]:
        """n pairs about people who do not exist (training names and phrasings): chosen = "I don't know",
        rejected = a made-up answer in any of the world's answer forms, about the asked attribute or another
        one ("He was born in 1987." asked for a hobby), the SFT model's fabrications on the held-out names.
        The world's fabrication pairs use only the two answer forms that repeat the name. ``fresh_names``: each
        pair names a person invented for it (``UnseenNames``) instead of one of the world's training names."""
        rng = random.Random(f"unknown-prefs:{self.w.seed}:{seed}")
        unseen = UnseenNames(self.w) if fresh_names else None
        out: list[dict] = []
        for _ in range(n):
            lang = self._lang(rng)
            entity = unseen.person(rng) if unseen else rng.choice(self.w.unknown_people["train"])
            question, asked = self.unknown_question(rng, "train", "person", entity, lang)
            fields = dict(self.w.person_fields(rng.choice(self.w.people), lang))
            fields.update(self.w.person_fields(entity, lang))
            told = asked if rng.random() < 0.5 else rng.choice(T.PERSON_FACTS)
            rejected = rng.choice(T.ANSWERS[lang][told] + [T.FOLLOWUP_ANSWERS[lang][told]]).format(**fields)
            out.append(self._pref(question, self._idk_text(rng, "person", entity, lang), rejected, "honest",
                                  "fabrication_any_form", lang, []))
        return out


def worked_arith(op: str, a: int, b: int, lang: str) -> str:
    """A two-digit sum or difference restated, then worked column by column ("27 + 58: ones 7 + 8 = 15,
    tens 2 + 5 + 1 = 8, so 27 + 58 = 85."), in one clause so the answer judge reads the final number."""
    if op not in "+-" or not (0 <= b <= 99 and 0 <= a <= 99) or (op == "-" and b > a):
        raise ValueError(f"worked_arith: expected two-digit a + b or a - b with b <= a, got {a} {op} {b}")
    steps = T.ARITH_STEPS[check_lang(lang)]
    opw_zh = T.OPS[op][1]
    x1, y1, x0, y0 = a % 10, b % 10, a // 10, b // 10
    if op == "+":
        ones, carry = x1 + y1, x1 + y1 >= 10
        tens = x0 + y0 + carry
        ones_text = steps["ones"].format(x=x1, op=op, opw_zh=opw_zh, y=y1, r=ones)
        tens_text = steps["tens"].format(x=x0, op=op, opw_zh=opw_zh, y=y0, adj=steps["carry"] if carry else "", r=tens)
    else:
        borrow = x1 < y1
        top = x1 + 10 * borrow
        ones_text = steps["ones"].format(x=top, op=op, opw_zh=opw_zh, y=y1, r=top - y1)
        tens_text = steps["tens"].format(x=x0, op=op, opw_zh=opw_zh, y=y0, adj=steps["borrow"] if borrow else "",
                                         r=x0 - y0 - borrow)
    c = a + b if op == "+" else a - b
    sep = ", " if lang == "en" else "，"
    fields = dict(a=a, b=b, c=c, op=op, opw_zh=opw_zh)
    return steps["head"].format(**fields) + sep.join([ones_text, tens_text, steps["final"].format(**fields)])


# The rejected answers of DialogBuilder.fact_prefs, in turn.
FACT_PAIR_KINDS = ("false_idk", "false_refusal", "off_question", "wrong_fact")

# Share of training conversations without a system prompt. Users often send none (`lmstack chat`, the
# server); a model that only ever saw one answered bare questions about half as well (measured on the
# default run: facts of SFT people 0.32 bare vs 0.65 with a system prompt).
NO_SYSTEM_SHARE = 0.3


def _drop_some_system_prompts(rng: random.Random, items: list[dict]) -> None:
    for item in items:
        if item["messages"][0]["role"] == "system" and rng.random() < NO_SYSTEM_SHARE:
            item["messages"] = item["messages"][1:]


# ----------------------------------------------------------------------------------------- facts eval


def make_facts_eval(w: World) -> None:
    rng = w.rng("facts_eval")
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

