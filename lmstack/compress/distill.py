"""Knowledge distillation into a smaller student, and the student as a speculative-decoding draft.

- Logit distillation (Hinton et al. 2015, arXiv:1503.02531): the student matches the teacher's
  softened next-token distribution, ``T^2 * KL(p_teacher^T || p_student^T)`` ("forward" KL, mass
  covering) mixed with the usual cross-entropy on the data; "reverse" uses
  ``KL(p_student || p_teacher)`` (mode seeking, as in MiniLLM, Gu et al. 2023, arXiv:2306.08543).
- Sequence-level distillation (Kim & Rush 2016, arXiv:1606.07947): the teacher's own generations
  become the student's training text.
The baseline for both is the same student trained on the same number of tokens without a teacher
(``alpha = 0``), so the comparison isolates what the teacher adds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KD_KINDS = ("forward", "reverse")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            kind: str = "forward", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (unmasked) positions of ``T^2 * KL`` between temperature-softened distributions."""
    if kind not in KD_KINDS:
        raise ValueError(f"kd kind must be one of {KD_KINDS}, got {kind!r}")
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward":
        per_pos = (t.exp() * (t - s)).sum(-1)
    else:
        per_pos = (s.exp() * (s - t)).sum(-1)
    if mask is not None:
        per_pos = per_pos[mask]
    return per_pos.mean() * temperature ** 2


@dataclass
class DistillConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 10
    alpha: float = 0.5          # weight of the KD term; 1 - alpha on the data cross-entropy; 0 = no teacher
    temperature: float = 2.0
    kind: str = "forward"       # forward | reverse KL
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill alpha must be in [0, 1], got {self.alpha}")
        if self.kind not in KD_KINDS:
            raise ValueError(f"distill kind must be one of {KD_KINDS}, got {self.kind!r}")


def _windows(tokens, batch: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):  # a fixed set of sequences [N, L]: sample rows
        rows = rng.integers(0, tokens.shape[0], size=batch)
        return tokens[torch.from_numpy(rows)]
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch)
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts]))


def distill(student: nn.Module, teacher: nn.Module | None, tokens, cfg: DistillConfig,
            log: Callable[[str], None] = print, pad_id: int | None = None) -> dict:
    """Train ``student`` on ``tokens`` (a 1-D token array, or sequences [N, L+1]) with the KD loss
    against ``teacher`` (``None`` or ``cfg.alpha = 0``: plain language modelling). Returns a summary."""
    from tqdm import tqdm

    use_teacher = teacher is not None and cfg.alpha > 0
    if use_teacher:
        teacher.eval()
    student.train()
    device = next(student.parameters()).device
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    losses = []
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="distill" if use_teacher else "train (no teacher)", leave=False)
    for step in bar:
        scale = min(1.0, (step + 1) / max(cfg.warmup_steps, 1)) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * max(scale, 0.1)
        batch = _windows(tokens, cfg.batch_size, cfg.seq_len, rng).to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:].clone()
        if pad_id is not None:
            targets[targets == pad_id] = -100
        logits = student(inputs).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        loss = ce
        if use_teacher:
            with torch.no_grad():
                teacher_logits = teacher(inputs).logits
            kd = kd_loss(logits, teacher_logits, cfg.temperature, cfg.kind, mask=targets != -100)
            loss = (1 - cfg.alpha) * ce + cfg.alpha * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(float(ce.detach()))
        bar.set_postfix(ce=f"{losses[-1]:.3f}")
    student.eval()
    tokens_seen = cfg.steps * cfg.batch_size * cfg.seq_len
    log(f"{'distilled' if use_teacher else 'trained'} student: {cfg.steps} steps, {tokens_seen:,} tokens, "
        f"final CE {np.mean(losses[-10:]):.3f} ({time.time() - t0:.1f}s)")
    return {"ce_history": losses, "tokens": tokens_seen, "seconds": time.time() - t0}


@torch.no_grad()
def teacher_sequences(teacher: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                      seq_len: int, *, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Sequence-level KD data: the teacher continues each prompt (sampling at ``temperature``);
    returns [N, seq_len + 1] token rows (prompt + continuation, right-padded with the pad id)."""
    from lmstack.generate import GenerationConfig, generate

    strategy = "sample" if temperature > 0 else "greedy"
    gens = generate(teacher, tokenizer, prompts, GenerationConfig(max_new_tokens=max_new_tokens, strategy=strategy,
                                                                  temperature=temperature or 1.0, seed=seed,
                                                                  ignore_eos=True))
    pad = tokenizer.pad_id
    rows = torch.full((len(prompts), seq_len + 1), pad, dtype=torch.long)
    for i, (p, g) in enumerate(zip(prompts, gens)):
        seq = (list(p) + list(g.token_ids))[: seq_len + 1]
        rows[i, :len(seq)] = torch.tensor(seq)
    return rows


def speculative_report(target: nn.Module, draft: nn.Module, tokenizer, prompts: list[list[int]],
                       max_new_tokens: int = 48, num_draft_tokens: int = 4) -> dict:
    """Greedy speculative decoding with ``draft``: acceptance rate and wall-clock speed-up over plain
    greedy decoding of ``target`` (same outputs by construction at temperature 0)."""
    from lmstack.generate import GenerationConfig, generate

    plain = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    spec = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True, strategy="speculative",
                            num_draft_tokens=num_draft_tokens, temperature=0)
    generate(target, tokenizer, prompts[:1], plain)  # warm-up
    t0 = time.perf_counter()
    base = [generate(target, tokenizer, [p], plain)[0] for p in prompts]
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = [generate(target, tokenizer, [p], spec, draft_model=draft)[0] for p in prompts]
    t_spec = time.perf_counter() - t0
    drafted = sum(g.extra.get("drafted", 0) for g in fast)
    accepted = sum(g.extra.get("accepted", 0) for g in fast)
    same = all(list(a.token_ids) == list(b.token_ids) for a, b in zip(base, fast))
    return {"acceptance_rate": accepted / max(drafted, 1), "speedup": t_plain / max(t_spec, 1e-9),
            "identical_outputs": same}


__all__ = ["kd_loss", "DistillConfig", "distill", "teacher_sequences", "speculative_report", "KD_KINDS"]
