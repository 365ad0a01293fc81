"""Anomaly guard: catch loss spikes and NaNs before they wreck a run.

Large runs report loss spikes that either recover or diverge (PaLM, Chowdhery et al. 2022,
sec. 5.1: restart from a checkpoint ~100 steps before the spike and skip the offending
batches). The guard decides per step:

- ``ok``: the loss is finite and not more than ``k`` standard deviations above the running
  mean of the last ``window`` accepted losses -> apply the update;
- ``nan`` / ``spike``: skip the update (gradients are dropped);
- after ``max_consecutive`` anomalies in a row the trainer rolls back to the last good
  checkpoint and multiplies the learning rate by ``lr_backoff``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class AnomalyConfig:
    enabled: bool = True
    spike_std: float = 6.0        # k: a loss above mean + k * std of the window is a spike
    window: int = 50              # accepted losses the running statistics use
    min_history: int = 20         # no spike detection before this many accepted steps
    max_consecutive: int = 3      # this many anomalies in a row -> roll back
    lr_backoff: float = 0.5       # LR multiplier applied at each rollback
    max_rollbacks: int = 3        # then give up with an error: the run has diverged


class AnomalyGuard:
    def __init__(self, cfg: AnomalyConfig):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.consecutive = 0

    def check(self, loss: float, grad_norm: float | None = None) -> str:
        """Classify this step's loss: "ok", "nan" or "spike" (does not record it)."""
        if not self.cfg.enabled:
            return "ok"
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            return "nan"
        if len(self.history) >= max(2, self.cfg.min_history):
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (len(self.history) - 1))
            # The floor keeps a perfectly flat history from flagging tiny wiggles.
            if loss > mean + self.cfg.spike_std * max(std, 1e-3 * abs(mean), 1e-6):
                return "spike"
        return "ok"

    def accept(self, loss: float) -> None:
        self.history.append(float(loss))
        self.consecutive = 0

    def reject(self) -> bool:
        """Count an anomaly; True when the trainer should roll back now."""
        self.consecutive += 1
        return self.consecutive >= self.cfg.max_consecutive

    def state_dict(self) -> dict:
        return {"history": list(self.history), "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=self.cfg.window)
        self.consecutive = int(state.get("consecutive", 0))
