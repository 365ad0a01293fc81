"""The small training loop the experiments and the recommender share: AdamW over the trainable parameters,
linear warm-up over 5% of the steps then cosine to 10% of the peak, gradient clipping at 1.0. The pipeline's
pretraining uses the full `Trainer`; this is for runs of a few hundred steps inside one experiment."""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch


def warmup_cosine_lr(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))))


def train_steps(model, batches: Iterator, steps: int, peak_lr: float, desc: str, *, replay: Iterator | None = None,
                loss_fn: Callable | None = None) -> list[float]:
    """Train for ``steps`` batches of ``(x, y)``; returns the loss per step. ``loss_fn(model, x, y)`` defaults
    to the model's LM loss; ``replay`` (batches of pretraining windows) adds their LM loss to every step."""
    from tqdm import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=2.0, disable=None):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, peak_lr)
        x, y = next(batches)
        loss = loss_fn(model, x, y) if loss_fn is not None else model(x, targets=y).loss
        total = loss
        if replay is not None:
            rx, ry = next(replay)
            total = loss + model(rx, targets=ry).loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
