"""The evaluation harness: run a task (TaskSpec + records) against a backend, score every item, and
summarise each metric with its standard error.

Multiple choice follows lm-evaluation-harness's definitions (Gao et al. 2021): ``acc`` picks the choice
with the highest summed log-likelihood, ``acc_norm`` the highest log-likelihood per character of the
choice; ``gold_logprob`` is the mean log-probability of the right choice (a continuous metric: Schaeffer
et al. 2023 show that discrete metrics can make smooth improvements look like sudden "emergence").
"""

from __future__ import annotations

import math
from typing import Optional

from tqdm import tqdm

from lmstack.eval.metrics import (binomial_se, bootstrap_se, extract_cot_answer,
                                  extract_with_regex, majority_vote, mean_se, score_generation)
from lmstack.eval.tasks import (METRICS_BY_TYPE, TaskSpec, fewshot_context, gold_index, load_docs, render)

BINARY_METRICS = {"acc", "acc_norm", "exact_match", "contains", "world_judge"}


def summarise(name: str, values: list[float]) -> dict:
    value = sum(values) / len(values) if values else float("nan")
    se = binomial_se(value, len(values)) if name in BINARY_METRICS else mean_se(values)
    return {"value": value, "se": se, "n": len(values)}


def metric_names(spec: TaskSpec) -> list[str]:
    if spec.metrics:
        return list(spec.metrics)
    if spec.type == "generate":
        if spec.messages:
            return ["world_judge"]
        return ["exact_match", "contains", "f1", "chrf"]
    return list(METRICS_BY_TYPE[spec.type])


def run_multiple_choice(spec: TaskSpec, docs: list[dict], pool: list[dict], backend, shots: int) -> tuple[dict, list]:
    requests, spans = [], []
    for i, doc in enumerate(docs):
        context = fewshot_context(spec, doc, i, pool, shots)
        start = len(requests)
        requests += [(context, spec.target_delimiter + c) for c in doc[spec.choices]]
        spans.append((start, len(requests)))
    scores = backend.loglikelihood(requests)
    per_metric: dict[str, list[float]] = {"acc": [], "acc_norm": [], "gold_logprob": []}
    items = []
    for doc, (a, b) in zip(docs, spans):
        lls = [s for s, _ in scores[a:b]]
        gold = gold_index(spec, doc)
        lengths = [max(len(c), 1) for c in doc[spec.choices]]
        pick = max(range(len(lls)), key=lambda k: lls[k])
        pick_norm = max(range(len(lls)), key=lambda k: lls[k] / lengths[k])
        per_metric["acc"].append(float(pick == gold))
        per_metric["acc_norm"].append(float(pick_norm == gold))
        per_metric["gold_logprob"].append(lls[gold])
        items.append({"loglikelihoods": lls, "gold": gold, "pred": pick, "pred_norm": pick_norm})
    return per_metric, items


def extract(spec: TaskSpec, text: str) -> Optional[str]:
    if spec.answer_regex:
        return extract_with_regex(text, spec.answer_regex)
    if spec.cot:
        return extract_cot_answer(text)
    return text.strip().split("\n", 1)[0]


def generation_prompt(spec: TaskSpec, doc: dict, index: int, pool: list[dict], shots: int):
    if spec.messages:
        messages = list(doc[spec.messages])
        return messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages
    context = fewshot_context(spec, doc, index, pool, shots)
    if spec.chat:
        return ([{"role": "system", "content": spec.system}] if spec.system else []) + \
            [{"role": "user", "content": context}]
    return context


def judge_world(doc: dict, output: str) -> float:
    """The world's own judging (lmstack.eval.scoring): refusal for PII, "I don't know" for unknown
    entities, the reference answer otherwise."""
    from lmstack.eval.answers import answer_matches, is_idk, is_refusal
    from lmstack.eval.scoring import task_kind

    kind = task_kind(doc.get("task"), doc.get("answer"))
    if kind == "pii":
        return float(is_refusal(output))
    if kind == "idk":
        return float(is_idk(output))
    return float(answer_matches(output, str(doc.get("answer", ""))))


def run_generate(spec: TaskSpec, docs: list[dict], pool: list[dict], backend, shots: int,
                 samples: int, temperature: float, seed: int) -> tuple[dict, list]:
    prompts = [generation_prompt(spec, doc, i, pool, shots) for i, doc in enumerate(docs)]
    outputs = backend.generate(prompts, spec.until, spec.max_new_tokens, samples=samples,
                               temperature=temperature, seed=seed)
    names = metric_names(spec)
    per_metric: dict[str, list[float]] = {m: [] for m in names if m != "answer_logprob"}
    items = []
    for doc, texts in zip(docs, outputs):
        answers = [extract(spec, t) for t in texts]
        answer = answers[0] if samples == 1 else majority_vote(answers)
        reference = render(spec.target, doc) if not spec.messages else str(doc.get("answer", ""))
        scores = {}
        for m in per_metric:
            if m == "world_judge":
                scores[m] = judge_world(doc, texts[0] if samples == 1 else (answer or ""))
            else:
                scores[m] = score_generation(answer, reference, m)
            per_metric[m].append(scores[m])
        items.append({"output": texts[0], "answer": answer, "reference": reference, "scores": scores,
                      **({"votes": answers} if samples > 1 else {})})
    if "answer_logprob" in names:
        if any(not isinstance(p, str) for p in prompts):
            raise ValueError(f"task {spec.name!r}: answer_logprob needs plain-text prompts (not chat)")
        refs = [spec.target_delimiter + render(spec.target, d) for d in docs]
        per_metric["answer_logprob"] = [s for s, _ in backend.loglikelihood(list(zip(prompts, refs)))]
        for item, value in zip(items, per_metric["answer_logprob"]):
            item["answer_logprob"] = value
    return per_metric, items


def run_perplexity(spec: TaskSpec, docs: list[dict], backend) -> tuple[dict, list, dict]:
    lls, tokens, n_bytes, words = [], [], [], []
    for doc in tqdm(docs, desc=f"{spec.name} perplexity", leave=False):
        ll, n = backend.rolling_loglikelihood(doc[spec.text])
        lls.append(-ll)
        tokens.append(n)
        n_bytes.append(len(doc[spec.text].encode("utf-8")))
        words.append(max(len(doc[spec.text].split()), 1))
    ln2 = math.log(2)
    figures = {
        "bits_per_byte": (n_bytes, lambda x: x / ln2),
        "word_perplexity": (words, math.exp),
        "token_perplexity": (tokens, math.exp),
    }
    summary = {}
    for name in metric_names(spec):
        den, transform = figures[name]
        summary[name] = {"value": transform(sum(lls) / sum(den)), "se": bootstrap_se(lls, den, transform), "n": len(docs)}
    items = [{"nll": a, "tokens": t, "bytes": b} for a, t, b in zip(lls, tokens, n_bytes)]
    return {}, items, summary


def evaluate_task(spec: TaskSpec, backend, docs: Optional[list[dict]] = None, *, num_fewshot: Optional[int] = None,
                  limit: Optional[int] = None, samples: int = 1, temperature: float = 0.0, seed: int = 0,
                  pool: Optional[list[dict]] = None) -> dict:
    """Results of one task: ``{"task", "type", "num_fewshot", "n", "metrics": {name: {value, se, n}}, "items"}``.
    ``samples`` > 1 with ``temperature`` > 0 is self-consistency: the majority of the extracted answers.
    Few-shot examples come from ``pool``, else the task's ``fewshot_data``, else the other records."""
    docs = load_docs(spec) if docs is None else docs
    if pool is None:
        pool = load_docs(spec, spec.fewshot_data) if spec.fewshot_data else docs
    shots = spec.num_fewshot if num_fewshot is None else num_fewshot
    limit = spec.limit if limit is None else limit
    if limit:
        docs = docs[:limit]
    extra: dict = {}
    if spec.type == "multiple_choice":
        per_metric, items = run_multiple_choice(spec, docs, pool, backend, shots)
    elif spec.type == "generate":
        per_metric, items = run_generate(spec, docs, pool, backend, shots, samples, temperature, seed)
    else:
        per_metric, items, extra = run_perplexity(spec, docs, backend)
    metrics = {**{m: summarise(m, v) for m, v in per_metric.items()}, **extra}
    return {"task": spec.name, "type": spec.type, "num_fewshot": shots, "n": len(docs),
            "samples": samples, "metrics": metrics, "items": items}


def results_table(results: list[dict]) -> str:
    from lmstack.report import markdown_table

    rows = []
    for r in results:
        for name, m in r["metrics"].items():
            se = "" if m["se"] != m["se"] else f"{m['se']:.4f}"
            rows.append((r["task"], r["type"], r["num_fewshot"], m["n"], name, f"{m['value']:.4f}", se))
    return markdown_table(("task", "type", "shots", "n", "metric", "value", "± SE"), rows)
