"""tinyshakespeare character-level: lmstack vs the nanoGPT CPU anchor, same wall-clock budget.

The anchor is nanoGPT's documented CPU run (README, "I only have a macbook"):
4 layers, 4 heads, width 128, block 64, batch 12, 2000 iterations, dropout 0, lr 1e-3 cosine
to 1e-4 with 100 warmup steps, AdamW beta2 0.99 -> val loss ~1.88. On this 2-core machine that
run took 116 s and reached val 1.886. Here the same data (first 90% train / last 10% val, one
token per character) is trained with lmstack twice:

1. ``nanogpt-config``: the anchor's model and hyper-parameters, in lmstack (2000 iterations).
2. ``lmstack-best``: lmstack's best CPU recipe, given the same 116 s wall-clock budget. Its step
   count (the length of its LR schedule) is first guessed from a short timing run, then re-fitted
   every 10 steps from the measured speed, so the run and its LR decay end on the budget.

The budget is charged to a clock chosen with ``--clock``: ``wall`` (seconds, as nanoGPT's 116 s),
or ``cpu`` (the default): CPU-seconds of this process, ``threads x budget`` of them
(lmstack.train.budget: a run with N busy threads spends N CPU-seconds per second), so that other
processes on the machine do not shorten the run. Both clocks are reported.

``--variant`` applies speedrun options (VARIANTS, logged in benchmarks/SPEEDRUN.md) on top of
lmstack-best; ``--seeds`` repeats lmstack-best over consecutive seeds and reports mean and spread.

The final val loss is the mean cross-entropy over ALL non-overlapping windows of the val split
(the anchor's estimate uses 20 random batches; the full pass is the less noisy number); the
curve points use the first 16k val characters. The plot of val loss against training
wall-clock time (evaluation excluded) goes to benchmarks/out/shakespeare_char.png.

    .venv/bin/python benchmarks/shakespeare_char.py            # both runs (~4-5 min)
    .venv/bin/python benchmarks/shakespeare_char.py --quick    # 15 s budget, 200 anchor steps
    .venv/bin/python benchmarks/shakespeare_char.py --only lmstack-best --budget 116 --seeds 3 --clock cpu
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from lmstack import DATA_DIR
from lmstack.machine import measure, run_benchmark
from lmstack.model import ModelConfig, Transformer, flops_per_token
from lmstack.train.loader import eval_windows
from lmstack.train.budget import CLOCK_KINDS, BudgetClock, cpu_budget, steps_for_budget
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer

DATA = DATA_DIR / "en" / "tinyshakespeare.txt"
ANCHOR_SECONDS, ANCHOR_VAL = 116.0, 1.886
TARGET_VAL = 1.55


def load_data():
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], chars


@torch.no_grad()
def full_val_loss(model, val, seq_len: int, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for b in eval_windows(val, batch_size=batch_size, seq_len=seq_len):
        out = model(b.inputs, targets=b.targets)
        total += out.loss.item() * b.targets.numel()
        count += b.targets.numel()
    model.train()
    return total / count


RECIPES = {
    # nanoGPT config/train_shakespeare_char.py with the README's CPU overrides.
    "nanogpt-config": dict(
        model=dict(preset="gpt2-style", d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, bias=False,
                   norm_bias=False, ffn_type="gelu", tie_embeddings=True),
        train=dict(batch_size=12, seq_len=64, steps=2000, grad_clip=1.0,
                   optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99]),
                   schedule=ScheduleConfig(kind="cosine", warmup_steps=100, min_lr_ratio=0.1)),
        budget=None),
    # lmstack's CPU recipe: Llama-style blocks, longer context, Muon for the hidden matrices,
    # warmup-stable-decay schedule; same 116 s. Records kept from benchmarks/SPEEDRUN.md: QK-norm and a
    # sequence-length warm-up (32 -> 128 over the first 30% of the steps).
    "lmstack-best": dict(
        model=dict(preset="llama-style", d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, tie_embeddings=True,
                   qk_norm=True),
        train=dict(batch_size=16, seq_len=128, steps=0, grad_clip=1.0, seq_len_start=32,
                   optim=OptimConfig(name="muon", lr=3e-3, muon_lr=0.03, weight_decay=0.0, betas=[0.9, 0.99]),
                   schedule=ScheduleConfig(kind="wsd", warmup_steps=30, min_lr_ratio=0.0, decay_frac=0.4)),
        frac=dict(seq_len_warmup_steps=0.3),
        budget=ANCHOR_SECONDS),
}


# Speedrun options (modded-nanogpt's records), each applied on top of lmstack-best by --variant.
# "model" keys go to ModelConfig, "train" keys to TrainConfig, "optim" keys to OptimConfig; "frac" keys
# are warm-up lengths as a fraction of the run's (first estimated) step count, so they fit any budget.
VARIANTS = {
    "before_records": dict(model=dict(qk_norm=False), frac=dict(seq_len_warmup_steps=0.0)),
    "relu2": dict(model=dict(ffn_type="relu2", ffn_hidden=0)),
    "qk_norm": dict(model=dict(qk_norm=True)),
    "softcap": dict(model=dict(logit_softcap=15.0)),
    "value_embeds": dict(model=dict(value_embed_layers=2)),
    "unet": dict(model=dict(unet_skips=True)),
    "untied": dict(model=dict(tie_embeddings=False)),
    "muon_momentum_warmup": dict(optim=dict(muon_momentum_start=0.85), frac=dict(muon_momentum_warmup_steps=0.3)),
    "muon_lr_0.05": dict(optim=dict(muon_lr=0.05)),
    "seq_warmup": dict(train=dict(seq_len_start=32), frac=dict(seq_len_warmup_steps=0.3)),
    "batch_warmup": dict(train=dict(batch_size_start=4), frac=dict(batch_size_warmup_steps=0.3)),
    "wider": dict(model=dict(d_model=192, n_heads=6, n_kv_heads=6)),
    "deeper": dict(model=dict(n_layers=6)),
    "batch32": dict(train=dict(batch_size=32)),
    "seq256": dict(train=dict(seq_len=256)),
}


def with_variants(recipe: dict, names: list[str]) -> dict:
    out = {"model": dict(recipe["model"]), "train": dict(recipe["train"]), "budget": recipe["budget"],
           "frac": dict(recipe.get("frac", {}))}
    out["train"]["optim"] = OptimConfig(**vars(recipe["train"]["optim"]))
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--variant {name!r}: choose from {', '.join(VARIANTS)}")
        v = VARIANTS[name]
        out["model"].update(v.get("model", {}))
        out["train"].update(v.get("train", {}))
        out["frac"].update(v.get("frac", {}))
        for key, value in v.get("optim", {}).items():
            setattr(out["train"]["optim"], key, value)
    return out


def build(recipe: dict, vocab: int, steps: int, seed: int):
    m = dict(recipe["model"])
    preset = m.pop("preset")
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset(preset, vocab_size=vocab, max_seq_len=recipe["train"]["seq_len"], **m))
    t = dict(recipe["train"])
    t["steps"] = steps
    t["optim"] = OptimConfig(**vars(t["optim"]))  # the trainer's schedule must not leak between runs
    for key, frac in recipe.get("frac", {}).items():
        target = t["optim"] if key.startswith("muon_") else t
        value = max(1, int(frac * steps)) if frac > 0 else 0  # a fraction of 0 turns the warm-up off
        if isinstance(target, dict):
            target[key] = value
        else:
            setattr(target, key, value)
    cfg = TrainConfig(**t, loader="random", eval_every=0, ckpt_every=0, eval_batches=20, log_every=50,
                      peak_flops=PEAK[0])
    return model, cfg


PEAK = [0.0]


def calibrate_steps(recipe, train, val, vocab, budget: float, seed: int, clock: str = "cpu") -> int:
    """A first guess of the steps that fit ``budget`` seconds of ``clock``, from timing a short
    throwaway run (``run`` corrects it as it goes)."""
    model, cfg = build(recipe, vocab, 1000, seed)
    tr = Trainer(model, cfg, train_tokens=train, seed=seed, progress=False)
    tr.train(stop_at=5)  # warm-up (allocator, thread pool)
    timer = BudgetClock(clock)
    with timer.running():
        tr.train(stop_at=30)
    return max(10, int(budget / (timer.elapsed / 25)))


def run(name, recipe, train, val, vocab, steps, seed, budget=None, curve_points=12, refit_every=10,
        clock: str = "cpu"):
    """Train ``steps`` steps, or with ``budget`` seconds of ``clock``: then the step count (the
    schedule's length) is re-fitted every ``refit_every`` steps from the measured seconds per step,
    so the run and its LR decay end on the budget however the machine's speed drifts."""
    model, cfg = build(recipe, vocab, steps, seed)
    # no val_tokens: the trainer would evaluate at its last step, inside the timed training call
    trainer = Trainer(model, cfg, train_tokens=train, seed=seed, progress=False)
    # Curve points use the first 16k val characters (cheap); the final number uses all of val.
    val_head = val[:16_384 + 1]
    curve = [(0.0, full_val_loss(model, val_head, cfg.seq_len))]
    chunk = refit_every if budget else max(1, steps // curve_points)
    next_point = (budget or 0) / curve_points
    timer = BudgetClock(clock, budget)
    tokens = 0
    while trainer.step < cfg.steps:
        with timer.running():  # evaluation below is not counted
            tokens += trainer.train(stop_at=min(cfg.steps, trainer.step + chunk)).tokens
        if budget and trainer.step < cfg.steps:
            cfg.steps = trainer.step + steps_for_budget(trainer.step, timer.elapsed, timer.remaining)
        if budget and timer.elapsed < next_point and trainer.step < cfg.steps:
            continue
        next_point += (budget or 0) / curve_points
        curve.append((timer.elapsed, full_val_loss(model, val_head, cfg.seq_len)))
        print(f"  {name}: step {trainer.step}/{cfg.steps}  {timer.elapsed:6.1f}s {clock}  "
              f"val(head) {curve[-1][1]:.4f}", flush=True)
    steps = trainer.step
    final = full_val_loss(model, val, cfg.seq_len)
    print(f"  {name}: final val loss over all {len(val):,} val characters: {final:.4f}", flush=True)
    return {"name": name, "steps": steps, "seconds": timer.elapsed, "val": final, "curve": curve,
            "cpu_seconds": timer.cpu_seconds, "wall_seconds": timer.wall_seconds, "seed": seed,
            "pflop": flops_per_token(model, cfg.seq_len) * tokens / 1e15,
            "params": model.num_params(), "tokens": tokens}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="15 s budget and 200 anchor steps (smoke run)")
    ap.add_argument("--anchor-steps", type=int, default=0,
                    help="run the nanogpt-config for this many iterations instead of 2000 (shorter cosine); "
                         "with --budget auto lmstack-best then gets the same shorter budget")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--seeds", type=int, default=1, help="lmstack-best runs with seeds seed, seed+1, ...")
    ap.add_argument("--only", choices=list(RECIPES), help="run a single recipe")
    ap.add_argument("--variant", default="", help="comma-separated speedrun options applied to lmstack-best: "
                    + ", ".join(VARIANTS))
    ap.add_argument("--clock", choices=CLOCK_KINDS, default="cpu",
                    help="cpu: charge the budget to this process's CPU time (threads x budget CPU-seconds); "
                         "wall: to wall-clock time (only fair on an idle machine)")
    ap.add_argument("--budget", default="auto",
                    help="wall-clock-equivalent seconds for lmstack-best: a number, or 'auto' = what the "
                         "nanogpt-config run took in this same run (on the chosen clock; "
                         f"{ANCHOR_SECONDS:.0f} s on an idle machine)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val, chars = load_data()
    PEAK[0] = measure("cpu", budget=0.5).fp32_flops
    print(f"tinyshakespeare: {len(train):,} train / {len(val):,} val characters, vocab {len(chars)}; "
          f"{args.threads} threads, fp32 GEMM peak {PEAK[0] / 1e9:.1f} GFLOP/s, clock {args.clock}")
    scale = cpu_budget(1.0, args.threads) if args.clock == "cpu" else 1.0  # wall seconds -> charged seconds
    budget = (15.0 if args.quick else ANCHOR_SECONDS) * scale
    variants = [v for v in args.variant.split(",") if v]
    results = []
    for name, recipe in RECIPES.items():
        if args.only and name != args.only:
            continue
        if recipe["budget"] is None:
            steps = 200 if args.quick else (args.anchor_steps or recipe["train"]["steps"])
            print(f"{name}: {steps} steps", flush=True)
            results.append(run(name, recipe, train, val, len(chars), steps, args.seed, clock=args.clock))
            continue
        if args.budget != "auto":
            budget = float(args.budget) * scale
        elif results and not args.quick:
            budget = results[0]["seconds"]  # what the anchor config needed here, on the same clock
        recipe = with_variants(recipe, variants)
        for seed in range(args.seed, args.seed + args.seeds):
            steps = calibrate_steps(recipe, train, val, len(chars), budget, seed, args.clock)
            print(f"{name}: budget {budget:.1f} {args.clock}-seconds, seed {seed}, first estimate {steps} steps",
                  flush=True)
            results.append(run(name, recipe, train, val, len(chars), steps, seed, budget=budget, clock=args.clock))
    print_table(results, args, variants)
    _plot(results, budget, args.clock)
    print_results(results, budget, args)
    return 0


def print_table(results, args, variants) -> None:
    print()
    if variants:
        print(f"lmstack-best with variants: {', '.join(variants)}")
    # Training compute (6N + attention FLOPs per token) does not depend on how busy the machine is,
    # so it is the fair axis when the wall clock is disturbed by other processes.
    print("| run | seed | params | steps | tokens | train PFLOP | CPU s | wall s | val loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| nanoGPT (anchor, measured earlier on this machine, idle) | | 0.80M | 2000 | 1,536,000 | ~0.008 | | "
          f"{ANCHOR_SECONDS:.0f} | {ANCHOR_VAL:.3f} |")
    for r in results:
        print(f"| lmstack, {r['name']} | {r['seed']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['tokens']:,} | "
              f"{r['pflop']:.4f} | {r['cpu_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['val']:.3f} |")


def print_results(results, budget, args) -> None:
    print()
    print(f"result: clock={args.clock}")
    for name in RECIPES:
        runs = [r for r in results if r["name"] == name]
        if not runs:
            continue
        key = name.replace("-", "_")
        vals = np.array([r["val"] for r in runs])
        print(f"result: val_{key}={vals.mean():.4f}")
        if len(runs) > 1:
            print(f"result: val_{key}_std={vals.std(ddof=1):.4f}")
            print(f"result: seeds_{key}={len(runs)}")
        print(f"result: seconds_{key}={np.mean([r['seconds'] for r in runs]):.1f}")
        print(f"result: cpu_seconds_{key}={np.mean([r['cpu_seconds'] for r in runs]):.1f}")
        print(f"result: wall_seconds_{key}={np.mean([r['wall_seconds'] for r in runs]):.1f}")
    best = [r for r in results if r["name"] == "lmstack-best"]
    if best:
        print(f"result: budget_seconds={budget:.1f}")
        within = all(r["seconds"] <= 1.05 * budget for r in best)
        mean = float(np.mean([r["val"] for r in best]))
        print(f"result: within_budget={'yes' if within else 'no'}")
        print(f"result: goal_val_le_{TARGET_VAL}={'yes' if mean <= TARGET_VAL and within else 'no'}")


def _plot(results, budget, clock="wall"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs, ys = zip(*r["curve"])
        label = {"nanogpt-config": "lmstack, nanoGPT's config", "lmstack-best": "lmstack, best CPU recipe"}[r["name"]]
        ax.plot(xs, ys, "o-", ms=3, label=f"{label}, seed {r['seed']} ({r['steps']} steps)")
    ax.axhline(ANCHOR_VAL, color="gray", ls="--", lw=1, label=f"nanoGPT anchor {ANCHOR_VAL} @ {ANCHOR_SECONDS:.0f}s")
    ax.axhline(TARGET_VAL, color="red", ls=":", lw=1, label=f"goal {TARGET_VAL}")
    ax.axvline(budget, color="gray", ls=":", lw=1)
    ax.set_xlabel(f"training {clock}-clock seconds (evaluation excluded)")
    ax.set_ylabel("val loss (nats/char)")
    ax.set_ylim(1.3, 3.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("tinyshakespeare char-level, 2-core CPU")
    fig.tight_layout()
    fig.savefig(out / "shakespeare_char.png", dpi=110)
    print(f"plot: {out / 'shakespeare_char.png'}")


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
