"""The world's rule-based reward for RLHF prompts: what the world's checkers say about an answer.

Each prompt of ``prefs_train.jsonl`` carries the kind of request it is (``pii_leak``, ``fabrication``,
``wrong_fact``, ...), its language and the ids of the facts it asks about. From those and the checkers of
``lmstack.eval.answers`` a response gets:
- PII request: +1 if it refuses, -1 otherwise;
- question about an entity that does not exist (``fabrication``): +1 if it says it does not know, -1 otherwise;
- question about a known fact: +1 if it states the fact's answer (``world.json``), -1 if it refuses or says
  "I don't know", 0 otherwise;
- any other request (arithmetic, translation, harmless questions): -1 if it refuses or says "I don't know", else 0.
PPO adds ``gold_coef`` times this to the reward model's (normalised) score, the way DeepSeek-R1 trains on rule
rewards: it is a verifier reward, not a learned one, and it only exists where the world can check the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from lmstack.align.data import ChatExample, chat_answer_pairs, load_preferences_jsonl
from lmstack.eval.answers import answer_matches, is_idk, is_refusal

REFUSE_KINDS = ("pii_leak", "refuse_pii")   # preference-pair kind, SFT task
IDK_KINDS = ("fabrication", "idk")


def fact_answers(world_json: Path) -> dict[str, dict[str, str]]:
    """fact id -> {"en": answer, "zh": answer} from the run's ``world.json``."""
    if not world_json.exists():
        raise FileNotFoundError(f"{world_json}: missing; the gold reward reads the world's facts (run the data stage)")
    data = json.loads(world_json.read_text(encoding="utf-8"))
    return {f["id"]: {"en": str(f["answer_en"]), "zh": str(f["answer_zh"])} for f in data.get("facts", [])}


def gold_score(kind: str, lang: str, answers: Sequence[str], text: str) -> float:
    """The rule reward of one response (see the module docstring)."""
    refuses, idk = is_refusal(text), is_idk(text)
    if kind in REFUSE_KINDS:
        return 1.0 if refuses else -1.0
    if kind in IDK_KINDS:
        return 1.0 if idk else -1.0
    if refuses or idk:
        return -1.0
    if answers:
        return 1.0 if any(answer_matches(text, a) for a in answers) else 0.0
    return 0.0


class WorldGoldReward:
    """Callable ``(prompts, texts) -> scores`` (ppo's RewardFn) for prompts taken from a preference file;
    a prompt it does not know scores 0."""

    def __init__(self, prefs_path: Path, world_json: Path):
        facts = fact_answers(world_json)
        self.by_prompt: dict[str, tuple[str, str, list[str]]] = {}
        for pair in load_preferences_jsonl(prefs_path):
            lang = str(pair.meta.get("lang", "en"))
            ids = pair.meta.get("facts") or []
            answers = [facts[i]["zh" if lang == "zh" else "en"] for i in ids if i in facts]
            self.by_prompt.setdefault(repr(pair.prompt), (str(pair.meta.get("kind", "")), lang, answers))

    def add_chats(self, examples: list[ChatExample]) -> None:
        """Also know SFT conversations (prompt = up to the last assistant turn): their ``task`` is the kind and,
        for fact questions, their ``answer`` the fact to state."""
        for ex, pair in zip(examples, chat_answer_pairs(examples)):
            kind = pair.meta["kind"]
            answers = [str(ex.meta["answer"])] if kind in ("fact_qa", "multiturn", "arith") and ex.meta.get("answer") else []
            self.by_prompt.setdefault(repr(pair.prompt), (kind, str(pair.meta.get("lang") or "en"), answers))

    def __call__(self, prompts: Sequence[list[dict]], texts: Sequence[str]) -> list[float]:
        out = []
        for prompt, text in zip(prompts, texts):
            known = self.by_prompt.get(repr(prompt))
            out.append(gold_score(*known, text) if known else 0.0)
        return out
