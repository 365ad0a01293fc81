"""What every decoding strategy shares: the result types, one output sequence in progress, and the
model / tokenizer helpers (stop ids, prompt encoding, the token budget, device, context length).

This module sits below the strategies and the engine: ``batched``, ``search``, ``speculative``,
``rerank`` and ``engine`` import from it, and it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from .config import GenerationConfig
from .fast import fast_decoder
from .processors import ProcessorList, build_processors
from .text import TextTracker

Prompt = Union[str, Sequence[int]]
Message = dict


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # generated tokens; a final stop token is included, its text is not
    finish_reason: str  # "stop" (stop token or string) | "length" (max_new_tokens or context)
    logprobs: Optional[list[float]] = None  # per token, under the model's raw distribution
    score: Optional[float] = None  # strategy score (beam: length-penalized; best-of-n: chosen score)
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)  # n-best lists, votes, acceptance rates...


@dataclass
class StreamChunk:
    index: int  # which prompt of the batch
    token_id: Optional[int]
    text: str  # newly released text (complete UTF-8, stop strings withheld); may be ""
    logprob: Optional[float] = None
    finish_reason: Optional[str] = None  # set on the request's last chunk


# ---------------------------------------------------------------- tokenizer helpers

def stop_token_ids_for(tokenizer, cfg: GenerationConfig) -> list[int]:
    if cfg.ignore_eos:
        return []
    if cfg.stop_token_ids is not None:
        return list(cfg.stop_token_ids)
    ids = []
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None:
        ids.append(int(eos))
    end = (getattr(tokenizer, "special_tokens", None) or {}).get("<|end|>")
    if end is not None:
        ids.append(int(end))
    return ids


def bad_words_to_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    out = []
    for w in words:
        ids = tokenizer.encode(w)
        if not ids:
            raise ValueError(f"bad_words: {w!r} encodes to no tokens")
        out.append(list(ids))
        # a word inside running text usually starts with a space, which is another token sequence
        if not w.startswith(" "):
            spaced = tokenizer.encode(" " + w)
            if spaced and spaced != ids:
                out.append(list(spaced))
    return out


def processors_for(tokenizer, cfg: GenerationConfig, stop_ids, warpers: bool = False) -> ProcessorList:
    """The logits processors ``cfg`` asks for, with its bad words encoded by ``tokenizer``."""
    bad = bad_words_to_ids(tokenizer, cfg.bad_words) if cfg.bad_words else []
    return build_processors(cfg, stop_token_ids=sorted(stop_ids), bad_words_ids=bad, warpers=warpers)


def encode_prompt(tokenizer, prompt: Prompt, add_bos: bool = True) -> list[int]:
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt))
        bos = getattr(tokenizer, "bos_id", None)
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [int(bos)] + ids
        return ids
    return [int(t) for t in prompt]


def chat_prompt_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {m!r}")
    ids, _mask = tokenizer.encode_chat(list(messages), add_generation_prompt=True)
    return list(ids)


def pad_id_for(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_id", None)
    return int(pad) if pad is not None else 0


# ---------------------------------------------------------------- model helpers

def model_max_len(model) -> Optional[int]:
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    if cfg is None:
        return None
    # RoPE models extrapolate, but the model was trained up to max_seq_len; stay inside it
    return getattr(cfg, "max_seq_len", None) or getattr(cfg, "max_position_embeddings", None)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def token_budget(model, prompt_len: int, max_new: int, where: str) -> int:
    """New-token budget that fits the model's context; errors if the prompt alone does not fit."""
    limit = model_max_len(model)
    if limit is None:
        return max_new
    if prompt_len >= limit:
        raise ValueError(
            f"{where}: prompt has {prompt_len} tokens but the model's context is {limit} "
            f"(max_seq_len); shorten the prompt or use a model with a longer context")
    return min(max_new, limit - prompt_len)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and bool mask, rows right-aligned (left padding) so new tokens line up in one column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[b, width - len(r):] = True
    return ids.to(device), mask.to(device)


def forward(model, ids, cache=None, attention_mask=None, hidden: bool = False):
    return model(ids, attention_mask=attention_mask, kv_cache=cache, return_hidden=hidden)


def decode_stepper(model):
    """A function ``(tokens [B, T], cache, all_positions=False) -> logits [B, V]`` (or [B, T, V]) for
    one generation: the fast step when the model allows it (its decode weights refreshed now, once),
    else ``model.forward``. T > 1 needs a cache without padding (speculative decoding's verify pass)."""
    dec = fast_decoder(model)
    if dec is not None:
        return dec.step

    def step(tokens, cache, all_positions=False):
        logits = model(tokens, kv_cache=cache).logits
        return logits if all_positions else logits[:, -1]
    return step


# ---------------------------------------------------------------- one output in progress

def finish_reason_after(tok: int, stop_ids, tracker, n_generated: int, budget: int) -> Optional[str]:
    """Why a sequence ends once ``tok`` is its ``n_generated``-th token: "stop" (a stop id or stop
    string), "length" (the budget is used up) or None (it goes on). Feeds ``tok`` to the stop-string
    tracker and flushes it when the sequence ends. Shared by this module and the server's scheduler."""
    if tok in stop_ids:
        reason = "stop"
    else:
        tracker.push(tok)
        reason = "stop" if tracker.stopped_at is not None else ("length" if n_generated >= budget else None)
    if reason is not None:
        tracker.finish()
    return reason


class SequenceState:
    """One output in progress: tokens, stop tokens / stop strings, token budget."""

    def __init__(self, tokenizer, cfg: GenerationConfig, budget: int):
        self.stop_ids = set(stop_token_ids_for(tokenizer, cfg))
        self.tracker = TextTracker(tokenizer, cfg.stop)
        self.budget = budget
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: Optional[str] = None if budget > 0 else "length"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, tok: int, logprob: Optional[float] = None) -> bool:
        self.tokens.append(tok)
        if logprob is not None:
            self.logprobs.append(logprob)
        self.finish_reason = finish_reason_after(tok, self.stop_ids, self.tracker, len(self.tokens), self.budget)
        return self.finish_reason is not None

    def result(self, prompt_len: int, cfg: GenerationConfig, **kw) -> Generation:
        return Generation(text=self.tracker.final_text, token_ids=list(self.tokens),
                          finish_reason=self.finish_reason or "length",
                          logprobs=list(self.logprobs) if cfg.logprobs else None, prompt_tokens=prompt_len, **kw)
