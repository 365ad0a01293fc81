"""Measurements of the application layer: retrieval recall, closed-book vs RAG QA, "cannot find" rate,
model alone vs agent with tools. Used by the ``apps`` stage and ``benchmarks/rag.py``."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from lmstack.apps.rag import CANNOT_FIND, RagPipeline, is_cannot_find, lang_of, strip_citations
from lmstack.eval.answers import answer_matches


def gold_doc(item: dict) -> str:
    """The passage id that states the answer of a question about ``item["entity"]`` in its language."""
    return f"{item['entity']}:{item['lang']}"


def retrieval_recall(search: Callable[[str, int], list], questions: Sequence[dict], ks=(1, 5)) -> dict[str, float]:
    """Share of questions whose gold passage is among the top k (``search(q, k) -> hits with .doc_id``)."""
    hits = Counter()
    depth = max(ks)
    for q in questions:
        ranked = [h.doc_id for h in search(q["question"], depth)]
        for k in ks:
            hits[k] += gold_doc(q) in ranked[:k]
    n = max(1, len(questions))
    return {f"recall@{k}": hits[k] / n for k in ks}


def facts_eval_questions(rows: Sequence[dict]) -> list[dict]:
    """The world's held-out facts_eval items as {"question", "answer", "lang", "entity"}: fact ids look like
    ``person:p003:birthplace``, ``city:c02:country`` or ``country:france:capital``."""
    out = []
    for r in rows:
        parts = str(r.get("fact", "")).split(":")
        if len(parts) == 3:
            out.append({"question": r["question"], "answer": r["answer"], "lang": r["lang"], "entity": parts[1],
                        "group": r.get("group")})
    return out




def is_correct(prediction: str, answer: str) -> bool:
    """``answer_matches`` on the prediction without its [n] citations."""
    return answer_matches(strip_citations(prediction), answer)


def rag_qa(pipeline: RagPipeline, questions: Sequence[dict], progress: bool = True) -> dict:
    """Closed-book accuracy, RAG accuracy, how often RAG answers "cannot find" (``rag_refused``: read it next
    to RAG, as a model that always refuses scores 1.0 on ``cannot_find``), and the "cannot find" rate with
    the gold passages removed. With a score cut-off (``pipeline.min_score``) the model still answers every
    question, so the table shows it alone, and ``gated_*`` the same rates with the cut-off applied
    (``cutoff_kept``: share of first passages it lets through when the gold passage is there; ``cutoff_cut``:
    share it stops when the gold passages are removed)."""
    from tqdm import tqdm

    counts = Counter()
    samples = []
    for q in tqdm(questions, desc="rag eval", disable=not progress, leave=False):
        book = pipeline.closed_book(q["question"])
        ans = pipeline.ask(q["question"], gate=False)
        gold_ids = [f"{q['entity']}:en", f"{q['entity']}:zh"]
        missing = pipeline.ask(q["question"], exclude_docs=gold_ids, gate=False)
        ok = is_correct(ans.text, q["answer"])
        counts.update(closed_book=is_correct(book, q["answer"]), rag=ok, rag_refused=is_cannot_find(ans.text),
                      rag_cited=ok and any(ans.doc_ids[n - 1] in gold_ids for n in ans.citations),
                      cannot_find=is_cannot_find(missing.text))
        if pipeline.min_score is not None:
            kept, cut = not pipeline.gates(ans.support), pipeline.gates(missing.support)
            counts.update(gated_rag=ok and kept, gated_refused=not kept or is_cannot_find(ans.text), cutoff_kept=kept,
                          cutoff_cut=cut, gated_cannot_find=cut or is_cannot_find(missing.text))
        if len(samples) < 6:
            samples.append((q["question"], book, _shown(pipeline, ans), _shown(pipeline, missing), q["answer"]))
    n = max(1, len(questions))
    keys = ["closed_book", "rag", "rag_cited", "cannot_find", "rag_refused"]
    keys += ["gated_rag", "gated_refused", "gated_cannot_find", "cutoff_kept", "cutoff_cut"] \
        if pipeline.min_score is not None else []
    return {"n": len(questions), **{k: counts[k] / n for k in keys}, "samples": samples}


def _shown(pipeline: RagPipeline, answer) -> str:
    """The answer as the pipeline gives it: the cut-off's "cannot find" (with the model's own answer after it)
    when the support is below the threshold."""
    if not pipeline.gates(answer.support):
        return answer.text
    support = "no passage" if answer.support is None else f"similarity {answer.support:.2f}"
    return f"{CANNOT_FIND[lang_of(answer.question)]} (cut-off, {support}; the model: {answer.text})"


def model_alone(model, tokenizer, questions: Sequence[dict], max_new_tokens: int = 24) -> float:
    """Accuracy of the model answering each question in one chat turn, without tools or passages."""
    from lmstack.generate import GenerationConfig, chat

    if not questions:
        return float("nan")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    outs = chat(model, tokenizer, [[{"role": "user", "content": q["question"]}] for q in questions], cfg)
    return sum(is_correct(o.text, q["answer"]) for o, q in zip(outs, questions)) / len(questions)


def agent_accuracy(make_agent: Callable[[dict], object], questions: Sequence[dict], progress: bool = True) -> dict:
    """Accuracy of ``make_agent(item).run(question)`` answers, mean steps, why runs stopped, and (right, asked)
    per question ``kind`` (``by_kind``)."""
    from tqdm import tqdm

    steps, reasons, kinds, kinds_right = 0, Counter(), Counter(), Counter()
    for q in tqdm(questions, desc="agent eval", disable=not progress, leave=False):
        result = make_agent(q).run(q["question"])
        kinds[q.get("kind", "")] += 1
        kinds_right[q.get("kind", "")] += result.answer is not None and is_correct(result.answer, q["answer"])
        steps += len(result.steps)
        reasons[result.stop_reason] += 1
    n = max(1, len(questions))
    return {"n": len(questions), "accuracy": sum(kinds_right.values()) / n, "mean_steps": steps / n,
            "stop_reasons": dict(reasons), "by_kind": {k: (kinds_right[k], kinds[k]) for k in sorted(kinds)}}
