"""Retrieval-augmented generation: a "context + question" chat prompt with numbered passages, answers that
cite them as [n], and an explicit "cannot find" answer when the passages do not hold the answer.

The prompt is short on purpose (the default model has a context of a few hundred tokens)::

    <|system|>Answer from the passages and cite them as [n]. If they do not contain the answer, say so.<|end|>
    <|user|>[1] Oscar Nilsson was born in 1996 in Valkabourne. ...
    [2] ...
    Question: Where was Oscar Nilsson born?<|end|>
    <|assistant|>Valkabourne [1]<|end|>
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lmstack.data.text import lang_of

SYSTEM = {"en": "Answer from the passages and cite them as [n]. If they do not contain the answer, say so.",
          "zh": "根据资料回答，并用[n]标注出处。如果资料中没有答案，请直说。"}
QUESTION = {"en": "Question: {q}", "zh": "问题：{q}"}
CANNOT_FIND = {"en": "I cannot find the answer in the passages.", "zh": "资料中找不到答案。"}
# also matches worldqa.no_answer_clause ("X is not in the passages.", "X不在资料中。")
_CANNOT_FIND_RE = re.compile(r"cannot find|can't find|could not find|not in the passages|找不到|没有找到|资料中没有|不在资料中")
_CITATION_RE = re.compile(r"\[(\d+)\]")


# where the question stands in the user turn. question_first: the passages' tokens can attend to the question
# (the model is causal), so a passage can be read against the asked name as it is encoded
LAYOUTS = ("passages_first", "question_first")


def rag_messages(question: str, passages: Sequence[str], lang: str | None = None,
                 layout: str = "passages_first") -> list[dict]:
    if layout not in LAYOUTS:
        raise ValueError(f"RAG prompt layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    lang = lang or lang_of(question)
    context = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    asked = QUESTION[lang].format(q=question)
    return [{"role": "system", "content": SYSTEM[lang]},
            {"role": "user", "content": asked + "\n" + context if layout == "question_first" else context + "\n" + asked}]


def cited_answer(answer: str, index: int) -> str:
    return f"{answer} [{index}]"


def citations(text: str) -> list[int]:
    return [int(n) for n in _CITATION_RE.findall(text)]


def strip_citations(text: str) -> str:
    return _CITATION_RE.sub("", text).strip()


def is_cannot_find(text: str) -> bool:
    return bool(_CANNOT_FIND_RE.search(text.lower()))


# ------------------------------------------------------------------ SFT data

def rag_sft_examples(questions: Sequence[dict], passages: dict, retrieve, k: int = 3, no_answer_rate: float = 0.3,
                     seed: int = 0, answer_text=None, no_answer_text=None, layout: str = "passages_first",
                     paired: bool = False) -> list[dict]:
    """Chat examples that teach answering from passages.

    ``questions``: dicts with "question", "answer", "lang", "entity" (``worldqa.fact_questions``);
    ``passages``: (entity, lang) -> the passage that states the answer;
    ``retrieve(question, n) -> list[str]``: distractor candidates (e.g. BM25 over the corpus).
    With probability ``no_answer_rate`` the gold passage is left out and the target is the "cannot find"
    answer; otherwise it sits at a random position and the target cites it. ``answer_text(q)``: the answer
    as the target states it (default ``q["answer"]``; e.g. ``worldqa.answer_clause``, which quotes the passage).
    ``no_answer_text(q)``: the "cannot find" target (default ``CANNOT_FIND``; e.g. ``worldqa.no_answer_clause``).
    ``layout``: ``rag_messages``'s (the pipeline that asks the tuned model must use the same).
    ``paired``: each "cannot find" example comes with its answerable twin, the same question with the gold
    passage: a minimal pair, where what tells them apart is whether the passage names the asked subject."""
    rng = random.Random(seed)
    out = []
    for q in questions:
        gold = passages[(q["entity"], q["lang"])]
        others = [p for p in retrieve(q["question"], k + 2) if p != gold and q["answer"] not in p]
        answerable = rng.random() >= no_answer_rate
        for with_gold in ([answerable] if answerable or not paired else [False, True]):
            if with_gold:
                context = others[:k - 1]
                pos = rng.randint(0, len(context))
                context.insert(pos, gold)
                target = cited_answer(answer_text(q) if answer_text else q["answer"], pos + 1)
            else:
                context = others[:k]
                target = no_answer_text(q) if no_answer_text else CANNOT_FIND[q["lang"]]
            if not context:
                continue
            out.append({"messages": rag_messages(q["question"], context, q["lang"], layout) +
                        [{"role": "assistant", "content": target}], "task": "rag" if with_gold else "rag_cannot_find",
                        "answer": q["answer"] if with_gold else None, "lang": q["lang"], "facts": []})
    return out


# ------------------------------------------------------------------ answering

@dataclass
class RagAnswer:
    question: str
    text: str
    passages: list[str]
    doc_ids: list[str] = field(default_factory=list)
    support: float | None = None  # dense similarity of the question and the first passage (None: no encoder)
    gated: bool = False           # the score cut-off answered "cannot find" without asking the model

    @property
    def citations(self) -> list[int]:
        return [n for n in citations(self.text) if 1 <= n <= len(self.passages)]

    def render(self) -> str:
        lines = [self.text, ""]
        lines += [f"[{i}] {p}" for i, p in enumerate(self.passages, start=1)]
        if not self.passages:
            lines.append("(no passage: none was found, or none fits in the model's context with the question)")
        return "\n".join(lines)


class RagPipeline:
    """Retrieve ``k`` chunks from a DocumentStore, prompt the model with them, return the cited answer.
    Passages are dropped from the end until the prompt fits the model's context.

    ``min_score``: a retrieval-score cut-off (needs the store's dense encoder). When the question's cosine
    similarity to the best passage is below it, the pipeline answers "cannot find" without asking the model:
    the similarity cut-off of production RAG stacks, with the threshold fitted on training questions
    (``calibrate_min_score``) instead of guessed."""

    def __init__(self, store, model, tokenizer, k: int = 3, mode: str = "bm25", max_new_tokens: int = 24,
                 reranker=None, rerank_depth: int = 10, layout: str = "passages_first",
                 min_score: float | None = None):
        from lmstack.generate import GenerationConfig

        if min_score is not None and getattr(store, "encoder", None) is None:
            raise ValueError("a RAG score cut-off (min_score) needs a store with a dense encoder "
                             "(build the index with --dense, or pass the run whose encoder built it)")
        self.store, self.model, self.tokenizer, self.k, self.mode = store, model, tokenizer, k, mode
        self.reranker, self.rerank_depth, self.layout, self.min_score = reranker, rerank_depth, layout, min_score
        self.cfg = GenerationConfig(max_new_tokens=max_new_tokens)

    def support(self, question: str, passage: str | None) -> float | None:
        """Cosine similarity of the question and ``passage`` under the store's dense encoder (None without one,
        or without a passage)."""
        encoder = getattr(self.store, "encoder", None)
        if encoder is None or passage is None:
            return None
        q, p = encoder([question, passage])
        return float(q @ p)

    def _fit(self, question: str, passages: list[str], reserve: int | None = None) -> list[dict]:
        limit = getattr(self.model.config, "max_seq_len", None) if self.model is not None else None
        reserve = self.cfg.max_new_tokens if reserve is None else reserve
        while True:
            msgs = rag_messages(question, passages, layout=self.layout)
            n = len(self.tokenizer.encode_chat(msgs, add_generation_prompt=True)[0])
            if not limit or n + reserve <= limit or not passages:
                return msgs
            passages.pop()

    def prompt(self, question: str, exclude_docs: Sequence[str] = (), reserve: int | None = None
               ) -> tuple[list[dict], list]:
        """The "context + question" chat messages for ``question`` and the hits they quote, in citation order
        (passages are dropped from the end until the prompt leaves ``reserve`` tokens of the model's context;
        ``lmstack rag ask`` and ``lmstack serve --rag`` both build their prompts here)."""
        return self._prompt_for(question, self.retrieve(question, exclude_docs), reserve)

    def _prompt_for(self, question: str, hits: list, reserve: int | None = None) -> tuple[list[dict], list]:
        passages = [h.text for h in hits]
        msgs = self._fit(question, passages, reserve)
        return msgs, hits[:len(passages)]

    def gates(self, support: float | None) -> bool:
        """Whether the score cut-off answers "cannot find" for a first passage of this support."""
        return self.min_score is not None and (support is None or support < self.min_score)

    def cut_off(self, question: str, hits: list) -> tuple[float | None, bool]:
        """The support of the first of ``hits`` and whether the score cut-off stops it (``ask`` and
        ``lmstack serve --rag`` decide here)."""
        support = self.support(question, hits[0].text if hits else None)
        return support, self.gates(support)

    def ask(self, question: str, exclude_docs: Sequence[str] = (), gate: bool = True) -> RagAnswer:
        """The cited answer; ``gate=False`` asks the model even below the score cut-off (``support`` is still
        reported), as the measurements do to score the model and the cut-off from one answer."""
        from lmstack.generate import chat

        hits = self.retrieve(question, exclude_docs)
        support, cut = self.cut_off(question, hits)
        if gate and cut:  # the model is not asked, so nothing needs to fit its context
            return RagAnswer(question, CANNOT_FIND[lang_of(question)], [h.text for h in hits],
                             [h.doc_id for h in hits], support, gated=True)
        msgs, hits = self._prompt_for(question, hits)
        text = chat(self.model, self.tokenizer, [msgs], self.cfg)[0].text.strip()
        return RagAnswer(question, text, [h.text for h in hits], [h.doc_id for h in hits], support)

    def retrieve(self, question: str, exclude_docs: Sequence[str] = ()) -> list:
        """The top ``k`` chunks (``mode`` search, then the cross-encoder over the top ``rerank_depth`` if set)."""
        depth = max(self.k, self.rerank_depth if self.reranker is not None else 0) + len(exclude_docs)
        hits = [h for h in self.store.search(question, depth, mode=self.mode) if h.doc_id not in set(exclude_docs)]
        if self.reranker is not None:
            hits = self.reranker.rerank(question, hits)
        return hits[:self.k]

    def closed_book(self, question: str) -> str:
        from lmstack.generate import chat

        return chat(self.model, self.tokenizer, [[{"role": "user", "content": question}]], self.cfg)[0].text.strip()


def calibrate_min_score(pipeline: RagPipeline, questions: Sequence[dict], gold_docs, keep: float = 0.95) -> dict:
    """Fit ``RagPipeline.min_score`` on questions whose gold documents are known (``gold_docs(q)`` -> doc ids):
    the support of the first passage retrieved with the gold documents in the store ("answerable") and with
    them left out ("missing"). The threshold is the highest that still lets ``keep`` of the answerable ones
    through: a passage cut wrongly loses an answer for sure, one let through wrongly still leaves the model to
    say it cannot find the answer. Fit it on training questions, never on the ones it will be measured on.
    Returns {"min_score", "kept", "cut", "n", "keep"} (kept / cut: shares of answerable / missing here)."""
    if not 0 < keep <= 1:
        raise ValueError(f"calibrate_min_score: keep must be in (0, 1], got {keep}")
    answerable, missing = [], []
    for q in questions:
        gold = list(gold_docs(q))
        hits = pipeline.retrieve(q["question"])
        if hits and hits[0].doc_id in gold:
            answerable.append(pipeline.support(q["question"], hits[0].text))
        other = pipeline.retrieve(q["question"], exclude_docs=gold)
        if other:
            missing.append(pipeline.support(q["question"], other[0].text))
    if not answerable or not missing or None in answerable + missing:
        raise ValueError("calibrating a RAG score cut-off needs a dense encoder and questions whose gold passage "
                         "is retrieved first and that have other passages to retrieve")
    ranked = sorted(answerable, reverse=True)
    t = ranked[max(0, math.ceil(keep * len(ranked)) - 1)]  # the lowest score among the best `keep` share
    return {"min_score": round(t - 1e-6, 6), "kept": sum(s >= t for s in answerable) / len(answerable),
            "cut": sum(s < t for s in missing) / len(missing), "n": len(questions), "keep": keep}


def load_index(index_dir: str | Path, tokenizer=None, device: str = "cpu"):
    """A saved DocumentStore with the dense encoder it was built with (when it has one and ``tokenizer`` is
    given), so that dense and hybrid search work on it."""
    from lmstack.apps.dense import DenseEncoder
    from lmstack.apps.store import DocumentStore
    from lmstack.runs import read_json

    index_dir = Path(index_dir)
    if not (index_dir / "store.json").exists():
        raise FileNotFoundError(f"{index_dir}: no store.json (build an index with `lmstack rag build DOCS --out "
                                f"{index_dir}`, or use a run's apps/index)")
    meta = read_json(index_dir / "store.json").get("encoder")
    encoder = None
    if tokenizer is not None and meta and meta.get("kind") == "dense":
        encoder = DenseEncoder.load(meta["source"], tokenizer, device)
    return DocumentStore.load(index_dir, encoder=encoder, tokenizer=tokenizer)
