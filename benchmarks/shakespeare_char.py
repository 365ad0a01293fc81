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

The final val loss is the mean cross-entropy over ALL non-overlapping windows of the val split
(the anchor's estimate uses 20 random batches; the full pass is the less noisy number); the
curve points use the first 16k val characters. The plot of val loss against training
wall-clock time (evaluation excluded) goes to benchmarks/out/shakespeare_char.png.

    .venv/bin/python benchmarks/shakespeare_char.py            # both runs (~4-5 min)
    .venv/bin/python benchmarks/shakespeare_char.py --quick    # 15 s budget, 200 anchor steps
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from lmstack import DATA_DIR
from lmstack.machine import measure, run_benchmark
from lmstack.model import ModelConfig, Transformer, flops_per_token
from lmstack.train.loader import eval_windows
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer

DATA = DATA_DIR / "en" / "tinyshakespeare.txt"
ANCHOR_SECONDS, ANCHOR_VAL = 116.0, 1.886
TARGET_VAL = 1.70


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
    # warmup-stable-decay schedule; same 116 s.
    "lmstack-best": dict(
        model=dict(preset="llama-style", d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, tie_embeddings=True),
        train=dict(batch_size=16, seq_len=128, steps=0, grad_clip=1.0,
                   optim=OptimConfig(name="muon", lr=3e-3, muon_lr=0.03, weight_decay=0.0, betas=[0.9, 0.99]),
                   schedule=ScheduleConfig(kind="wsd", warmup_steps=30, min_lr_ratio=0.0, decay_frac=0.4)),
        budget=ANCHOR_SECONDS),
}


def build(recipe: dict, vocab: int, steps: int, seed: int):
    m = dict(recipe["model"])
    preset = m.pop("preset")
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset(preset, vocab_size=vocab, max_seq_len=recipe["train"]["seq_len"], **m))
    t = dict(recipe["train"])
    t["steps"] = steps
    cfg = TrainConfig(**t, loader="random", eval_every=0, ckpt_every=0, eval_batches=20, log_every=50,
                      peak_flops=PEAK[0])
    return model, cfg


PEAK = [0.0]


def calibrate_steps(recipe, train, val, vocab, budget: float, seed: int) -> int:
    """A first guess of the steps that fit ``budget`` seconds, from timing a short throwaway run
    (``run`` corrects it as it goes)."""
    model, cfg = build(recipe, vocab, 1000, seed)
    tr = Trainer(model, cfg, train_tokens=train, seed=seed, progress=False)
    tr.train(stop_at=5)  # warm-up (allocator, thread pool)
    t0 = time.perf_counter()
    tr.train(stop_at=30)
    per_step = (time.perf_counter() - t0) / 25
    return max(10, int(budget / per_step))


def run(name, recipe, train, val, vocab, steps, seed, budget=None, curve_points=12, refit_every=10):
    """Train ``steps`` steps, or with ``budget`` seconds: then the step count (the schedule's length)
    is re-fitted every ``refit_every`` steps from the measured seconds per step, so the run and its
    LR decay end on the budget however the machine's speed drifts."""
    model, cfg = build(recipe, vocab, steps, seed)
    # no val_tokens: the trainer would evaluate at its last step, inside the timed training call
    trainer = Trainer(model, cfg, train_tokens=train, seed=seed, progress=False)
    # Curve points use the first 16k val characters (cheap); the final number uses all of val.
    val_head = val[:16_384 + 1]
    curve = [(0.0, full_val_loss(model, val_head, cfg.seq_len))]
    chunk = refit_every if budget else max(1, steps // curve_points)
    next_point = (budget or 0) / curve_points
    train_seconds = 0.0
    while trainer.step < cfg.steps:
        t0 = time.perf_counter()
        trainer.train(stop_at=min(cfg.steps, trainer.step + chunk))
        train_seconds += time.perf_counter() - t0  # evaluation below is not counted
        if budget and trainer.step < cfg.steps:
            per_step = train_seconds / trainer.step
            cfg.steps = trainer.step + max(1, round((budget - train_seconds) / per_step))
        if budget and train_seconds < next_point and trainer.step < cfg.steps:
            continue
        next_point += (budget or 0) / curve_points
        curve.append((train_seconds, full_val_loss(model, val_head, cfg.seq_len)))
        print(f"  {name}: step {trainer.step}/{cfg.steps}  {train_seconds:6.1f}s  val(head) {curve[-1][1]:.4f}", flush=True)
    steps = trainer.step
    final = full_val_loss(model, val, cfg.seq_len)
    print(f"  {name}: final val loss over all {len(val):,} val characters: {final:.4f}", flush=True)
    return {"name": name, "steps": steps, "seconds": train_seconds, "val": final, "curve": curve,
            "pflop": flops_per_token(model, cfg.seq_len) * steps * cfg.batch_size * cfg.seq_len / 1e15,
            "params": model.num_params(), "tokens": steps * cfg.batch_size * cfg.seq_len}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="15 s budget and 200 anchor steps (smoke run)")
    ap.add_argument("--anchor-steps", type=int, default=0,
                    help="run the nanogpt-config for this many iterations instead of 2000 (shorter cosine); "
                         "with --budget auto lmstack-best then gets the same shorter wall clock")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--only", choices=list(RECIPES), help="run a single recipe")
    ap.add_argument("--budget", default="auto",
                    help="seconds for lmstack-best: a number, or 'auto' = the wall-clock time the "
                         "nanogpt-config run took in this same run (fair on a busy machine; "
                         f"{ANCHOR_SECONDS:.0f} s on an idle one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val, chars = load_data()
    PEAK[0] = measure("cpu", budget=0.5).fp32_flops
    print(f"tinyshakespeare: {len(train):,} train / {len(val):,} val characters, vocab {len(chars)}; "
          f"{args.threads} threads, fp32 GEMM peak {PEAK[0] / 1e9:.1f} GFLOP/s")
    budget = 15.0 if args.quick else ANCHOR_SECONDS
    results = []
    for name, recipe in RECIPES.items():
        if args.only and name != args.only:
            continue
        run_budget = None
        if recipe["budget"] is None:
            steps = 200 if args.quick else (args.anchor_steps or recipe["train"]["steps"])
            print(f"{name}: {steps} steps", flush=True)
        else:
            if args.budget != "auto":
                budget = float(args.budget)
            elif results and not args.quick:
                budget = results[0]["seconds"]  # the same wall clock the anchor config needed here
            steps = calibrate_steps(recipe, train, val, len(chars), budget, args.seed)
            run_budget = budget
            print(f"{name}: budget {budget:.1f}s, first estimate {steps} steps", flush=True)
        results.append(run(name, recipe, train, val, len(chars), steps, args.seed, budget=run_budget))

    print()
    # Training compute (6N + attention FLOPs per token) does not depend on how busy the machine is,
    # so it is the fair axis when the wall clock is disturbed by other processes.
    print("| run | params | steps | tokens | train PFLOP | train seconds | val loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| nanoGPT (anchor, measured earlier on this machine, idle) | 0.80M | 2000 | 1,536,000 | ~0.008 | "
          f"{ANCHOR_SECONDS:.0f} | {ANCHOR_VAL:.3f} |")
    for r in results:
        print(f"| lmstack, {r['name']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['tokens']:,} | "
              f"{r['pflop']:.4f} | {r['seconds']:.1f} | {r['val']:.3f} |")
    _plot(results, budget)
    print()
    for r in results:
        key = r["name"].replace("-", "_")
        print(f"result: val_{key}={r['val']:.4f}")
        print(f"result: seconds_{key}={r['seconds']:.1f}")
    best = next((r for r in results if r["name"] == "lmstack-best"), None)
    if best is not None:
        print(f"result: budget_seconds={budget:.1f}")
        within = best["seconds"] <= 1.05 * budget
        print(f"result: within_budget={'yes' if within else 'no'}")
        print(f"result: goal_val_le_{TARGET_VAL}={'yes' if best['val'] <= TARGET_VAL and within else 'no'}")
    return 0


def _plot(results, budget):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs, ys = zip(*r["curve"])
        label = {"nanogpt-config": "lmstack, nanoGPT's config", "lmstack-best": "lmstack, best CPU recipe"}[r["name"]]
        ax.plot(xs, ys, "o-", ms=3, label=f"{label} ({r['steps']} steps)")
    ax.axhline(ANCHOR_VAL, color="gray", ls="--", lw=1, label=f"nanoGPT anchor {ANCHOR_VAL} @ {ANCHOR_SECONDS:.0f}s")
    ax.axhline(TARGET_VAL, color="red", ls=":", lw=1, label=f"goal {TARGET_VAL}")
    ax.axvline(budget, color="gray", ls=":", lw=1)
    ax.set_xlabel("training wall-clock seconds (evaluation excluded)")
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
