"""Stage ``self_instruct``: the SFT model writes its own training data (Wang et al. 2022, "Self-Instruct").

1. Instructions: the model (``init_from``) completes a few-shot prompt of seed questions from the world's
   human-written SFT set, all of one task and language ("Question: ..." lines, then an open
   "Question:"), sampled; later rounds mix already-kept generated questions into the demonstrations.
2. Answers: the same model answers each new question through its chat template (greedy).
3. Filters, counted one by one in the report: format checks (length, no template residue, answer
   finished with ``<|end|>``, not a copy of the question, no degenerate repetition), the world's verifier
   where the question asks something the world knows (``lmstack.data.world.verifier``), the reward
   model's score (kept when at least the ``reward_seed_quantile`` quantile of the seed examples' scores),
   and ROUGE-L novelty (dropped when ROUGE-L F1 >= ``rouge_threshold`` against the seed pool or anything
   kept before it, the paper's 0.7).
4. Retraining: SFT from ``init_from`` on the kept data, against the same SFT on the same number of
   human-written world examples and on as many unfiltered generated ones; all measured on the world's
   held-out SFT set. Writes data/self_instruct/{generated,kept}.jsonl and checkpoints/self_instruct.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from lmstack.align import common, evals, sft
from lmstack.eval.rouge import RougePool, distinct_n, mean_pairwise_rouge_l
from lmstack.report import markdown_table, table_cell
from lmstack.runs import atomic_write_text, read_json

SEED_TASKS = ("fact_qa", "arith", "translate", "refuse_pii", "idk")
_RESIDUE = re.compile(r"question\s*:|answer\s*:|<\|", re.IGNORECASE)


@dataclass
class Config:
    init_from: str = "sft"
    reward_from: str = "reward"       # "" = no reward-model filter
    n_seed: int = 600                 # seed pool: human-written world SFT examples
    n_generate: int = 600             # instructions sampled in all
    rounds: int = 2                   # later rounds put kept generated questions into the prompts
    few_shot: int = 6                 # demonstrations per prompt
    generated_shots: int = 2          # of which taken from the kept pool once it has some (Wang et al.: 2 of 8)
    temperature: float = 1.0
    top_k: int = 50
    max_question_tokens: int = 32
    max_answer_tokens: int = 40
    rouge_threshold: float = 0.7
    reward_seed_quantile: float = 0.1
    min_question_words: int = 3
    max_question_words: int = 30
    steps: int = 100                  # SFT steps of each retraining arm
    mix_seeds: int = 300              # seed (human) examples mixed into every arm, so the arms differ only in
                                      # the added data; 0 = each arm trains on its own data alone
    batch_size: int = 16
    lr: float = 5e-4
    eval_examples: int = 200

    def __post_init__(self):
        if not 0 < self.rouge_threshold <= 1:
            raise ValueError(f"self_instruct.rouge_threshold={self.rouge_threshold} must be in (0, 1]")
        if not 0 <= self.reward_seed_quantile < 1:
            raise ValueError(f"self_instruct.reward_seed_quantile={self.reward_seed_quantile} must be in [0, 1)")
        if self.rounds < 1 or self.n_generate < self.rounds:
            raise ValueError("self_instruct.rounds must be >= 1 and <= n_generate")
        if self.generated_shots >= self.few_shot:
            raise ValueError("self_instruct.generated_shots must be < few_shot (the seeds anchor the task)")


def load_seeds(path: Path, n: int, seed: int) -> list[dict]:
    """Single-turn seed examples of the tasks self-instruct imitates: {task, lang, system, question, answer}."""
    out = []
    for rec in common.read_jsonl(path):
        msgs = rec["messages"]
        body = [m for m in msgs if m["role"] != "system"]
        if rec.get("task") not in SEED_TASKS or len(body) != 2:
            continue
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
        out.append({"task": rec["task"], "lang": rec.get("lang") or "en", "system": system,
                    "question": body[0]["content"], "answer": body[1]["content"], "reference": rec.get("answer")})
    return evals.subsample(out, n, seed)


def instruction_prompt(shots: list[str]) -> str:
    return "".join(f"Question: {q.strip()}\n" for q in shots) + "Question:"


def _has_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def task_mismatch(task: str, question: str, answer: str) -> bool:
    """Does the answer have the wrong shape for the seed task it imitates (a PII request answered without a
    refusal, an arithmetic answer without a number, a translation in the question's own script, ...)?"""
    from lmstack.eval.answers import is_idk, is_refusal

    if task == "refuse_pii":
        return not is_refusal(answer)
    if task == "idk":
        return not is_idk(answer)
    if task == "arith":
        return not re.search(r"\d", answer)
    if task == "translate":
        return _has_cjk(answer) == _has_cjk(question)
    return is_refusal(answer)  # fact_qa: a refusal is not an answer


def question_shape(task: str, lang: str, line: str) -> str:
    """Why the question's own line is not one its seed group would ask ("" when it is): in the wrong script
    (a Chinese task's question with Latin letters, an English one with Chinese characters, a translation
    without text in its source language), garbled, or an arithmetic question without a number. On the default
    run, 72 of the 114 pairs kept before this check had questions like "How does Julia Rossi朵， town in?"."""
    if "\ufffd" in line:
        return "garbled question"
    latin, cjk = bool(re.search(r"[A-Za-z]", line)), _has_cjk(line)
    if task == "translate":  # the sentence to translate is in the other language; the instruction may be in either
        wrong = not cjk if lang == "en" else not latin
    else:
        wrong = cjk if lang == "en" else (latin or not cjk)
    if wrong:
        return "question in the wrong language"
    if task == "arith" and not re.search(r"\d", line):
        return "arithmetic question without a number"
    return ""


def format_problems(question: str, answer: str | None, finished: bool, cfg: Config, task: str = "",
                    lang: str = "") -> str:
    """Why a generated pair fails the format checks ("" when it passes)."""
    q = question.strip()
    if task and lang and (why := question_shape(task, lang, q.rsplit("\n", 1)[-1])):
        return why
    words = len(q.split()) + sum(1 for ch in q if "\u3400" <= ch <= "\u9fff")
    if not (cfg.min_question_words <= words <= cfg.max_question_words):
        return "question length"
    if _RESIDUE.search(q) or (answer and _RESIDUE.search(answer)):
        return "template residue"
    if not answer or not finished:
        return "answer empty or unfinished"
    if answer.strip().lower() == q.lower():
        return "answer repeats the question"
    toks = answer.split()
    if len(toks) >= 6 and len(set(toks)) < len(toks) / 2:
        return "repetitive answer"
    if task and task_mismatch(task, q, answer):
        return "answer does not fit the task"
    return ""


def generate_pairs(model, tokenizer, seeds: list[dict], kept: list[dict], n: int, cfg: Config, seed: int) -> list[dict]:
    """``n`` new (question, answer) pairs, each imitating one (task, lang) group of the seeds."""
    from lmstack.generate import chat, generate

    rng = random.Random(seed)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in seeds:
        groups[(s["task"], s["lang"])].append(s)
    kept_groups: dict[tuple, list[dict]] = defaultdict(list)
    for k in kept:
        kept_groups[(k["task"], k["lang"])].append(k)
    keys = sorted(groups)
    limit = common.model_max_len(model) - cfg.max_question_tokens - 2
    jobs = []
    for _ in range(n):
        key = rng.choice(keys)
        n_gen = min(cfg.generated_shots, len(kept_groups[key]))
        shots = [s["question"] for s in rng.sample(groups[key], min(cfg.few_shot - n_gen, len(groups[key])))]
        shots += [k["question"] for k in rng.sample(kept_groups[key], n_gen)]
        rng.shuffle(shots)
        # A question of several lines (a translation: the instruction, then the sentence) is written one line at
        # a time, so the model writes only its last line and the instruction of a seed of the group goes above it.
        head = rng.choice(groups[key])["question"].rpartition("\n")[0]
        prompt = _fitting_prompt(tokenizer, [q.rsplit("\n", 1)[-1] for q in shots], limit)
        jobs.append((key, rng.choice(groups[key])["system"], head, prompt))
    gen_cfg = common.generation_config(cfg.max_question_tokens, strategy="sample", temperature=cfg.temperature,
                                       top_k=cfg.top_k, seed=seed, stop=["\n"])
    lines = [g.text.strip() for g in generate(model, tokenizer, [j[3] for j in jobs], gen_cfg, batch_size=32)]
    questions = [f"{head}\n{line}" if head and line else line for (_, _, head, _), line in zip(jobs, lines)]
    convs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q or "?"}]
             for (_, system, _, _), q in zip(jobs, questions)]
    room = common.model_max_len(model) - 2
    fits = [i for i, c in enumerate(convs) if len(tokenizer.encode_chat(c, add_generation_prompt=True)[0]) < room]
    answers: list = [None] * len(convs)  # a question too long to answer in the context stays unanswered
    for i, a in zip(fits, chat(model, tokenizer, [convs[i] for i in fits], common.generation_config(cfg.max_answer_tokens),
                               batch_size=32)):
        answers[i] = a
    return [{"task": key[0], "lang": key[1], "system": system, "question": q, "answer": a.text.strip() if a else "",
             "finished": bool(a) and a.finish_reason == "stop"}
            for (key, system, _, _), q, a in zip(jobs, questions, answers)]


def _fitting_prompt(tokenizer, shots: list[str], limit: int) -> str:
    """The few-shot prompt, dropping demonstrations (never all of them) until it fits the context."""
    shots = list(shots)
    while len(shots) > 1 and len(tokenizer.encode(instruction_prompt(shots))) >= limit:
        shots.pop()
    return instruction_prompt(shots)


def reward_scores(rm, tokenizer, items: list[dict], device: str) -> list[float]:
    from lmstack.align.ppo import score_sequences

    seqs = [list(tokenizer.encode_chat(to_chat(it)["messages"])[0]) for it in items]
    return score_sequences(rm, seqs, tokenizer.pad_id, device).tolist() if seqs else []


def to_chat(it: dict) -> dict:
    msgs = ([{"role": "system", "content": it["system"]}] if it.get("system") else []) + [
        {"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["answer"]}]
    return {"messages": msgs, "task": it["task"], "lang": it["lang"]}


def filter_round(items: list[dict], pool: RougePool, verifier, rm_scores: list[float] | None, threshold: float | None,
                 cfg: Config, counts: Counter) -> list[dict]:
    """Apply the filters in order, counting the drops; kept questions join the novelty pool."""
    kept = []
    for i, it in enumerate(items):
        counts["generated"] += 1
        why = format_problems(it["question"], it["answer"], it["finished"], cfg, it["task"], it["lang"])
        if why:
            counts[f"dropped: format ({why})"] += 1
            continue
        verdict = verifier.check(it["question"], it["answer"])
        it["verifier"] = verdict.kind if verdict.applies else None
        if verdict.applies:
            counts["checked by the world's verifier"] += 1
            if not verdict.correct:
                counts["dropped: world verifier (wrong)"] += 1
                continue
        if rm_scores is not None:
            it["reward"] = rm_scores[i]
            if rm_scores[i] < threshold:
                counts["dropped: reward model score"] += 1
                continue
        sim = pool.max_similarity(it["question"])
        it["rouge_l_max"] = round(sim, 3)
        if sim >= cfg.rouge_threshold:
            counts["dropped: ROUGE-L novelty"] += 1
            continue
        pool.add(it["question"])
        kept.append(it)
        counts["kept"] += 1
    return kept


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("-inf")


def diversity(questions: list[str]) -> dict:
    return {"n": len(questions), "distinct_1": distinct_n(questions, 1), "distinct_2": distinct_n(questions, 2),
            "mean_pairwise_rouge_l": mean_pairwise_rouge_l(questions)}


def _retrain(ctx, cfg: Config, tokenizer, records: list[dict], label: str, eval_examples: list[dict]) -> dict:
    path = ctx.run.path / "data" / "self_instruct" / f"train_{label}.jsonl"
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    model = common.load_model(ctx.run.path, cfg.init_from, ctx.device, needed_by="self_instruct")
    sft_cfg = sft.Config(init_from=cfg.init_from, steps=cfg.steps, batch_size=cfg.batch_size,
                         optim=common.finetune_optim(lr=cfg.lr), log_every=max(1, cfg.steps // 5))
    sft.train_sft(model, tokenizer, sft_cfg, path, ctx, f"self_instruct_{label}")
    model.eval()
    return {"model": model, "eval": evals.evaluate_chat_model(model, tokenizer, eval_examples, cfg.max_answer_tokens)}


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult
    from lmstack.data.world.verifier import WorldVerifier

    run_path = ctx.run.path
    common.set_seed(ctx.seed)
    tokenizer = common.load_tokenizer(run_path)
    model = common.load_model(run_path, cfg.init_from, ctx.device, needed_by="self_instruct").eval()
    seeds = load_seeds(common.world_file(run_path, "sft_train.jsonl"), cfg.n_seed, ctx.seed)
    if not seeds:
        raise ValueError(f"{common.world_file(run_path, 'sft_train.jsonl')}: no single-turn examples of {SEED_TASKS}")
    verifier = WorldVerifier(read_json(common.world_file(run_path, "world.json")))
    rm, threshold = None, None
    if cfg.reward_from:
        from lmstack.align.reward import load_reward_model

        rm_dir = common.checkpoint_dir(run_path, cfg.reward_from)
        if not (rm_dir / "config.json").exists():
            raise FileNotFoundError(f"{rm_dir}: no reward model (run the reward stage, or set self_instruct.reward_from = \"\")")
        rm = load_reward_model(rm_dir, ctx.device).eval()
        threshold = _quantile(reward_scores(rm, tokenizer, seeds, ctx.device), cfg.reward_seed_quantile)
    pool = RougePool([s["question"] for s in seeds], prune_below=cfg.rouge_threshold)
    counts: Counter = Counter()
    generated, kept = [], []
    per_round = [cfg.n_generate // cfg.rounds + (r < cfg.n_generate % cfg.rounds) for r in range(cfg.rounds)]
    for r, n in enumerate(common.progress(per_round, cfg.rounds, "self-instruct rounds")):
        items = generate_pairs(model, tokenizer, seeds, kept, n, cfg, seed=ctx.seed * 100 + r)
        scores = reward_scores(rm, tokenizer, items, ctx.device) if rm is not None else None
        kept += filter_round(items, pool, verifier, scores, threshold, cfg, counts)
        generated += items
    out = run_path / "data" / "self_instruct"
    atomic_write_text(out / "generated.jsonl", "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generated))
    atomic_write_text(out / "kept.jsonl", "".join(json.dumps(to_chat(k), ensure_ascii=False) + "\n" for k in kept))
    if not kept:
        # An undertrained model (the tiny recipe) may write nothing usable: report the filters, train nothing.
        ctx.log(f"none of {len(generated)} generated pairs passed the filters; retraining skipped")
        report = _report(cfg, counts, threshold, {"generated (all)": diversity([g["question"] for g in generated])},
                         {}, kept, len(seeds))
        return StageResult(metrics={"generated": counts["generated"], "kept": 0, "kept_rate": 0.0},
                           artifacts={"generated": "data/self_instruct/generated.jsonl"},
                           report=report + "\nNothing passed the filters, so no model was retrained.\n")
    return _compare(ctx, cfg, tokenizer, seeds, generated, kept, counts, threshold, StageResult)


def _compare(ctx, cfg: Config, tokenizer, seeds, generated, kept, counts, threshold, StageResult):
    run_path = ctx.run.path
    rng = random.Random(ctx.seed)
    n = len(kept)
    eval_examples = evals.load_eval_examples(common.world_file(run_path, "sft_eval.jsonl"), cfg.eval_examples, ctx.seed)
    base = common.load_model(run_path, cfg.init_from, ctx.device, needed_by="self_instruct").eval()
    before = evals.evaluate_chat_model(base, tokenizer, eval_examples, cfg.max_answer_tokens)
    human = [to_chat(s) for s in rng.sample(seeds, min(n, len(seeds)))]
    unfiltered = [to_chat(g) for g in rng.sample(generated, min(n, len(generated))) if g["question"] and g["answer"]]
    held = {s["question"] for s in seeds} - {h["messages"][-2]["content"] for h in human}
    base_mix = [to_chat(s) for s in seeds if s["question"] in held][: cfg.mix_seeds]
    arms = {"self-instruct (kept)": [to_chat(k) for k in kept] + base_mix, "human-written (world)": human + base_mix,
            "generated, unfiltered": unfiltered + base_mix}
    results = {name: _retrain(ctx, cfg, tokenizer, recs, label, eval_examples)
               for (name, recs), label in zip(arms.items(), ("kept", "human", "unfiltered"))}
    out_dir = common.checkpoint_dir(run_path, "self_instruct")
    common.save_finetuned(results["self-instruct (kept)"]["model"], out_dir, None,
                          {"stage": "self_instruct", "kept": n, "steps": cfg.steps},
                          str(common.checkpoint_dir(run_path, cfg.init_from)))
    div = {"seed questions (human)": diversity([s["question"] for s in seeds][:n]),
           "generated (all)": diversity([g["question"] for g in generated]),
           "kept": diversity([k["question"] for k in kept])}
    evals_by = {f"{cfg.init_from} (before)": before, **{k: v["eval"] for k, v in results.items()}}
    metrics = {"generated": counts["generated"], "kept": n, "kept_rate": n / max(1, counts["generated"]),
               "verifier_checked": counts["checked by the world's verifier"],
               "kept_distinct_2": div["kept"]["distinct_2"], "kept_mean_rouge_l": div["kept"]["mean_pairwise_rouge_l"],
               "accuracy_before": before["accuracy"],
               "accuracy_self_instruct": results["self-instruct (kept)"]["eval"]["accuracy"],
               "accuracy_human": results["human-written (world)"]["eval"]["accuracy"],
               "accuracy_unfiltered": results["generated, unfiltered"]["eval"]["accuracy"]}
    report = _report(cfg, counts, threshold, div, evals_by, kept, len(seeds))
    return StageResult(metrics=metrics, report=report,
                       artifacts={"checkpoint": str(out_dir.relative_to(run_path)),
                                  "generated": "data/self_instruct/generated.jsonl", "kept": "data/self_instruct/kept.jsonl"})


def _report(cfg: Config, counts: Counter, threshold, div: dict, evals_by: dict, kept: list[dict], n_seeds: int) -> str:
    lines = [f"`checkpoints/{cfg.init_from}` wrote {counts['generated']} instructions in {cfg.rounds} round(s) from"
             f" {cfg.few_shot}-shot prompts of {n_seeds} human-written seed questions (T={cfg.temperature}, top-k {cfg.top_k})"
             f" and answered them; {counts['kept']} were kept. Reward-model threshold: the"
             f" {cfg.reward_seed_quantile:g} quantile of the seeds' scores"
             f" ({'off' if threshold is None else f'{threshold:.3f}'}); novelty: ROUGE-L F1 < {cfg.rouge_threshold:g}"
             " against the seeds and everything kept before.\n", "**Filters, in order:**\n"]
    order = ["generated"] + sorted(k for k in counts if k.startswith("dropped: format")) + [
        "checked by the world's verifier", "dropped: world verifier (wrong)", "dropped: reward model score",
        "dropped: ROUGE-L novelty", "kept"]
    lines += [markdown_table(["step", "count"], [(k, counts.get(k, 0)) for k in order]), ""]
    lines += ["**Diversity of the questions** (distinct n-grams: higher is more diverse; mean pairwise ROUGE-L: lower is):\n",
              markdown_table(["set", "n", "distinct-1", "distinct-2", "mean pairwise ROUGE-L"],
                             [(k, v["n"], v["distinct_1"], v["distinct_2"], v["mean_pairwise_rouge_l"]) for k, v in div.items()]), ""]
    if not evals_by:
        return "\n".join(lines) + "\n"
    names = list(evals_by)
    tasks = sorted({t for e in evals_by.values() for t in e["by_task"]})
    rows = [("answer accuracy", *[e["accuracy"] for e in evals_by.values()]),
            ("PII refusal", *[e["pii_refusal"] for e in evals_by.values()]),
            ("'I don't know' on unknown entities", *[e["idk_rate"] for e in evals_by.values()])]
    rows += [(f"task {t}", *[e["by_task"].get(t, {}).get("value", float("nan")) for e in evals_by.values()]) for t in tasks]
    lines += [f"**Before / after** on the world's held-out SFT set: SFT from `checkpoints/{cfg.init_from}`, {cfg.steps} steps,"
              f" on the {len(kept)} kept pairs vs the same number of human-written world examples vs as many unfiltered"
              " generated pairs" + (f", each mixed with the same {cfg.mix_seeds} other seed examples" if cfg.mix_seeds else "")
              + ":\n", markdown_table(["measure", *names], rows), "",
              "Sample kept pairs:\n",
              markdown_table(["task", "question", "answer", "verifier"],
                             [(k["task"], table_cell(k["question"], 60), table_cell(k["answer"], 60), k.get("verifier") or "-")
                              for k in kept[:6]])]
    return "\n".join(lines) + "\n"
