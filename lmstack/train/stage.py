"""Stage ``pretrain``: train the decoder-only Transformer on the token shards.

Reads ``tokenizer/tokenizer.json``, ``shards/{train,val}.bin`` and ``shards/meta.json`` (and
``data/world/facts_eval.jsonl`` for the fact-recall eval); writes ``checkpoints/pretrain/``
(model.safetensors + config.json + trainer_state.json, plus ``step_*/`` resume checkpoints),
metrics.jsonl records and plots. Re-running an interrupted stage resumes from the newest
complete ``step_*`` checkpoint. Under ``torchrun`` the same stage trains with DDP or FSDP2.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from lmstack.config import OverridesOf
from lmstack.model.config import PRESETS, ModelConfig
from lmstack.report import pyplot, save_figure
from lmstack.runs import atomic_write_json
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer

STAGE = "pretrain"

# [pretrain.model]: a preset name and the ModelConfig fields that differ from it (vocab_size and
# max_seq_len come from the tokenizer and seq_len); every key is checked against ModelConfig at load
ModelTable = Annotated[dict[str, Any], OverridesOf(ModelConfig, extra={"preset": Literal[tuple(PRESETS)]})]


def default_model_table() -> dict[str, Any]:
    # vocab_size comes from the tokenizer; max_seq_len from seq_len. Small and fast: on 2 CPU cores
    # more steps over the world's facts beat more parameters.
    return {"preset": "llama-style", "d_model": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2}


@dataclass
class Config(TrainConfig):
    """The ``[pretrain]`` recipe table: the TrainConfig fields plus the model and eval settings."""
    model: ModelTable = field(default_factory=default_model_table)
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 256
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.1))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="wsd", warmup_steps=30,
                                                                            min_lr_ratio=0.0, decay_frac=0.3))
    eval_every: int = 200
    ckpt_every: int = 200
    log_every: int = 10
    max_seconds: float = 420.0       # > 0: pick the step count so training takes about this long
                                     # (timed on the first warmup steps; `steps` is then the upper bound)
    threads: int = 0                 # torch intra-op threads; 0 = all cores of this machine; -1 = measured
                                     # once per machine (lmstack.machine.probe_threads)
    fact_shots: int = 3              # solved examples before each fact prompt
    fact_eval_max: int = 200         # facts evaluated (sampled, fixed seed); 0 = all
    sample_prompts: list[str] = field(default_factory=lambda: ["The capital of France is", "Once upon a time",
                                                               "def main(", "法国的首都是"])
    sample_tokens: int = 48


def _thread_count(threads: int) -> int:
    if threads < -1:
        raise ValueError(f"[pretrain] threads={threads}: use a count, 0 (all cores) or -1 (measure the best)")
    if threads == -1:
        from lmstack.machine import probe_threads
        return probe_threads()
    return threads or max(1, os.cpu_count() or 1)


def build_model_config(cfg: Config, vocab_size: int) -> ModelConfig:
    overrides = dict(cfg.model)
    preset = overrides.pop("preset", "llama-style")
    if "vocab_size" in overrides and overrides["vocab_size"] != vocab_size:
        raise ValueError(f"[pretrain.model] vocab_size={overrides['vocab_size']} does not match the tokenizer "
                         f"({vocab_size}); remove it, the stage takes it from tokenizer/tokenizer.json")
    overrides["vocab_size"] = vocab_size
    overrides.setdefault("max_seq_len", cfg.seq_len)
    if overrides["max_seq_len"] < cfg.seq_len:
        raise ValueError(f"[pretrain.model] max_seq_len={overrides['max_seq_len']} is shorter than "
                         f"[pretrain] seq_len={cfg.seq_len}")
    try:
        return ModelConfig.preset(preset, **overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"[pretrain.model]: {e}") from None


def run(ctx, cfg: Config):
    from lmstack.data.shards import read_tokens
    from lmstack.eval.bpb import bytes_per_token_from_meta
    from lmstack.model import build_model, save_pretrained
    from lmstack.tokenizer import Tokenizer
    from lmstack.train.distributed import barrier, init_distributed

    run_dir = ctx.run
    root = run_dir.path
    torch.set_num_threads(_thread_count(cfg.threads))
    device = ctx.device
    info = init_distributed(device)
    if device.startswith("cuda") and info.enabled:
        device = f"cuda:{info.local_rank}"

    tok_path = root / "tokenizer" / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"{tok_path}: not found; run the tokenizer stage first")
    tokenizer = Tokenizer.load(tok_path)
    train_tokens = read_tokens(root / "shards" / "train.bin")
    val_tokens = read_tokens(root / "shards" / "val.bin")
    bytes_per_token = bytes_per_token_from_meta(root / "shards" / "meta.json", "val")

    model_cfg = build_model_config(cfg, tokenizer.vocab_size)
    torch.manual_seed(ctx.seed)
    model = build_model(model_cfg)
    ctx.log(f"model: {model.num_params() / 1e6:.2f}M parameters ({cfg.model.get('preset', 'llama-style')}), "
            f"{len(train_tokens):,} train tokens, {cfg.steps} steps x "
            f"{cfg.batch_size * cfg.grad_accum * cfg.seq_len * info.world_size:,} tokens")

    ckpt_dir = root / "checkpoints" / STAGE
    if not ctx.resume and info.rank == 0:
        _discard_step_checkpoints(ckpt_dir, ctx.log)
    barrier(info)
    trainer = Trainer(model, cfg, train_tokens=train_tokens, val_tokens=val_tokens, bos_id=tokenizer.bos_id,
                      ckpt_dir=ckpt_dir, seed=ctx.seed, device=device, metrics_sink=run_dir.append_metrics,
                      bytes_per_token=bytes_per_token, log=ctx.log, stage=STAGE)
    t0 = time.time()
    if cfg.max_seconds > 0:
        _fit_steps_to_budget(trainer, cfg, ckpt_dir, ctx.log)
    summary = trainer.train()
    train_seconds = time.time() - t0

    # The final checkpoint: model files at the top of checkpoints/pretrain/ (what later stages load).
    if trainer.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from lmstack.train.checkpoint import save_model_weights
        # Collective: every rank takes part in gathering the shards; rank 0 writes.
        full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if info.is_main:
            save_model_weights(model, ckpt_dir, full)
    elif info.is_main:
        save_pretrained(model, ckpt_dir)
    if info.is_main:
        atomic_write_json(ckpt_dir / "trainer_state.json", {**trainer.trainer_state(), "finished": True})
    barrier(info)
    if not info.is_main:
        from lmstack.pipeline import StageResult
        return StageResult(metrics={}, artifacts={}, report="")

    eval_model = model if not trainer.fsdp else _load_full(ckpt_dir, device)
    return _finish(ctx, cfg, eval_model, tokenizer, summary, train_seconds, model_cfg)


def _discard_step_checkpoints(ckpt_dir: Path, log) -> None:
    """Delete the resume checkpoints of a finished earlier attempt: a re-run with changed inputs starts afresh."""
    from lmstack.train.checkpoint import list_checkpoints

    old = list_checkpoints(ckpt_dir)
    for path in old:
        shutil.rmtree(path)
    if old:
        log(f"the previous run of this stage finished; starting afresh (deleted {len(old)} resume checkpoints)")


def _fit_steps_to_budget(trainer: Trainer, cfg: Config, ckpt_dir: Path, log) -> None:
    """Set the run's length from a wall-clock budget, keeping the result a pure function of the
    chosen step count: the timing steps are warmup steps, whose LR does not depend on the total,
    and a resumed run reuses the total recorded in its checkpoint. Under WSD the length is fitted
    again halfway (``_refit_in_stable_phase``)."""
    from lmstack.train.checkpoint import latest_checkpoint
    from lmstack.train.distributed import all_reduce_mean

    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        recorded = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8")).get("total_steps")
        if recorded:
            trainer.cfg.steps = int(recorded)
            return
    probe = max(3, min(12, cfg.schedule.warmup_steps))
    if cfg.schedule.warmup_steps < probe or cfg.steps <= probe:
        log(f"max_seconds ignored: needs schedule.warmup_steps >= {probe} and steps > {probe}")
        return
    t_start = time.perf_counter()
    trainer.train(stop_at=1)  # first step pays one-off costs (allocator, thread pool, compile)
    t0 = time.perf_counter()
    trainer.train(stop_at=probe)
    per_step = all_reduce_mean((time.perf_counter() - t0) / (probe - 1), trainer.dist, trainer.reduce_device())
    spent = all_reduce_mean(time.perf_counter() - t_start, trainer.dist, trainer.reduce_device())
    evals = (cfg.steps // cfg.eval_every) if cfg.eval_every else 0
    # Budget for ~1 eval's worth of time per eval_every (an eval is eval_batches forward passes).
    eval_share = evals * cfg.eval_batches * per_step / max(3 * cfg.grad_accum, 1)
    # The probe's own time (compilation included) comes out of the budget: compile must pay for itself.
    fitted = probe + int((cfg.max_seconds - spent - eval_share) / per_step)
    cap = cfg.steps  # cfg and trainer.cfg are the same object
    trainer.cfg.steps = max(probe + 1, min(cap, fitted))
    log(f"max_seconds={cfg.max_seconds:.0f}: first {probe} steps {spent:.1f}s, then {per_step:.3f}s/step -> "
        f"{trainer.cfg.steps} steps (cap {cap})")
    if cfg.schedule.kind == "wsd":
        _refit_in_stable_phase(trainer, cfg, t_start, cap, log)


def _refit_in_stable_phase(trainer: Trainer, cfg: Config, t_start: float, cap: int, log) -> None:
    """Fit the length again halfway through, from the sustained step time (evals and checkpoints included):
    a CPU that starts at its boost clock ran the default recipe's 780 s budget in 858 s. Under WSD the LR
    until the decay does not depend on the total, so as long as the decay starts after this point the run
    equals one planned at the new length from the start."""
    from lmstack.train.distributed import all_reduce_mean

    keep = 1.0 - cfg.schedule.decay_frac
    at = trainer.cfg.steps // 2
    if at <= trainer.step + 1 or at >= keep * trainer.cfg.steps:
        return
    t0, s0 = time.perf_counter(), trainer.step
    trainer.train(stop_at=at)
    dist_args = (trainer.dist, trainer.reduce_device())
    per_step = all_reduce_mean((time.perf_counter() - t0) / (trainer.step - s0), *dist_args)
    left = cfg.max_seconds - all_reduce_mean(time.perf_counter() - t_start, *dist_args)
    floor = int(trainer.step / keep) + 1  # the decay must still lie ahead
    before = trainer.cfg.steps
    trainer.cfg.steps = max(floor, min(cap, trainer.step + int(left / per_step)))
    log(f"at step {trainer.step}: {per_step:.3f}s/step sustained, {left:.0f}s left -> {trainer.cfg.steps} steps "
        f"(was {before})")


def _dtype_reason(device: str) -> str:
    from lmstack.machine import probe
    p = probe(device)
    return f"fp32 {p.fp32_flops / 1e9:.0f} GFLOP/s, bf16 {p.bf16_flops / 1e9:.0f} GFLOP/s"


def _load_full(ckpt_dir: Path, device: str):
    from lmstack.model import load_pretrained
    return load_pretrained(ckpt_dir, device=device)


def _per_source_section(root, model, tokenizer, seq_len: int, metrics: dict, log) -> list[str]:
    """Validation loss and bits per byte per source (world prose, world QA, code), beside the n-gram
    baseline's figures on the same text (ngram/results.json), as report lines; adds val_bpb_<source> metrics."""
    from lmstack.eval.bpb import PER_SOURCE_MAX_TOKENS, encode_group, model_bits_per_byte, validation_groups

    if not (root / "data" / "val.jsonl").exists():
        log("no data/val.jsonl: skipping the per-source validation")
        return []
    ngram = {}
    if (root / "ngram" / "results.json").exists():
        ngram = json.loads((root / "ngram" / "results.json").read_text(encoding="utf-8")).get("per_source", {})
    lines = ["### Validation per source", "",
             f"Each source of `data/val.jsonl` on its own (up to {PER_SOURCE_MAX_TOKENS:,} tokens each; world documents "
             "are split into prose and question/answer quizzes). The n-gram column is the `ngram` stage's best model on "
             "the same tokens.", "",
             "| source | docs | tokens | transformer loss (nats/token) | transformer bits/byte | n-gram bits/byte |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, texts in validation_groups(root).items():
        ids, n_bytes = encode_group(tokenizer, texts, PER_SOURCE_MAX_TOKENS)
        if len(ids) < 2 or n_bytes == 0:
            continue
        loss, bpb = model_bits_per_byte(model, ids, n_bytes, seq_len)
        key = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_").replace("__", "_")
        metrics[f"val_bpb_{key}"] = round(bpb, 4)
        ng = ngram.get(name, {}).get("bpb")
        lines.append(f"| {name} | {len(texts)} | {len(ids):,} | {loss:.4f} | {bpb:.4f} | "
                     f"{f'{ng:.4f}' if isinstance(ng, (int, float)) else '-'} |")
    return lines + [""]


def _finish(ctx, cfg: Config, model, tokenizer, summary, train_seconds: float, model_cfg):
    from lmstack.pipeline import StageResult

    root = ctx.run.path
    model.eval()
    metrics: dict[str, Any] = {
        "params_M": round(model.num_params() / 1e6, 3),
        "steps": summary.step, "tokens": int(summary.step * cfg.batch_size * cfg.grad_accum * cfg.seq_len),
        "train_loss": round(summary.final_loss, 4),
        "val_loss": round(summary.val_loss, 4) if summary.val_loss is not None else None,
        "val_bpb": round(summary.val_bpb, 4) if summary.val_bpb is not None else None,
        "tok_per_s": round(summary.tok_per_s, 1), "mfu": round(summary.mfu, 4),
        "dtype": summary.dtype, "peak_gflops": round(summary.peak_flops / 1e9, 1), "compiled": summary.compiled,
        "train_seconds": round(train_seconds, 1),
        "skipped_steps": summary.skipped_steps, "rollbacks": summary.rollbacks,
    }
    report = [f"Model: `{cfg.model.get('preset', 'llama-style')}` with {metrics['params_M']}M parameters "
              f"(d_model={model_cfg.d_model}, layers={model_cfg.n_layers}, heads={model_cfg.n_heads}/"
              f"{model_cfg.n_kv_heads} kv, vocab={model_cfg.vocab_size}, context={cfg.seq_len}); "
              f"optimizer {cfg.optim.name}, schedule {cfg.schedule.kind}, dtype {summary.dtype}"
              + (" (chosen by the machine probe: " + _dtype_reason(ctx.device) + ")" if cfg.dtype == "auto" else "")
              + f", {'torch.compile' if summary.compiled else 'eager'}"
              + (f" ({summary.compile_note})" if summary.compile_note else "")
              + f". MFU {summary.mfu:.1%} against a measured {summary.peak_flops / 1e9:.0f} GFLOP/s "
              f"{summary.dtype} GEMM; FLOPs counted by `lmstack.model.flops_per_token` (tied lm_head included).", ""]
    if summary.resumed_from is not None:
        report.append(f"Resumed from the checkpoint at step {summary.resumed_from}.\n")

    facts_path = root / "data" / "world" / "facts_eval.jsonl"
    fact_rows = []
    causal = getattr(model, "is_causal", True)  # a masked LM cannot complete prompts: no fact eval, no samples
    if facts_path.exists() and causal:
        from lmstack.eval.facts import fact_accuracy, read_facts
        facts = read_facts(facts_path)
        res = fact_accuracy(model, tokenizer, facts, shots=cfg.fact_shots, seed=ctx.seed,
                            max_items=cfg.fact_eval_max or None)
        for k, v in res["accuracy"].items():
            metrics[f"fact_acc_{k.replace('=', '_')}"] = round(v, 4)
        fact_rows = res["examples"]
        report += ["### Few-shot fact completion", "",
                   f"{cfg.fact_shots}-shot greedy completion of held-out fact prompts from `data/world/facts_eval.jsonl`. "
                   "`not_in_pretrain` facts never appeared in the pretraining text: they are the guessing baseline.", "",
                   "| subset | n | accuracy |", "|---|---:|---:|"]
        for k, v in res["accuracy"].items():
            report.append(f"| {k} | {res['counts'][k]} | {v:.1%} |")
        report += ["", "| prompt | answer | model output | ok |", "|---|---|---|---|"]
        for r in fact_rows[:8]:
            report.append(f"| {_md(r['prompt'])} | {_md(r['answer'])} | {_md(r['output'])} | {'yes' if r['correct'] else 'no'} |")
        report.append("")
    else:
        ctx.log(f"{facts_path} not found: skipping the fact-recall eval")

    report += _per_source_section(root, model, tokenizer, cfg.seq_len, metrics, ctx.log)

    samples = _samples(model, tokenizer, cfg) if causal else []
    if samples:
        report += ["### Greedy samples", ""]
        for prompt, text in samples:
            report.append(f"- **{_md(prompt)}**{_md(text)}")
        report.append("")

    plots = _plots(root)
    report += ["### Training curves", ""] + [f"![{t}](plots/{p})" for t, p in plots] + [""]
    events = summary.events
    report += ["### Anomaly guard", ""]
    if events:
        report += ["| step | event | details |", "|---:|---|---|"]
        for e in events:
            details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in e.items() if k not in ("event", "step", "stage"))
            report.append(f"| {e['step']} | {e['event']} | {details} |")
    else:
        report.append("No anomalies: no step was skipped and no rollback happened.")
    artifacts = {"model": "checkpoints/pretrain/model.safetensors", "config": "checkpoints/pretrain/config.json",
                 "trainer_state": "checkpoints/pretrain/trainer_state.json"}
    artifacts.update({f"plot_{t.split()[0].lower()}": f"plots/{p}" for t, p in plots})
    return StageResult(metrics={k: v for k, v in metrics.items() if v is not None}, artifacts=artifacts,
                       report="\n".join(report))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎ ").strip()


def _samples(model, tokenizer, cfg: Config) -> list[tuple[str, str]]:
    if not cfg.sample_prompts or cfg.sample_tokens <= 0:
        return []
    from lmstack.generate import GenerationConfig, generate
    gens = generate(model, tokenizer, list(cfg.sample_prompts),
                    GenerationConfig(max_new_tokens=cfg.sample_tokens, strategy="greedy"))
    return [(p, g.text) for p, g in zip(cfg.sample_prompts, gens)]


def read_stage_metrics(metrics_path: Path, stage: str = STAGE) -> tuple[list[dict], list[dict]]:
    """Training and eval records of ``stage``; after a resume the later record of a step wins."""
    train, evals = {}, {}
    if not metrics_path.exists():
        return [], []
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if r.get("stage") != stage or "event" in r:
                continue
            if "loss" in r:
                train[r["step"]] = r
            elif "val_loss" in r:
                evals[r["step"]] = r
    return [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)]


def _plots(root: Path) -> list[tuple[str, str]]:
    plt = pyplot()
    train, evals = read_stage_metrics(root / "metrics.jsonl")
    if not train:
        return []
    plots_dir = root / "plots"
    plots_dir.mkdir(exist_ok=True)
    steps = [r["step"] for r in train]
    out = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in train], label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
    ax.set_xlabel("step"); ax.set_ylabel("cross-entropy (nats/token)"); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); save_figure(fig, plots_dir / "pretrain_loss.png", dpi=100)
    out.append(("Loss", "pretrain_loss.png"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(steps, [r["lr"] for r in train]); axes[0].set_title("learning rate"); axes[0].set_xlabel("step")
    axes[1].plot(steps, [r["grad_norm"] for r in train]); axes[1].set_title("gradient norm (before clipping)")
    axes[1].set_xlabel("step"); axes[1].set_yscale("log")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout(); save_figure(fig, plots_dir / "pretrain_lr_gradnorm.png", dpi=100)
    out.append(("LR and gradient norm", "pretrain_lr_gradnorm.png"))
    return out
