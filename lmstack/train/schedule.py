"""Learning-rate schedules as pure functions of the step.

A schedule returns a multiplier in [0, 1] for the base learning rate. It is a pure function of
the update index, so resuming a run needs only the step number (no scheduler object to pickle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

ScheduleKind = Literal["cosine", "wsd", "linear", "constant"]
SCHEDULES = get_args(ScheduleKind)


@dataclass
class ScheduleConfig:
    kind: ScheduleKind = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1     # final LR = base LR * min_lr_ratio
    decay_frac: float = 0.2       # WSD: fraction of the run spent in the final decay phase


def lr_lambda(step: int, *, total_steps: int, kind: str = "cosine", warmup_steps: int = 0,
              min_lr_ratio: float = 0.0, decay_frac: float = 0.2) -> float:
    """LR multiplier for update ``step`` (0-based) of a run of ``total_steps`` updates.

    - warmup: linear from 1/warmup to 1 over ``warmup_steps`` (Goyal et al. 2017).
    - cosine: half-cosine from 1 down to ``min_lr_ratio`` (Loshchilov & Hutter 2017, SGDR).
    - wsd: warmup-stable-decay, constant then a linear drop over the last ``decay_frac`` of the
      run (Hu et al. 2024, MiniCPM); lets one continue training from the stable phase.
    - linear: linear from 1 down to ``min_lr_ratio``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    step = min(max(step, 0), total_steps - 1)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        if not 0.0 <= decay_frac <= 1.0:
            raise ValueError(f"decay_frac must be in [0, 1], got {decay_frac}")
        decay_steps = max(1, round(decay_frac * total_steps)) if decay_frac > 0 else 0
        decay_start = max(warmup_steps, total_steps - decay_steps)
        if step < decay_start or decay_steps == 0:
            return 1.0
        progress = (step - decay_start + 1) / max(1, total_steps - decay_start)
        return 1.0 - (1.0 - min_lr_ratio) * progress
    span = max(1, total_steps - warmup_steps - 1)
    progress = (step - warmup_steps) / span
    if kind == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_multiplier(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    return lr_lambda(step, total_steps=total_steps, kind=cfg.kind, warmup_steps=cfg.warmup_steps,
                     min_lr_ratio=cfg.min_lr_ratio, decay_frac=cfg.decay_frac)
