"""Logits processors: small callables ``(input_ids, scores) -> scores`` applied before choosing a token.

``input_ids`` is ``[B, L]`` (prompt and generated tokens so far), ``scores`` is ``[B, V]`` float logits.
Two optional keyword arguments carry what batched decoding knows and HF's processors do not:
``mask`` ([B, L] bool, False on left padding, which must not count as "seen") and ``gen_start``
(the column where generated tokens begin, for penalties that look at the output only).

Order used by :func:`build_processors` (the same as HF ``generate`` for the shared ones):

1. ``RepetitionPenalty``      prompt + output, CTRL semantics
2. ``PresenceFrequencyPenalty`` output only, OpenAI semantics
3. ``NoRepeatNGram``          prompt + output, HF semantics
4. ``BadWords``               banned token sequences
5. ``MinNewTokens``           stop tokens masked until min_new_tokens
6. ``Temperature``            then the filters, each on the tempered scores:
7. ``TopK`` -> 8. ``TopP`` -> 9. ``MinP``

A processor whose parameter is neutral is not built, so the default config applies none.
Filtered entries are set to ``-inf``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

NEG_INF = float("-inf")


def _valid_ids(input_ids: torch.Tensor, mask: Optional[torch.Tensor], fill: int) -> torch.Tensor:
    # Padding must not count as a previous token: route it to a dummy column `fill`.
    if mask is None:
        return input_ids
    return input_ids.masked_fill(~mask.bool(), fill)


class LogitsProcessor:
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, *, mask=None, gen_start: int = 0) -> torch.Tensor:
        raise NotImplementedError


class RepetitionPenalty(LogitsProcessor):
    """CTRL (Keskar et al. 2019): for every distinct previous token, divide a positive logit by
    ``penalty`` and multiply a negative one by it (so ``penalty > 1`` always lowers it)."""

    def __init__(self, penalty: float):
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        vocab = scores.shape[-1]
        ids = _valid_ids(input_ids, mask, vocab)
        padded = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=-1)
        seen = padded.gather(1, ids)
        # Duplicated ids gather the same original value, so each token is penalized exactly once.
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[:, :vocab]


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI API semantics: ``logit -= frequency * count(token in output) + presence * [count > 0]``.
    Only generated tokens count (the prompt does not), as in the OpenAI API and vLLM."""

    def __init__(self, presence: float = 0.0, frequency: float = 0.0):
        self.presence = float(presence)
        self.frequency = float(frequency)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        vocab = scores.shape[-1]
        ids = _valid_ids(input_ids, mask, vocab)[:, gen_start:]
        counts = scores.new_zeros(scores.shape[0], vocab + 1)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=scores.dtype))
        counts = counts[:, :vocab]
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class NoRepeatNGram(LogitsProcessor):
    """Ban every token that would complete an n-gram already present in the sequence (HF semantics:
    the whole ``input_ids``, prompt included)."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no_repeat_ngram_size must be >= 1, got {n}")
        self.n = int(n)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        n = self.n
        out = scores.clone()
        rows = input_ids.tolist()
        masks = mask.bool().tolist() if mask is not None else None
        for b, row in enumerate(rows):
            if masks is not None:
                row = [t for t, keep in zip(row, masks[b]) if keep]
            if len(row) + 1 < n:
                continue
            prefix = tuple(row[len(row) - n + 1 :]) if n > 1 else ()
            banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == prefix}
            if banned:
                out[b, list(banned)] = NEG_INF
        return out


class BadWords(LogitsProcessor):
    """Never generate any of the given token sequences: a one-token sequence is always banned,
    a longer one is banned at its last token when the sequence so far ends with its prefix."""

    def __init__(self, bad_words_ids: Sequence[Sequence[int]]):
        seqs = [list(map(int, s)) for s in bad_words_ids]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("bad_words_ids: empty token sequence")
        self.single = sorted({s[0] for s in seqs if len(s) == 1})
        self.multi = [s for s in seqs if len(s) > 1]

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        out = scores.clone()
        if self.single:
            out[:, self.single] = NEG_INF
        if self.multi:
            rows = input_ids.tolist()
            for b, row in enumerate(rows):
                for seq in self.multi:
                    k = len(seq) - 1
                    if len(row) >= k and row[len(row) - k :] == seq[:-1]:
                        out[b, seq[-1]] = NEG_INF
        return out


class MinNewTokens(LogitsProcessor):
    """Mask the stop tokens while fewer than ``min_new_tokens`` tokens have been generated."""

    def __init__(self, min_new_tokens: int, stop_token_ids: Sequence[int]):
        self.min_new_tokens = int(min_new_tokens)
        self.stop_token_ids = sorted(set(int(t) for t in stop_token_ids))

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        if input_ids.shape[1] - gen_start >= self.min_new_tokens or not self.stop_token_ids:
            return scores
        out = scores.clone()
        out[:, self.stop_token_ids] = NEG_INF
        return out


class Temperature(LogitsProcessor):
    """p ∝ exp(logit / T): T < 1 sharpens, T > 1 flattens."""

    def __init__(self, temperature: float):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        return scores / self.temperature


class TopK(LogitsProcessor):
    """Keep the k highest scores (ties with the k-th are kept, as in HF)."""

    def __init__(self, k: int, min_tokens_to_keep: int = 1):
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        self.k = max(int(k), min_tokens_to_keep)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP(LogitsProcessor):
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability mass reaches ``p``. Computed as in HF: drop the ascending prefix with mass <= 1 - p."""

    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        self.p = float(p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        ascending, order = torch.sort(scores, dim=-1, descending=False)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = mass_below <= (1.0 - self.p)
        drop_sorted[..., -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, NEG_INF)


class MinP(LogitsProcessor):
    """Min-p sampling (Nguyen et al. 2024): keep tokens with p >= min_p * p_max."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.min_p = float(min_p)
        self.min_tokens_to_keep = int(min_tokens_to_keep)

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        probs = scores.softmax(dim=-1)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        drop.scatter_(-1, keep, False)
        return scores.masked_fill(drop, NEG_INF)


class ProcessorList(list):
    """Apply processors in order; empty list = identity."""

    def __call__(self, input_ids, scores, *, mask=None, gen_start: int = 0):
        for proc in self:
            scores = proc(input_ids, scores, mask=mask, gen_start=gen_start)
        return scores


def build_processors(cfg, *, stop_token_ids: Sequence[int] = (), bad_words_ids: Sequence[Sequence[int]] = (),
                     warpers: bool = True) -> ProcessorList:
    """The processors ``cfg`` asks for, in the documented order.

    ``warpers=False`` leaves out temperature/top-k/top-p/min-p (used by greedy and beam search, where
    they could not change the argmax ordering anyway except for filtering, as in HF)."""
    procs = ProcessorList()
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(cfg.repetition_penalty))
    if cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0:
        procs.append(PresenceFrequencyPenalty(cfg.presence_penalty, cfg.frequency_penalty))
    if cfg.no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGram(cfg.no_repeat_ngram_size))
    all_bad = [list(b) for b in cfg.bad_words_ids] + [list(b) for b in bad_words_ids]
    if all_bad:
        procs.append(BadWords(all_bad))
    if cfg.min_new_tokens > 0 and stop_token_ids:
        procs.append(MinNewTokens(cfg.min_new_tokens, stop_token_ids))
    if warpers:
        if cfg.temperature > 0 and cfg.temperature != 1.0:
            procs.append(Temperature(cfg.temperature))
        if cfg.top_k > 0:
            procs.append(TopK(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopP(cfg.top_p))
        if cfg.min_p > 0.0:
            procs.append(MinP(cfg.min_p))
    return procs


def sample_from_scores(scores: torch.Tensor, generators: Sequence[Optional[torch.Generator]]) -> torch.Tensor:
    """Draw one token per row from softmax(scores), row b using ``generators[b]`` (seeded per request)."""
    probs = torch.softmax(scores.float(), dim=-1)
    if all(g is None for g in generators):
        return torch.multinomial(probs, 1).squeeze(-1)
    out = []
    for b in range(probs.shape[0]):
        out.append(torch.multinomial(probs[b], 1, generator=generators[b]))
    return torch.cat(out)
