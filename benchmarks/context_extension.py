"""Context extension, measured: train a small RoPE model at context L on tinyshakespeare characters,
then evaluate at 2L and 4L with each RoPE scaling (none, PI, NTK-aware, YaRN) -- first as is, then
after a short fine-tune at 4L with that scaling. Prints a table and saves a loss-vs-position plot.

    .venv/bin/python benchmarks/context_extension.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path


import numpy as np
import torch
from tqdm import tqdm

from lmstack import DATA_DIR
from lmstack.model import ModelConfig, Transformer

DATA = DATA_DIR / "en" / "tinyshakespeare.txt"
OUT = Path(__file__).resolve().parent / "out"
METHODS = [("none", "none"), ("PI", "linear"), ("NTK", "ntk"), ("YaRN", "yarn")]


def load_chars(path: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not path.exists():
        raise SystemExit(f"{path}: tinyshakespeare not found (it ships in the repository under data/en)")
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], len(vocab)


def batches(data: torch.Tensor, batch: int, length: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=gen)
        chunk = torch.stack([data[s:s + length + 1] for s in starts.tolist()])
        yield chunk[:, :-1], chunk[:, 1:]


def train(model: Transformer, data: torch.Tensor, steps: int, batch: int, length: int, lr: float,
          seed: int, desc: str) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1)
    model.train()
    it = batches(data, batch, length, gen)
    loss_value = float("nan")
    with tqdm(range(steps), desc=desc, leave=False, file=sys.stderr) as bar:
        for _ in bar:
            x, y = next(it)
            loss = model(x, targets=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_value = loss.item()
            bar.set_postfix(loss=f"{loss_value:.3f}")
    return loss_value


@torch.no_grad()
def loss_by_position(model: Transformer, data: torch.Tensor, length: int, windows: int) -> np.ndarray:
    """Mean next-char loss at each position 0..length-1 over evenly spaced val windows."""
    model.eval()
    starts = np.linspace(0, len(data) - length - 2, windows).astype(int)
    total = torch.zeros(length)
    for i in range(0, windows, 16):
        chunk = torch.stack([data[s:s + length + 1] for s in starts[i:i + 16]])
        logits = model(chunk[:, :-1]).logits
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
        total += nll.sum(0)
    return (total / windows).numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~1 minute version")
    ap.add_argument("--context", type=int, default=64, help="training context L")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: this small model gains little from more, and on a machine "
                         "shared with other jobs 2 OpenMP threads run many times slower; 0 = torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.time()
    L = args.context
    pre_steps, ft_steps, windows = (200, 15, 32) if args.quick else (400, 40, 96)
    train_ids, val_ids, vocab = load_chars(DATA)
    cfg = ModelConfig.preset("llama-style", vocab_size=vocab, d_model=128, n_layers=4, n_heads=4,
                             n_kv_heads=4, max_seq_len=L)
    base = Transformer(cfg)
    print(f"model: {base.num_params():,} params, RoPE theta={cfg.rope_theta:g}; trained at L={L} "
          f"for {pre_steps} steps; fine-tune {ft_steps} steps at 4L per method", file=sys.stderr)
    train(base, train_ids, pre_steps, 16, L, 3e-3, 0, "pretrain @L")

    curves: dict[tuple[str, str, int], np.ndarray] = {}
    for name, scaling in METHODS:
        for mult in (1, 2, 4):
            model = copy.deepcopy(base)
            if mult > 1:
                model.set_rope_scaling(scaling, float(mult), original_max_len=L)
            curves[(name, "no FT", mult)] = loss_by_position(model, val_ids, mult * L, windows)
        tuned = copy.deepcopy(base)
        tuned.set_rope_scaling(scaling, 4.0, original_max_len=L)
        train(tuned, train_ids, ft_steps, 4, 4 * L, 1e-3, 1, f"fine-tune {name} @4L")
        for mult in (2, 4):
            curves[(name, "FT @4L", mult)] = loss_by_position(tuned, val_ids, mult * L, windows)

    print(f"\nContext extension (train L={L}; val loss in nats/char, mean over positions; "
          f"'> L' = only positions beyond the training context)\n")
    print("| method | fine-tune | loss @L | loss @2L | loss @2L, pos > L | loss @4L | loss @4L, pos > L |")
    print("|---|---|---|---|---|---|---|")
    at_l = curves[("none", "no FT", 1)].mean()
    for name, _ in METHODS:
        for stage in ("no FT", "FT @4L"):
            c2, c4 = curves[(name, stage, 2)], curves[(name, stage, 4)]
            first = f"{curves[(name, 'no FT', 1)].mean():.3f}" if stage == "no FT" else "-"
            print(f"| {name} | {stage} | {first} | {c2.mean():.3f} | {c2[L:].mean():.3f} | {c4.mean():.3f} | {c4[L:].mean():.3f} |")

    OUT.mkdir(parents=True, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    kernel = np.ones(8) / 8
    for ax, stage in zip(axes, ("no FT", "FT @4L")):
        for name, _ in METHODS:
            c = curves[(name, stage, 4)]
            ax.plot(np.arange(len(c) - 7), np.convolve(c, kernel, mode="valid"), label=name)
        ax.axvline(L, color="gray", linestyle=":", label="training context L")
        ax.set_title(f"eval at 4L={4 * L}, {'before' if stage == 'no FT' else 'after'} fine-tuning")
        ax.set_xlabel("position")
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("val loss (nats/char, 8-position moving average)")
    fig.tight_layout()
    png = OUT / ("context_extension_quick.png" if args.quick else "context_extension.png")
    fig.savefig(png, dpi=110)
    print(f"\nplot: {png}  ({time.time() - t_start:.0f} s total)")
    print(f"result: loss_at_L={at_l:.3f}")
    for name, _ in METHODS:
        print(f"result: loss_4L_{name.lower()}_noft={curves[(name, 'no FT', 4)].mean():.3f}")
        print(f"result: loss_4L_{name.lower()}_ft={curves[(name, 'FT @4L', 4)].mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
