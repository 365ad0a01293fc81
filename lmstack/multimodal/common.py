"""Small pieces shared by the multimodal trainers: a training loop, checkpoint I/O, and metrics."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from lmstack.runs import atomic_write_bytes, atomic_write_json, read_json


def fit(params: Iterable[torch.nn.Parameter], step_loss: Callable[[int], torch.Tensor], steps: int, lr: float,
        desc: str, weight_decay: float = 0.01, warmup: int = 20, clip: float = 1.0,
        after_step: Callable[[], None] | None = None, progress: bool = True) -> dict:
    """AdamW with linear warmup and cosine decay; ``step_loss(step)`` builds one batch's loss.

    Returns {"losses": [...], "seconds": wall time}."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: nothing to train (every parameter is frozen)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = min(warmup, max(1, steps // 5))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        loss = step_loss(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return {"losses": losses, "seconds": time.perf_counter() - t0}


def save_checkpoint(module: torch.nn.Module, directory: str | os.PathLike, meta: dict) -> Path:
    """model.safetensors + config.json (weights first, so a config always has its weights)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, seen = {}, {}
    for name, tensor in module.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel():  # tied weights: safetensors refuses shared storage
            continue
        seen[key] = name
        state[name] = tensor.detach().contiguous().cpu()
    atomic_write_bytes(directory / "model.safetensors", save(state, metadata={"format": "pt"}))
    atomic_write_json(directory / "config.json", meta)
    return directory


def load_checkpoint(module: torch.nn.Module, directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: missing; expected a directory written by save_checkpoint")
    state = load_file(str(weights))
    missing, unexpected = module.load_state_dict(state, strict=False)
    own = dict(module.state_dict())
    # a missing key is fine only when it is a tied copy of a saved tensor
    really_missing = [k for k in missing if not any(own[k].data_ptr() == own[s].data_ptr() for s in state if s in own)]
    if really_missing or unexpected:
        raise ValueError(f"{weights}: does not match the model; missing {really_missing[:5]}, unexpected {unexpected[:5]}")
    return read_json(directory / "config.json")


# ---------------------------------------------------------------------------------------------- metrics
def edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: list[str], hyps: list[str], unit: str) -> float:
    """Corpus WER (unit="word") or CER (unit="char"): total edits / total reference units."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    split = str.split if unit == "word" else list
    edits = total = 0
    for r, h in zip(refs, hyps):
        rr, hh = split(r), split(h)
        edits += edit_distance(rr, hh)
        total += len(rr)
    if total == 0:
        raise ValueError("references are empty; WER/CER is undefined")
    return edits / total


def chrf(hyp: str, ref: str, max_n: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF (Popović 2015): F-beta of character n-gram precision and recall averaged over
    n = 1..max_n, whitespace removed; in [0, 100]."""
    from collections import Counter

    h, r = "".join(hyp.split()), "".join(ref.split())
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        hc = Counter(h[i:i + n] for i in range(len(h) - n + 1))
        rc = Counter(r[i:i + n] for i in range(len(r) - n + 1))
        if not hc or not rc:
            continue  # shorter strings than n: this order says nothing
        overlap = sum((hc & rc).values())
        precisions.append(overlap / sum(hc.values()))
        recalls.append(overlap / sum(rc.values()))
    if not precisions:
        return 100.0 if h == r else 0.0
    p, rec = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + rec == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * p * rec / (b2 * p + rec)
