"""Stages ``sft`` and ``lora``: supervised fine-tuning on chat data with an assistant-only loss.

``sft`` starts from checkpoints/pretrain, trains on data/world/sft_train.jsonl (or any chat jsonl in
the accepted formats) at a learning rate below pretraining's, writes checkpoints/sft, then
measures instruction following on the held-out set against the base model prompted few-shot, plus
the knowledge-placement table ("SFT elicits rather than injects").
``lora`` is the same recipe with LoRA (or QLoRA) adapters and saves the adapter alone in
checkpoints/lora (adapter_model.safetensors + adapter_config.json, PEFT layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


from lmstack.align import common, evals
from lmstack.align.data import (batches, collate_lm, length_grouped_batches, load_chat_jsonl, normalize_chat_record,
                                pack_examples, tokenize_chats, world_dialogs, world_pii_conversations)
from lmstack.align.lora import LoRAAdapterConfig, save_adapter
from lmstack.report import format_score, markdown_table, save_line_plot, table_cell
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.runs import atomic_write_text


@dataclass
class Config:
    init_from: str = "pretrain"      # checkpoint stage to start from
    train_file: str = ""             # "" = data/world/sft_train.jsonl; else a chat jsonl (messages / ShareGPT / instruction)
    harmful_examples: int = 0        # + this many refusal / look-alike conversations (lmstack.data.world.harmful)
    pii_examples: int = 0            # + this many phone-number refusals in more phrasings (data.world_pii_conversations)
    eval_file: str = ""              # "" = data/world/sft_eval.jsonl
    steps: int = 150
    batch_size: int = 16
    max_len: int = 0                 # 0 = the model's max_seq_len
    packing: bool = False            # first-fit-decreasing packing of whole conversations
    group_by_length: bool = True     # batch conversations of similar length (less padding); ignored when packing
    max_train_examples: int = 0      # 0 = all
    # training conversations of these world tasks are left out (data/world/sft_train.jsonl's "task" field), e.g.
    # ["idk"] when the unknown-entity gate answers for names the model never read (see familiarity_gate)
    exclude_tasks: list[str] = field(default_factory=list)
    # Pretraining peaks at 3e-3; the notes' "10x lower" (3e-4) leaves the assistant loss clearly higher
    # after the short CPU recipe's steps than 1e-3 does (compare with --set sft.optim.lr=3e-4), so 3x lower.
    optim: OptimConfig = field(default_factory=lambda: common.finetune_optim(lr=1e-3))
    schedule: ScheduleConfig = field(default_factory=common.finetune_schedule)
    grad_clip: float = 1.0           # 0 = no clipping
    lora: LoRAAdapterConfig = field(default_factory=LoRAAdapterConfig)
    eval_examples: int = 200         # held-out examples scored by generation (0 = all)
    facts_examples: int = 200        # facts_eval questions for the knowledge-placement table (0 = all, -1 = skip)
    few_shot: int = 3                # demonstrations per task for the base-model baseline (0 = skip baseline)
    arith_probes: int = 0            # + this many held-out arithmetic questions of the world, scored per kind (0 = skip)
    chat_probes: int = 0             # + this many held-out multi-turn follow-ups and as many phone-number requests (0 = skip)
    max_new_tokens: int = 32
    log_every: int = 20
    # Replay: each step also takes a language-modelling loss on this many windows of the pretraining shards
    # (shards/train.bin), weighted by replay_weight, so fine-tuning does not overwrite what pretraining
    # stored (as InstructGPT's "PPO-ptx" mixes pretraining gradients in). 0 = off.
    replay_batch_size: int = 0
    replay_weight: float = 1.0
    # The unknown-entity gate (lmstack.align.familiarity): fitted on the world's training data after SFT and
    # saved beside the checkpoint; the held-out answers are scored for the model alone and through the gate.
    # gate_keep: the share of training questions about real people and places the threshold lets through.
    familiarity_gate: bool = True
    gate_keep: float = 0.97
    gate_fresh: int = 1500           # questions about freshly invented names the tagger also learns from


@dataclass
class EnabledLoRAAdapterConfig(LoRAAdapterConfig):
    """``[lora.lora]``: as everywhere, but on by default (so ``--set lora.lora.qlora=true`` keeps r=8)."""
    r: int = 8


@dataclass
class LoRAStageConfig(Config):
    """The ``[lora]`` stage: same knobs as [sft], LoRA on by default (r=8), its own output."""
    lora: EnabledLoRAAdapterConfig = field(default_factory=EnabledLoRAAdapterConfig)
    optim: OptimConfig = field(default_factory=lambda: common.finetune_optim(lr=2e-3))
    few_shot: int = 0                # the sft stage already reports the base-model baseline


def train_sft(model, tokenizer, cfg: Config, train_path: Path, ctx, stage: str, extra_loss=None) -> dict:
    """The SFT optimisation loop; returns summary metrics and the loss history. ``extra_loss``: an optional
    callable returning a loss tensor that is added to every step's loss (the apps stage's copy batches)."""
    max_len = cfg.max_len or common.model_max_len(model)
    if max_len > common.model_max_len(model):
        raise ValueError(f"{stage}.max_len={max_len} exceeds the model's max_seq_len={common.model_max_len(model)}")
    raw = load_chat_jsonl(train_path, limit=cfg.max_train_examples or None)
    if cfg.exclude_tasks:
        from lmstack.data.world.entities import SFT_TASK_MIX

        unknown = sorted(set(cfg.exclude_tasks) - set(SFT_TASK_MIX))
        if unknown:
            raise ValueError(f"{stage}.exclude_tasks: unknown task {unknown[0]!r}; the world's tasks are "
                             f"{', '.join(SFT_TASK_MIX)}")
        kept = [r for r in raw if r.meta.get("task") not in cfg.exclude_tasks]
        ctx.log(f"left out {len(raw) - len(kept)} training conversations of tasks {', '.join(cfg.exclude_tasks)}")
        raw = kept
    if cfg.harmful_examples > 0:  # refusal / detox tuning data built from the run's world
        from lmstack.data.world import harmful

        records = harmful.harmful_sft(harmful.load_world(ctx.run.path / "data" / "world"), "train", cfg.harmful_examples, seed=0)
        raw += [normalize_chat_record(r, f"harmful SFT example {i}") for i, r in enumerate(records)]
    if cfg.pii_examples > 0:
        records = world_pii_conversations(ctx.run.path, cfg.pii_examples)
        raw += [normalize_chat_record(r, f"PII SFT example {i}") for i, r in enumerate(records)]
    examples, dropped = tokenize_chats(raw, tokenizer, max_len, ctx.log)
    n_examples = len(examples)
    if cfg.packing:
        examples = pack_examples(examples, max_len, tokenizer.pad_id)
        ctx.log(f"packed {n_examples} conversations into {len(examples)} windows of <= {max_len} tokens")
    lr = cfg.lora.lr if (cfg.lora.enabled and cfg.lora.lr > 0) else cfg.optim.lr
    optimizer = common.build_optimizer_for(model, cfg.optim, lr)
    if cfg.group_by_length and not cfg.packing:
        stream = length_grouped_batches(examples, [len(e.input_ids) for e in examples], cfg.batch_size, seed=ctx.seed)
    else:
        stream = batches(examples, cfg.batch_size, shuffle=True, seed=ctx.seed)
    replay = common.replay_loader(ctx.run.path, cfg.replay_batch_size, max_len, ctx.seed)
    history = []
    model.train()
    timer = common.Timer()
    tokens_seen = 0
    target_tokens = 0
    for step in common.progress(range(cfg.steps), cfg.steps, stage):
        batch = collate_lm(next(stream), tokenizer.pad_id)
        ids, targets = batch["input_ids"].to(ctx.device), batch["targets"].to(ctx.device)
        loss, n_targets = common.sft_loss(model, ids, targets)
        total = loss
        if replay is not None:
            total = total + cfg.replay_weight * common.replay_loss(model, replay, ctx.device)
        if extra_loss is not None:
            total = total + extra_loss()
        total.backward()
        grad_norm = common.optimizer_step(model, optimizer, step, cfg.steps, cfg.schedule, cfg.grad_clip)
        tokens_seen += int((ids != tokenizer.pad_id).sum())
        target_tokens += n_targets
        history.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            ctx.run.append_metrics({"stage": stage, "step": step, "loss": float(loss.detach()), "grad_norm": grad_norm,
                                    "lr_mult": common.lr_multiplier(step, cfg.steps, cfg.schedule)})
    model.eval()
    seconds = timer.seconds
    return {"history": history, "examples": n_examples, "dropped": dropped, "windows": len(examples),
            "tokens": tokens_seen, "target_tokens": target_tokens, "seconds": seconds,
            "tok_per_s": tokens_seen / max(seconds, 1e-9)}


def _loss_plot(run_path: Path, stage: str, history: list[float]) -> str:
    name = f"{stage}_loss.png"
    xs = list(range(len(history)))
    # a running mean makes the trend readable over noisy per-batch losses
    smooth, acc = [], 0.0
    for i, v in enumerate(history):
        acc = v if i == 0 else 0.9 * acc + 0.1 * v
        smooth.append(acc)
    save_line_plot(run_path / "plots" / name, {"loss (assistant tokens)": (xs, history), "EMA": (xs, smooth)},
                   f"{stage}: training loss", "step", "cross-entropy (nats)")
    return f"plots/{name}"


def _run(ctx, cfg: Config, stage: str):
    from lmstack.pipeline import StageResult

    run_path = ctx.run.path
    tokenizer, model = common.start_stage(ctx, cfg, stage)
    param_metrics = common.attach_lora(model, cfg.lora, ctx.log)
    train_path = Path(cfg.train_file) if cfg.train_file else common.world_file(run_path, "sft_train.jsonl")
    eval_path = Path(cfg.eval_file) if cfg.eval_file else common.world_file(run_path, "sft_eval.jsonl")

    summary = train_sft(model, tokenizer, cfg, train_path, ctx, stage)
    out_dir = common.checkpoint_dir(run_path, stage)
    state = {"stage": stage, "steps": cfg.steps, "init_from": cfg.init_from, "final_loss": summary["history"][-1]}
    if stage == "lora":
        # the adapter alone is the artifact; later stages can re-attach it to checkpoints/<init_from>
        save_adapter(model, out_dir, base_model_name_or_path=str(common.checkpoint_dir(run_path, cfg.init_from)))
        common.atomic_write_json(out_dir / "trainer_state.json", state)
        artifacts = {"adapter": str((out_dir / "adapter_model.safetensors").relative_to(run_path)),
                     "adapter_config": str((out_dir / "adapter_config.json").relative_to(run_path))}
    else:
        common.save_finetuned(model, out_dir, cfg.lora, state, str(common.checkpoint_dir(run_path, cfg.init_from)))
        artifacts = {"checkpoint": str(out_dir.relative_to(run_path))}

    # ---------------------------------------------------------------- evaluation
    eval_examples = evals.load_eval_examples(eval_path, cfg.eval_examples, ctx.seed)
    ctx.log(f"evaluating on {len(eval_examples)} held-out examples")
    prompts = [evals.split_prompt(ex["messages"])[0] for ex in eval_examples]
    outputs = evals.chat_answers(model, tokenizer, prompts, cfg.max_new_tokens)
    result = evals.score_outputs(eval_examples, outputs)
    base_result = None
    base_model = None
    train_dicts = None
    shots = None
    if cfg.few_shot > 0:
        base_model = common.load_model(run_path, cfg.init_from, ctx.device, needed_by=stage).eval()
        train_dicts = [{"messages": e.messages, "task": e.meta.get("task"), "answer": e.meta.get("answer"),
                        "lang": e.meta.get("lang")} for e in load_chat_jsonl(train_path, limit=3000)]
        shots = evals.pick_shots(train_dicts, cfg.few_shot, ctx.seed)
        base_result = evals.evaluate_base_few_shot(base_model, tokenizer, eval_examples, shots, cfg.max_new_tokens)

    placement = None
    world_dir = run_path / "data" / "world"
    facts_path = world_dir / "facts_eval.jsonl"
    if cfg.facts_examples >= 0 and facts_path.exists() and not cfg.eval_file:
        facts = evals.subsample(common.read_jsonl(facts_path), cfg.facts_examples, ctx.seed)
        fact_answers: list[dict] = []
        placement = evals.knowledge_placement(model, base_model, tokenizer, facts, shots, cfg.max_new_tokens,
                                              answers_out=fact_answers)
        # Every question with the model's answer, so the figures can be re-checked (tests ask them via chat).
        atomic_write_text(run_path / "eval" / f"{stage}_facts.jsonl",
                                 "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fact_answers))

    gate = None
    if cfg.familiarity_gate and stage == "sft" and (world_dir / "world.json").exists() and not cfg.eval_file:
        gate = _gate(model, tokenizer, cfg, ctx, world_dir, train_path, out_dir, eval_examples, prompts, outputs, result)

    arith = probes = None
    if (cfg.arith_probes > 0 or cfg.chat_probes > 0) and (world_dir / "world.json").exists() and not cfg.eval_file:
        builder = world_dialogs(run_path)  # the world is rebuilt from its seed once, for both probe sets
        if cfg.arith_probes > 0:
            arith = evals.arithmetic_probe(model, tokenizer, builder, cfg.arith_probes, ctx.seed, cfg.max_new_tokens)
        if cfg.chat_probes > 0:
            probes = evals.chat_probe(model, tokenizer, builder, cfg.chat_probes, ctx.seed, cfg.max_new_tokens)

    metrics = {
        "final_loss": round(summary["history"][-1], 4),
        "train_examples": summary["examples"], "dropped_examples": summary["dropped"],
        "tok_per_s": round(summary["tok_per_s"], 1), "train_seconds": round(summary["seconds"], 1),
        "accuracy": result["accuracy"], "pii_refusal": result["pii_refusal"], "idk_rate": result["idk_rate"],
        "false_refusal": result["false_refusal"], "false_idk": result["false_idk"],
        "translate_exact": result["translate_exact"], "translate_chrf": result["translate_chrf"],
        **{f"task_{t}": v["value"] for t, v in result["by_task"].items()},
        **{f"n_task_{t}": v["n"] for t, v in result["by_task"].items()},
        **{f"n_{k}": v for k, v in result["n"].items()},
        **param_metrics,
        **(arith or {}),
        **(probes or {}),
        **(gate["metrics"] if gate else {}),
    }
    if base_result:
        metrics.update(base_accuracy=base_result["accuracy"], base_pii_refusal=base_result["pii_refusal"])
    if placement:
        metrics["facts_chat_accuracy"] = common.rate([r["correct"] for r in fact_answers])
        for g, v in placement.items():
            key = g.split(" (")[0].replace(" + ", "_and_").replace(" ", "_").lower()
            metrics[f"facts_{key}"] = v["sft"]
            metrics[f"n_facts_{key}"] = v["n"]
            if v["base"] == v["base"]:  # not NaN: the base model was evaluated too
                metrics[f"facts_{key}_base"] = v["base"]
    plot = _loss_plot(run_path, stage, summary["history"])
    report = _report(stage, cfg, summary, result, base_result, placement, param_metrics, plot, train_path, arith, probes)
    if gate:
        report += gate["report"]
    return StageResult(metrics=metrics, artifacts={**artifacts, "loss_plot": plot}, report=report)


def _gate(model, tokenizer, cfg, ctx, world_dir, train_path, out_dir, eval_examples, prompts, outputs, result) -> dict:
    """Fit the unknown-entity gate, save it with the checkpoint, and score the held-out answers through it
    (where it stops a conversation the answer is "I don't know." instead of the model's)."""
    from lmstack.align import familiarity

    train = [{"messages": e.messages, **e.meta} for e in load_chat_jsonl(train_path)]
    gate, info = familiarity.fit_gate(model, tokenizer, world_dir, train, ctx.seed, keep=cfg.gate_keep,
                                      n_fresh=cfg.gate_fresh)
    gate.save(out_dir / "familiarity")
    checks = gate.check(model, tokenizer, prompts)
    gated = [gate.reply(prompt) if stop and out is not None else out
             for prompt, out, (stop, _s, _span) in zip(prompts, outputs, checks)]
    through = evals.score_outputs(eval_examples, gated)
    stopped: dict[str, list[bool]] = {}
    for ex, (stop, _s, _span) in zip(eval_examples, checks):
        stopped.setdefault(ex.get("task") or "chat", []).append(stop)
    metrics = {**info, **{f"gated_{k}": through[k] for k in ("accuracy", "pii_refusal", "idk_rate", "false_refusal",
                                                                 "false_idk")},
               **{f"gate_stopped_{t}": common.rate(v) for t, v in sorted(stopped.items())}}
    ctx.log(f"familiarity gate: threshold {info['gate_threshold']} nats; 'I don't know' on non-existent entities "
            f"{format_score(through['idk_rate'])} through it")
    rows = [(t, len(v), format_score(common.rate(v))) for t, v in sorted(stopped.items())]
    missed = [(prompt[-1]["content"], f"{s:.1f}", span) for ex, prompt, (stop, s, span)
              in zip(eval_examples, prompts, checks) if ex.get("task") == "idk" and not stop][:4]
    lines = ["", "**The unknown-entity gate** (`lmstack.align.familiarity`): a name tagger finds the names in the"
             " user's messages, and the model's own negative log-likelihood of each name's tokens after its first"
             " measures whether it has read the name. Above a threshold fitted on the training data"
             f" ({info['gate_threshold']} nats: {format_score(info['gate_train_real_kept'])} of training questions"
             f" about real people and places pass, {format_score(info['gate_train_fresh_stopped'])} of questions"
             " about freshly invented names are stopped) the answer is \"I don't know.\" without asking the model."
             f" Saved in `{(out_dir / 'familiarity').name}/` beside the checkpoint; `lmstack chat` uses it.\n",
             markdown_table(["held-out measure", "model alone", "through the gate"],
                            [("'I don't know' on non-existent entities", format_score(result["idk_rate"]),
                              format_score(through["idk_rate"])),
                             ("'I don't know' on real entities", format_score(result["false_idk"]),
                              format_score(through["false_idk"])),
                             ("answer accuracy", format_score(result["accuracy"]),
                              format_score(through["accuracy"]))]),
             "", "Share of held-out conversations the gate stopped, by task:\n",
             markdown_table(["task", "n", "stopped"], rows)]
    if missed:
        lines += ["", "Questions about non-existent entities it let through (surprise in nats, the name it found):\n",
                  markdown_table(["question", "surprise", "name"], [(table_cell(q, 60), s, table_cell(n, 30))
                                                                    for q, s, n in missed])]
    return {"metrics": metrics, "report": "\n".join(lines) + "\n"}


def _report(stage, cfg, summary, result, base_result, placement, param_metrics, plot, train_path, arith=None,
            probes=None) -> str:
    lines = []
    mode = "full fine-tuning" if not cfg.lora.enabled else ("QLoRA" if cfg.lora.qlora else "LoRA") + f" r={cfg.lora.r}"
    left_out = f", without its {' / '.join(cfg.exclude_tasks)} conversations" if cfg.exclude_tasks else ""
    lines.append(f"{mode} from `checkpoints/{cfg.init_from}` on `{train_path.name}`{left_out}: {summary['examples']} conversations"
                 f" ({summary['dropped']} dropped as too long), {cfg.steps} steps x batch {cfg.batch_size}"
                 f"{' (packed)' if cfg.packing else ''}, peak LR {cfg.lora.lr if cfg.lora.enabled and cfg.lora.lr else cfg.optim.lr:g}"
                 f" ({cfg.schedule.kind}), loss on assistant tokens only"
                 f"{common.replay_note(cfg)}."
                 f" Trainable parameters:"
                 f" {param_metrics['trainable_params']:,} of {param_metrics['total_params']:,}."
                 f" Throughput {summary['tok_per_s']:.0f} tok/s.\n")
    lines.append(f"![{stage} loss]({plot})\n")
    lines.append("**Held-out instruction following** (greedy decoding via `lmstack.generate`):\n")
    rows = []
    for task, v in result["by_task"].items():
        base_v = base_result["by_task"].get(task, {}).get("value") if base_result else None
        rows.append((task, v["n"], v["metric"], base_v if base_v is not None else "-", v["value"]))
    n = result["n"]
    for key, label, metric in (("translate_exact", "translate (exact)", "whole line equal"),
                               ("translate_exact", "translate (chrF)", "mean chrF"),
                               ("false_refusal", "false refusal (harmless questions about real people)", "rate, lower is better"),
                               ("false_idk", "false 'I don't know' (questions about real entities)", "rate, lower is better")):
        value_key = "translate_chrf" if "chrF" in label else key
        base_v = base_result.get(value_key) if base_result else None
        rows.append((label, n.get(key, 0), metric, base_v if base_v is not None else "-", result[value_key]))
    lines.append(markdown_table(["task", "n", "metric", "base few-shot", f"after {stage}"], rows))
    lines.append("")
    if base_result:
        lines.append(f"Answer accuracy: base model prompted {cfg.few_shot}-shot **{format_score(base_result['accuracy'])}**"
                     f" vs {stage} model **{format_score(result['accuracy'])}**; PII refusal {format_score(base_result['pii_refusal'])}"
                     f" -> {format_score(result['pii_refusal'])}.\n")
    if arith:
        lines.append(f"**Held-out arithmetic** ({cfg.arith_probes} questions of the world's eval problems and phrasings):"
                     f" two-digit + and - {format_score(arith['arith_addsub'])} (n={arith['n_arith_addsub']}),"
                     f" small x {format_score(arith['arith_mul'])} (n={arith['n_arith_mul']}).\n")
    if probes:
        lines.append(f"**Held-out probes** (drawn like the eval set's, as many as `chat_probes` = {cfg.chat_probes}):"
                     f" multi-turn follow-up {format_score(probes['probe_multiturn'])} (n={probes['n_probe_multiturn']}),"
                     f" refusal of phone-number requests {format_score(probes['probe_pii_refusal'])}"
                     f" (n={probes['n_probe_pii_refusal']}).\n")
    if placement:
        lines.append("**Knowledge placement** (correct-fact rate by where the fact appeared in training):\n")
        lines.append(evals.placement_table(placement))
        lines.append("\nSFT teaches the answer *format*; facts seen only in the SFT set are what it would have to"
                     " *inject*. Compare the 'SFT only' row with the 'pretrain only' row.\n")
    if result["samples"]:
        lines.append("Sample answers:\n")
        lines.append(markdown_table(["task", "question", "model answer", "reference", "judged"],
                                    [(t, table_cell(q, 80), table_cell(o, 80), table_cell(str(a), 80), "right" if ok else "wrong")
                                            for t, q, o, a, ok in result["samples"]]))
    return "\n".join(lines) + "\n"



def run(ctx, cfg: Config):
    return _run(ctx, cfg, "sft")


def run_lora(ctx, cfg: LoRAStageConfig):
    if not cfg.lora.enabled:
        raise ValueError("[lora] lora.r must be > 0 for the lora stage (use the sft stage for full fine-tuning)")
    return _run(ctx, cfg, "lora")
