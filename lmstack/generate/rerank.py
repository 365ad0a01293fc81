"""Sample several outputs and choose: best-of-n and self-consistency.

Both draw ``cfg.n`` samples in one batch (the same prompt n times, seeded once), then choose:
best-of-n by a score (mean token log-prob under the model by default, or any ``scorer(prompt, text)``
such as a reward model); self-consistency (Wang et al. 2023) by majority vote over the final answers.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Optional

import torch

from .batched import run_batched
from .config import GenerationConfig
from .sequence import Generation


def _samples(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig) -> list[Generation]:
    sample_cfg = cfg.replace(strategy="sample", logprobs=True)
    if sample_cfg.seed is None:
        sample_cfg = sample_cfg.replace(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    # row i draws with seed + i: distinct samples, reproducible from the one seed
    cfgs = [sample_cfg.replace(seed=sample_cfg.seed + i) for i in range(cfg.n)]
    return run_batched(model, tokenizer, [prompt_ids] * cfg.n, cfgs)


def mean_logprob(gen: Generation) -> float:
    if not gen.logprobs:
        return float("-inf")
    return sum(gen.logprobs) / len(gen.logprobs)


def best_of_n(model, tokenizer, prompt: Any, prompt_ids: list[int], cfg: GenerationConfig,
              scorer: Optional[Callable[[Any, str], float]] = None) -> Generation:
    """Draw n samples; return the highest-scoring one (ties: the earliest sample)."""
    model.eval()
    cands = _samples(model, tokenizer, prompt_ids, cfg)
    scores = [float(scorer(prompt, g.text)) if scorer is not None else mean_logprob(g) for g in cands]
    best = max(range(len(cands)), key=lambda i: (scores[i], -i))
    for g, s in zip(cands, scores):
        g.score = s
    chosen = cands[best]
    chosen.extra = {"candidates": [{"text": g.text, "score": s} for g, s in zip(cands, scores)], "chosen": best,
                    "scored_by": "scorer" if scorer is not None else "mean_logprob"}
    if not cfg.logprobs:
        chosen.logprobs = None
    return chosen


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANSWER = re.compile(r"(?:answer|答案)\s*(?:is|:|：|是)?\s*(.+)", re.IGNORECASE)


def extract_answer(text: str) -> Optional[str]:
    """Default final-answer extractor: the text after "answer is/answer:" if present, else the last
    number, else the last non-empty line. Returns None when there is nothing to vote for."""
    m = None
    for m in _ANSWER.finditer(text):
        pass
    if m is not None:
        ans = m.group(1).strip().rstrip(".。").strip()
        if ans:
            return ans
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def self_consistency(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig,
                     answer_extractor: Optional[Callable[[str], Optional[str]]] = None) -> Generation:
    """Draw n reasoning paths, extract each final answer, return the first sample carrying the
    majority answer (ties: the answer reached first). ``extra["votes"]`` holds the tally."""
    model.eval()
    extractor = answer_extractor or extract_answer
    cands = _samples(model, tokenizer, prompt_ids, cfg)
    answers = [extractor(g.text) for g in cands]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        chosen = cands[0]
        chosen.extra = {"votes": {}, "answer": None, "answers": answers}
    else:
        top = max(votes.values())
        winner = next(a for a in answers if a is not None and votes[a] == top)
        idx = answers.index(winner)
        chosen = cands[idx]
        chosen.score = top / len(cands)
        chosen.extra = {"votes": dict(votes), "answer": winner, "answers": answers}
    if not cfg.logprobs:
        chosen.logprobs = None
    return chosen
