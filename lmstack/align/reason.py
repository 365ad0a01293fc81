"""Stage ``reason``: a reasoning model trained on step-by-step traces, then GRPO with verifiable rewards.

The recipe of DeepSeek-R1 (2025) and minimind's ``reason`` stage at toy size:

1. problems with a checkable answer (``lmstack.data.world.reasoning``): chains of arithmetic and multi-hop
   questions over the world (person -> city -> country -> capital), each with a worked trace whose last
   line is ``Answer: <value>``;
2. SFT of ``checkpoints/<init_from>`` on the traces (``checkpoints/reason_sft``), and, as the baseline, the
   same SFT on the answers alone (the direct-answer model);
3. GRPO from the trace model with a rule reward (right final answer, plus a small bonus for the answer
   line's format) and no learned reward model (``lmstack.align.ppo``'s GRPO with its ``reward_fn`` hook);
   ``checkpoints/reason``.

The report measures every model on held-out problems at the training difficulties and on harder ones
(more steps than any training problem), accuracy against the number of reasoning tokens the model wrote,
and accuracy under a forced reasoning-token budget (the trace is cut at B tokens and ``Answer:`` appended,
as in s1's budget forcing, Muennighoff et al. 2025).
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.align import common, ppo, sft
from lmstack.data.world import reasoning as R
from lmstack.report import markdown_table, save_line_plot, table_cell
from lmstack.runs import atomic_write_text


@dataclass
class GRPOSettings:
    """``[reason.grpo]``: GRPO with the rule reward (fields as in ``[ppo]``)."""
    iterations: int = 30
    prompts_per_iteration: int = 8
    group_size: int = 6
    temperature: float = 1.0
    kl_coef: float = 0.02
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    minibatch_size: int = 24
    lr: float = 1e-4                 # the ppo stage's 3e-5 barely moves greedy answers in 30 iterations here
    missing_end_penalty: float = 0.5
    # GRPO's problems: fresh arithmetic chains of these many operations, none of them in the SFT data (on the
    # SFT problems themselves every sampled answer was right, so no group had an advantage to learn from).
    arith_ops: list[int] = field(default_factory=lambda: [3])


@dataclass
class Config:
    init_from: str = "sft"
    n_train: int = 1200                  # trace (and direct-answer) SFT problems
    n_eval_per_level: int = 40           # held-out problems per (kind, number of steps)
    train_arith_ops: list[int] = field(default_factory=lambda: [1, 2, 3])
    eval_arith_ops: list[int] = field(default_factory=lambda: [4, 5])
    train_hops: list[int] = field(default_factory=lambda: [1, 2])
    eval_hops: list[int] = field(default_factory=lambda: [3])
    sft_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    direct_baseline: bool = True         # also train the direct-answer model on the same problems
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    format_weight: float = 0.2           # reward for a well-formed final answer line, on top of 1 for a right one
    max_new_tokens: int = 72
    # Arithmetic traces that list the operations first and carry the ones left on every step (see
    # lmstack.data.world.reasoning.arith_chain), so no step has to count brackets; they run to ~130 tokens.
    scratchpad: bool = False
    token_budgets: list[int] = field(default_factory=lambda: [0, 8, 16, 32])

    def __post_init__(self):
        for name in ("train_arith_ops", "eval_arith_ops", "train_hops", "eval_hops"):
            if any(int(n) < 1 for n in getattr(self, name)):
                raise ValueError(f"reason.{name}={getattr(self, name)}: step counts must be >= 1")
        if max(self.train_hops + self.eval_hops, default=1) > 3:
            raise ValueError("reason.train_hops / eval_hops: the world's chains have at most 3 hops")
        if self.sft_steps < 1 or self.n_train < 1:
            raise ValueError("reason.sft_steps and reason.n_train must be >= 1")
        if not self.grpo.arith_ops or any(int(n) < 1 for n in self.grpo.arith_ops):
            raise ValueError(f"reason.grpo.arith_ops={self.grpo.arith_ops}: give one or more step counts >= 1")


def rule_reward(answers: dict[str, str], format_weight: float):
    """The verifiable reward: 1 for the right final answer, ``format_weight`` for an ``Answer:`` line."""

    def reward(prompts, texts):
        out = []
        for conv, text in zip(prompts, texts):
            answer = answers[conv[-1]["content"]]
            has_line = R.parse_final_answer(text) is not None
            out.append(float(R.is_correct(text, answer)) + format_weight * has_line)
        return out

    return reward


def _conversation(p: R.Problem, with_trace: bool) -> list[dict]:
    return R.to_chat(p, with_trace)["messages"][:-1]


def reasoning_tokens(tokenizer, text: str) -> int:
    """Tokens written before the final ``Answer:`` line (the whole text when there is none)."""
    head = text.rsplit(R.ANSWER_PREFIX, 1)[0] if R.ANSWER_PREFIX in text else text
    return len(tokenizer.encode(head.strip())) if head.strip() else 0


@torch.no_grad()
def evaluate(model, tokenizer, problems: list[R.Problem], with_trace: bool, max_new_tokens: int) -> list[dict]:
    """Greedy answers; one row per problem: kind, steps, correct, reasoning tokens, step checks, text."""
    texts = common.chat_answers(model, tokenizer, [_conversation(p, with_trace) for p in problems], max_new_tokens)
    rows = []
    for p, t in zip(problems, texts):
        t = t or ""
        ok_steps, n_steps = R.arith_step_accuracy(t) if p.kind == "arith" else (0, 0)
        rows.append({"kind": p.kind, "n_steps": p.n_steps, "question": p.question, "answer": p.answer, "output": t,
                     "correct": R.is_correct(t, p.answer), "has_answer": R.parse_final_answer(t) is not None,
                     "reasoning_tokens": reasoning_tokens(tokenizer, t), "steps_ok": ok_steps, "steps_checked": n_steps})
    return rows


@torch.no_grad()
def budget_accuracy(model, tokenizer, problems: list[R.Problem], budget: int) -> float:
    """Accuracy when the trace is cut after ``budget`` tokens and ``Answer:`` is appended (budget forcing)."""
    from lmstack.generate import generate

    prompts = [list(tokenizer.encode_chat(_conversation(p, True), add_generation_prompt=True)[0]) for p in problems]
    partial = [""] * len(problems)
    if budget > 0:
        gens = generate(model, tokenizer, prompts, common.generation_config(budget, stop=[R.ANSWER_PREFIX]), batch_size=32)
        partial = [g.text.rstrip() for g in gens]
    limit = common.model_max_len(model) - 10
    forced = [(p + tokenizer.encode((t + "\n" if t else "") + R.ANSWER_PREFIX))[-limit:] for p, t in zip(prompts, partial)]
    finals = generate(model, tokenizer, forced, common.generation_config(12, stop=["\n"]), batch_size=32)
    return common.rate([R.is_correct(R.ANSWER_PREFIX + g.text, p.answer) for g, p in zip(finals, problems)])


def write_sets(out_dir: Path, sets: dict[str, list[R.Problem]]) -> dict[str, Path]:
    paths = {}
    for name, problems in sets.items():
        for with_trace in ((True, False) if name == "train" else (True,)):
            fname = f"{name}_{'trace' if with_trace else 'direct'}.jsonl" if name == "train" else f"{name}.jsonl"
            paths[fname] = out_dir / fname
            atomic_write_text(paths[fname], "".join(json.dumps(R.to_chat(p, with_trace), ensure_ascii=False) + "\n"
                                                    for p in problems))
    return paths


def _sft(ctx, cfg: Config, tokenizer, train_path: Path, label: str):
    model = common.load_model(ctx.run.path, cfg.init_from, ctx.device, needed_by="reason")
    sft_cfg = sft.Config(init_from=cfg.init_from, steps=cfg.sft_steps, batch_size=cfg.batch_size,
                         optim=common.finetune_optim(lr=cfg.lr), log_every=max(1, cfg.sft_steps // 10))
    summary = sft.train_sft(model, tokenizer, sft_cfg, train_path, ctx, label)
    return model.eval(), summary


def run_grpo(ctx, cfg: Config, model, tokenizer, train: list[R.Problem]) -> tuple[object, dict]:
    """GRPO from ``model`` (trained in place) on the problems ``train`` with the rule reward."""
    g = cfg.grpo
    pcfg = ppo.Config(algo="grpo", iterations=g.iterations, prompts_per_iteration=g.prompts_per_iteration,
                      group_size=g.group_size, max_new_tokens=cfg.max_new_tokens, temperature=g.temperature,
                      ppo_epochs=g.ppo_epochs, minibatch_size=g.minibatch_size, clip_eps=g.clip_eps, kl_coef=g.kl_coef,
                      missing_end_penalty=g.missing_end_penalty, optim=common.finetune_optim(lr=g.lr))
    ref = common.frozen_copy(model)
    policy = ppo.PolicyWithValueHead(model).to(ctx.device)
    policy.value_head.requires_grad_(False)
    optimizer = common.build_optimizer_for(policy, pcfg.optim)
    reward_fn = rule_reward({p.question: p.answer for p in train}, cfg.format_weight)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed)).tolist()
    hist = defaultdict(list)
    timer = common.Timer()
    for it in common.progress(range(g.iterations), g.iterations, "reason grpo"):
        picks = [train[order[(it * g.prompts_per_iteration + j) % len(order)]] for j in range(g.prompts_per_iteration)]
        batch = [_conversation(p, True) for p in picks for _ in range(g.group_size)]
        roll = ppo.collect_rollout(policy, ref, None, tokenizer, batch, pcfg, ctx.device, seed=ctx.seed * 1000 + it,
                                   reward_fn=reward_fn)
        stats = ppo.grpo_update(policy, optimizer, roll, pcfg, it, g.iterations)
        accuracy = common.rate([R.is_correct(t, p.answer) for t, p in
                                zip(roll.texts, [p for p in picks for _ in range(g.group_size)])])
        for key, value in (("reward", float(roll.scores.mean())), ("accuracy", accuracy), ("kl", stats["kl"]),
                           ("length", float(roll.lengths.float().mean()))):
            hist[key].append(value)
        ctx.run.append_metrics({"stage": "reason", "phase": "grpo", "iteration": it, "reward": hist["reward"][-1],
                                "sample_accuracy": accuracy, "kl": stats["kl"], "response_len": hist["length"][-1]})
    model.eval()
    return model, {**hist, "seconds": timer.seconds}


def _accuracy_by_level(results: dict[str, dict[str, list[dict]]]) -> list[tuple]:
    """One row per (set, kind, steps): accuracy of each model, and the trace models' mean reasoning tokens."""
    names = list(results)
    rows = []
    for split in ("eval_same", "eval_hard"):
        keys = sorted({(r["kind"], r["n_steps"]) for r in results[names[0]][split]})
        for kind, n in keys:
            cells = []
            for name in names:
                sel = [r for r in results[name][split] if (r["kind"], r["n_steps"]) == (kind, n)]
                cells.append(common.rate([r["correct"] for r in sel]))
            n_items = sum(1 for r in results[names[0]][split] if (r["kind"], r["n_steps"]) == (kind, n))
            rows.append(("training difficulty" if split == "eval_same" else "harder (held out)", kind, n, n_items, *cells))
    return rows


def _accuracy_by_tokens(rows: list[dict], edges=(0, 1, 16, 32, 48, 64, 10 ** 9)) -> list[tuple]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [r for r in rows if lo <= r["reasoning_tokens"] < hi]
        if sel:
            label = f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi < 10 ** 9 else f">= {lo}")
            out.append((label, len(sel), common.rate([r["correct"] for r in sel])))
    return out


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult

    from lmstack.runs import read_json

    run_path = ctx.run.path
    common.set_seed(ctx.seed)
    tokenizer = common.load_tokenizer(run_path)
    world = read_json(common.world_file(run_path, "world.json"))
    sets = R.make_reasoning_sets(world, ctx.seed, cfg.n_train, cfg.n_eval_per_level, cfg.train_arith_ops,
                                 cfg.eval_arith_ops, cfg.train_hops, cfg.eval_hops,
                                 n_rl=cfg.grpo.iterations * cfg.grpo.prompts_per_iteration,
                                 rl_arith_ops=cfg.grpo.arith_ops, scratchpad=cfg.scratchpad)
    paths = write_sets(run_path / "data" / "reason", sets)
    ctx.log(f"{len(sets['train'])} training problems, {len(sets['eval_same'])} held-out at the training difficulties,"
            f" {len(sets['eval_hard'])} harder")

    models: dict[str, tuple[object, bool]] = {}
    base = common.load_model(run_path, cfg.init_from, ctx.device, needed_by="reason").eval()
    models[f"{cfg.init_from} (no reasoning data)"] = (base, True)
    summaries = {}
    if cfg.direct_baseline:
        direct, summaries["direct"] = _sft(ctx, cfg, tokenizer, paths["train_direct.jsonl"], "reason_direct")
        models["direct-answer SFT"] = (direct, False)
    trace_model, summaries["trace"] = _sft(ctx, cfg, tokenizer, paths["train_trace.jsonl"], "reason_sft")
    models["trace SFT"] = (trace_model, True)
    sft_dir = common.checkpoint_dir(run_path, "reason_sft")
    common.save_finetuned(trace_model, sft_dir, None, {"stage": "reason", "phase": "trace_sft", "steps": cfg.sft_steps},
                          str(common.checkpoint_dir(run_path, cfg.init_from)))
    grpo_model, hist = run_grpo(ctx, cfg, copy.deepcopy(trace_model), tokenizer, sets["rl"])
    models["trace SFT + GRPO"] = (grpo_model, True)
    out_dir = common.checkpoint_dir(run_path, "reason")
    common.save_finetuned(grpo_model, out_dir, None, {"stage": "reason", "phase": "grpo", "iterations": cfg.grpo.iterations},
                          str(sft_dir))

    results = {name: {split: evaluate(m, tokenizer, sets[split], trace, cfg.max_new_tokens)
                      for split in ("eval_same", "eval_hard")} for name, (m, trace) in models.items()}
    budgets = {name: [budget_accuracy(m, tokenizer, sets["eval_hard"], b) for b in cfg.token_budgets]
               for name, (m, trace) in models.items() if name in ("trace SFT", "trace SFT + GRPO")}
    atomic_write_text(run_path / "eval" / "reason_answers.jsonl", "".join(
        json.dumps({"model": name, "split": split, **r}, ensure_ascii=False) + "\n"
        for name, by in results.items() for split, rows in by.items() for r in rows))
    return _result(run_path, cfg, sets, summaries, hist, results, budgets, StageResult)


def _result(run_path: Path, cfg: Config, sets, summaries, hist, results, budgets, StageResult):
    names = list(results)
    acc = {name: {split: common.rate([r["correct"] for r in rows]) for split, rows in by.items()}
           for name, by in results.items()}
    tokens = {name: sum(r["reasoning_tokens"] for r in by["eval_hard"]) / max(1, len(by["eval_hard"]))
              for name, by in results.items()}
    key = {names[0]: "base", "direct-answer SFT": "direct", "trace SFT": "trace_sft", "trace SFT + GRPO": "grpo"}
    metrics = {f"{key[n]}_accuracy_{'same' if s == 'eval_same' else 'hard'}": v for n, by in acc.items() for s, v in by.items()}
    metrics.update({f"{key[n]}_reasoning_tokens_hard": round(t, 1) for n, t in tokens.items()})
    metrics.update(grpo_reward_first=hist["reward"][0], grpo_reward_last=hist["reward"][-1], grpo_kl_last=hist["kl"][-1],
                   train_problems=len(sets["train"]), grpo_problems=len(sets["rl"]), eval_same=len(sets["eval_same"]),
                   eval_hard=len(sets["eval_hard"]), grpo_seconds=round(hist["seconds"], 1))
    xs = list(range(1, len(hist["reward"]) + 1))
    plot = "plots/reason_grpo.png"
    save_line_plot(run_path / plot, {"mean rule reward": (xs, hist["reward"]), "sample accuracy": (xs, hist["accuracy"])},
                   "reason: GRPO with a verifiable reward", "iteration", "reward / accuracy",
                   secondary={"KL(pi || ref) per sequence": (xs, hist["kl"])}, secondary_label="KL (nats)")
    budget_plot = "plots/reason_budget.png"
    if budgets:
        save_line_plot(run_path / budget_plot, {n: (list(cfg.token_budgets), v) for n, v in budgets.items()},
                       "reason: accuracy on harder problems vs reasoning-token budget", "reasoning tokens allowed",
                       "accuracy")
    lines = [f"Trace SFT and direct-answer SFT from `checkpoints/{cfg.init_from}` on the same {len(sets['train'])} problems"
             f" (arithmetic chains of {cfg.train_arith_ops} operations, world chains of {cfg.train_hops} hops),"
             f" {cfg.sft_steps} steps x batch {cfg.batch_size}; then GRPO from the trace model with the rule reward"
             f" (1 for the right final answer + {cfg.format_weight:g} for an `Answer:` line, no reward model):"
             f" {cfg.grpo.iterations} iterations x {cfg.grpo.prompts_per_iteration} problems x"
             f" {cfg.grpo.group_size} samples on {len(sets['rl'])} fresh arithmetic chains of {cfg.grpo.arith_ops}"
             " operations (in no SFT or held-out set),"
             f" {hist['seconds']:.1f}s. Held out: {len(sets['eval_same'])} problems at the training difficulties and"
             f" {len(sets['eval_hard'])} harder ones (arithmetic {cfg.eval_arith_ops} operations, {cfg.eval_hops} hops).\n",
             "**Accuracy before / after** (greedy; the final `Answer:` line must equal the reference):\n",
             markdown_table(["model", "training difficulty", "harder (more steps)", "reasoning tokens (harder)"],
                            [(n, acc[n]["eval_same"], acc[n]["eval_hard"], f"{tokens[n]:.1f}") for n in names]), "",
             "**By difficulty:**\n",
             markdown_table(["set", "kind", "steps", "n", *names], _accuracy_by_level(results)), "",
             f"GRPO: mean reward {hist['reward'][0]:.3f} (first iteration) -> {hist['reward'][-1]:.3f} (last);"
             f" KL to the trace model ends at {hist['kl'][-1]:.3f} nats/sequence.\n", f"![reason GRPO]({plot})\n"]
    if budgets:
        lines += ["**Accuracy on the harder problems vs the reasoning tokens allowed** (budget forcing: the trace is"
                  " cut after B tokens and `Answer:` appended):\n",
                  markdown_table(["budget (tokens)", *budgets],
                                 [(b, *[budgets[n][i] for n in budgets]) for i, b in enumerate(cfg.token_budgets)]), "",
                  f"![budget]({budget_plot})\n"]
    for name in ("trace SFT", "trace SFT + GRPO"):
        rows = results[name]["eval_same"] + results[name]["eval_hard"]
        lines += [f"**{name}: accuracy by the number of reasoning tokens it wrote** (all held-out problems):\n",
                  markdown_table(["reasoning tokens", "n", "accuracy"], _accuracy_by_tokens(rows)), ""]
    sample = [r for r in results["trace SFT + GRPO"]["eval_hard"]][:4]
    lines += ["Sample answers of the GRPO model on harder problems:\n",
              markdown_table(["question", "model output", "reference", "judged"],
                             [(table_cell(r["question"], 60), table_cell(r["output"], 90), r["answer"],
                               "right" if r["correct"] else "wrong") for r in sample])]
    artifacts = {"checkpoint": "checkpoints/reason", "trace_sft_checkpoint": "checkpoints/reason_sft", "plot": plot,
                 "answers": "eval/reason_answers.jsonl", "train_data": "data/reason/train_trace.jsonl"}
    if budgets:
        artifacts["budget_plot"] = budget_plot
    return StageResult(metrics=metrics, artifacts=artifacts, report="\n".join(lines) + "\n")
