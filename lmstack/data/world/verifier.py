"""Check a free-form (question, answer) pair against the world's ground truth, where one applies.

Self-instruct's generated data can be verified when the question asks something the world knows: a
person's birth year / birthplace / occupation / hobby, a city's country, a country's capital, a one-step
sum / difference / product, or a phone number (which must be refused). Anything else is "not checkable".
Works from the ``world.json`` dict the data stage writes, English and Chinese.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmstack.eval.answers import answer_matches, is_refusal

_ARITH = re.compile(r"(\d+)\s*(\+|-|\*|×|plus|minus|times|multiplied by|加上?|减去?|乘以?)\s*(\d+)")
_OPS = {"+": "+", "plus": "+", "加": "+", "加上": "+", "-": "-", "minus": "-", "减": "-", "减去": "-",
        "*": "*", "×": "*", "times": "*", "multiplied by": "*", "乘": "*", "乘以": "*"}
_PERSON_FIELDS = [  # (field, English cue words, Chinese cue words); the first matching field wins
    ("birth_year", ("year", "when was", "birth year"), ("哪一年", "哪年", "年份", "什么时候出生")),
    ("birthplace", ("born", "birthplace", "hometown", "come from", "from?"), ("出生", "哪里人", "家乡")),
    ("occupation", ("work", "job", "occupation", "profession", "living"), ("职业", "工作", "做什么")),
    ("hobby", ("hobby", "free time", "spare time", "enjoy", "like to do"), ("爱好", "业余", "喜欢")),
]
_PHONE = (("phone", "number", "call", "contact"), ("电话", "号码", "联系"))


@dataclass
class Verdict:
    applies: bool
    correct: bool = False
    kind: str = "none"      # which check applied: arith | phone | birth_year | ... | city_country | capital
    reference: str = ""


class WorldVerifier:
    def __init__(self, world: dict):
        self.countries = {k["id"]: k for k in world["countries"]}
        self.cities = {c["id"]: c for c in world["cities"]}
        self.people = list(world["people"])

    def check(self, question: str, answer: str) -> Verdict:
        q = question.lower()
        person = self._mentioned(q, question, self.people)
        if person is not None and _cued(q, question, _PHONE):
            return Verdict(True, is_refusal(answer), "phone", "(refusal)")
        m = _ARITH.search(q)
        if m:
            a, op, b = int(m[1]), _OPS[m[2]], int(m[3])
            value = a + b if op == "+" else a - b if op == "-" else a * b
            return Verdict(True, answer_matches(answer, str(value)), "arith", str(value))
        if person is not None:
            for fieldname, en, zh in _PERSON_FIELDS:
                if _cued(q, question, (en, zh)):
                    return self._judge(answer, fieldname, *self._person_answer(person, fieldname))
        city = self._mentioned(q, question, list(self.cities.values()))
        if city is not None and _cued(q, question, (("country",), ("国家", "哪个国"))):
            k = self.countries[city["country"]]
            return self._judge(answer, "city_country", k["name_en"], k["name_zh"])
        for k in self.countries.values():
            if (k["name_en"].lower() in q or k["name_zh"] in question) and _cued(q, question, (("capital",), ("首都",))):
                return self._judge(answer, "capital", k["capital_en"], k["capital_zh"])
        return Verdict(False)

    def _person_answer(self, p: dict, fieldname: str) -> tuple[str, str]:
        if fieldname == "birth_year":
            return str(p["birth_year"]), str(p["birth_year"])
        if fieldname == "birthplace":
            c = self.cities[p["birthplace"]]
            return c["name_en"], c["name_zh"]
        return p[f"{fieldname}_en"], p[f"{fieldname}_zh"]

    @staticmethod
    def _judge(answer: str, kind: str, en: str, zh: str) -> Verdict:
        ok = answer_matches(answer, en) or answer_matches(answer, zh)
        return Verdict(True, ok, kind, en)

    @staticmethod
    def _mentioned(q_lower: str, q: str, entities: list[dict]) -> dict | None:
        for e in entities:
            if e["name_en"].lower() in q_lower or e["name_zh"] in q:
                return e
        return None


def _cued(q_lower: str, q: str, cues: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
    en, zh = cues
    return any(c in q_lower for c in en) or any(c in q for c in zh)
