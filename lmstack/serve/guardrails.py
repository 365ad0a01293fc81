"""Guardrails: PII in requests and responses, and an output review by a policy (reward) model.

PII uses the data layer's validated detectors (``lmstack.data.pii``): phone numbers, ID numbers, card
numbers, e-mail and IP addresses. A request's PII is masked with typed placeholders before the model
sees it (or the request is refused, ``pii="refuse"``); a response's PII is masked as it streams.

The review scores (conversation, answer) with the run's reward model; an answer scoring below the
threshold is replaced by a refusal with ``finish_reason="content_filter"``, logged and counted in
/metrics. With review on, a streamed answer is held until it has been reviewed.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from lmstack.data.pii import PLACEHOLDERS, PIIConfig, PIIMasker

log = logging.getLogger("lmstack.serve")

PII_MODES = ("mask", "refuse", "off")
REFUSAL = "I can't help with that."
# A PII item never spans more characters than this (an international phone number with separators,
# an 18-character ID, a 19-digit card with spaces); streamed text keeps this much in reserve.
PII_HOLDBACK = 40


class PIIRefused(ValueError):
    pass


class StreamingPIIMasker:
    """Masks PII in a stream of text pieces: releases text only once no PII item can still grow into it."""

    def __init__(self, masker: PIIMasker):
        self.masker = masker
        self.raw = ""
        self.released = 0  # characters of self.raw already handed out (masked)
        self.found: Counter = Counter()

    def push(self, piece: str, final: bool = False) -> str:
        self.raw += piece
        limit = len(self.raw) if final else len(self.raw) - PII_HOLDBACK
        if limit <= self.released:
            return ""
        out, pos = [], self.released
        for start, end, kind in self.masker.find(self.raw[self.released:]):
            start, end = start + self.released, end + self.released
            if start >= limit:
                break
            if end > limit:  # an item that may still grow: release nothing of it yet
                limit = start
                break
            out += [self.raw[pos:start], PLACEHOLDERS[kind]]
            self.found[kind] += 1
            pos = end
        self.released = max(pos, limit)
        out.append(self.raw[pos:self.released])
        return "".join(out)


class Reviewer:
    """Scores answers with a reward model; ``blocks(messages, answer)`` when the score is below threshold."""

    def __init__(self, reward_model, tokenizer, threshold: float, device: str = "cpu"):
        self.rm = reward_model.eval()
        self.tokenizer = tokenizer
        self.threshold = float(threshold)
        self.device = device

    @torch.inference_mode()
    def score(self, messages: list[dict], answer: str) -> float:
        ids, _ = self.tokenizer.encode_chat(list(messages) + [{"role": "assistant", "content": answer}])
        limit = self.rm.config.max_seq_len
        ids = list(ids)[-limit:]
        x = torch.tensor([ids], device=self.device)
        return float(self.rm(x, torch.tensor([len(ids)]))[0])

    def blocks(self, messages: list[dict], answer: str) -> tuple[bool, float]:
        s = self.score(messages, answer)
        return s < self.threshold, s

    @classmethod
    def from_run(cls, run_dir: Path, tokenizer, threshold: Optional[float], quantile: float = 0.05,
                 device: str = "cpu") -> Optional["Reviewer"]:
        """The run's reward model, or None when it has none. Without an explicit threshold, calibrate:
        block what scores below the ``quantile`` of the *preferred* answers of the run's held-out pairs."""
        from lmstack.align.reward import load_reward_model

        rm_dir = Path(run_dir) / "checkpoints" / "reward"
        if not (rm_dir / "reward_head.safetensors").exists():
            return None
        rm = load_reward_model(rm_dir, device=device)
        reviewer = cls(rm, tokenizer, float("-inf") if threshold is None else threshold, device)
        if threshold is None:
            reviewer.threshold = reviewer.calibrate(Path(run_dir) / "data" / "world" / "prefs_eval.jsonl", quantile)
        return reviewer

    def calibrate(self, prefs_path: Path, quantile: float) -> float:
        from lmstack.align.data import load_preferences_jsonl

        if not prefs_path.exists():
            raise FileNotFoundError(f"{prefs_path}: missing, so the review threshold cannot be calibrated; "
                                    "pass --review-threshold VALUE, or --no-review to serve without the review")
        pairs = load_preferences_jsonl(prefs_path, limit=200)
        scores = torch.tensor([self.score(p.prompt, p.chosen) for p in pairs])
        return float(torch.quantile(scores, quantile))


class Guardrails:
    def __init__(self, pii: str = "mask", reviewer: Optional[Reviewer] = None, refusal: str = REFUSAL):
        if pii not in PII_MODES:
            raise ValueError(f"pii mode must be one of {', '.join(PII_MODES)}, got {pii!r}")
        self.pii = pii
        self.reviewer = reviewer
        self.refusal = refusal
        self.masker = PIIMasker(PIIConfig())
        self.request_pii: Counter = Counter()
        self.response_pii: Counter = Counter()
        self.blocked = 0
        self.reviewed = 0

    def check_request(self, text: str, where: str) -> str:
        """The text the model may see; raises PIIRefused in refuse mode."""
        if self.pii == "off":
            return text
        masked, found = self.masker.mask(text)
        if not found:
            return text
        self.request_pii.update(found)
        if self.pii == "refuse":
            kinds = ", ".join(sorted(found))
            raise PIIRefused(f"{where} contains personal information ({kinds}); remove it and retry")
        return masked

    def output_masker(self) -> Optional[StreamingPIIMasker]:
        return None if self.pii == "off" else StreamingPIIMasker(self.masker)

    def count_response_pii(self, found: Counter) -> None:
        self.response_pii.update(found)

    def review(self, messages: list[dict], answer: str) -> bool:
        """True when the answer may be shown."""
        if self.reviewer is None:
            return True
        self.reviewed += 1
        blocked, score = self.reviewer.blocks(messages, answer)
        if blocked:
            self.blocked += 1
            log.warning("guardrail: answer blocked by the review model (score %.3f < threshold %.3f)",
                        score, self.reviewer.threshold)
        return not blocked
