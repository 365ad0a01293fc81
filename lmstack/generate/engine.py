"""The generate API: ``generate``, ``chat``, ``stream`` and the ``Engine`` that holds a model.

Every caller (chat CLI, evals, alignment rollouts, the server) goes through these. Greedy and
sampling run batched (``batched``); the other strategies (beam, contrastive, speculative,
best-of-n, self-consistency) live in their own modules and are dispatched here. The shared result
types and helpers are in ``sequence``; they are re-exported here for callers of the engine.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, Union

from .batched import batched_steps, run_batched
from .config import GenerationConfig
from .rerank import best_of_n, self_consistency
from .search import beam_search, contrastive_decoding, contrastive_search
from .sequence import Generation, Message, Prompt, StreamChunk, chat_prompt_ids, encode_prompt
from .speculative import speculative_generate

__all__ = ["Engine", "Generation", "StreamChunk", "generate", "chat", "stream", "chat_prompt_ids", "Prompt", "Message"]


def _as_cfgs(cfg, n: int) -> list[GenerationConfig]:
    """One config per prompt. A single seeded config shared by n prompts gives prompt i the seed
    ``seed + i``: independent draws for repeated prompts (GRPO groups, best-of-n), still reproducible."""
    if cfg is None:
        return [GenerationConfig()] * n
    if isinstance(cfg, GenerationConfig):
        if cfg.seed is not None and n > 1 and cfg.do_sample:
            return [cfg.replace(seed=cfg.seed + i) for i in range(n)]
        return [cfg] * n
    cfgs = list(cfg)
    if len(cfgs) != n:
        raise ValueError(f"got {len(cfgs)} GenerationConfigs for {n} prompts; give one, or one per prompt")
    return cfgs


# ---------------------------------------------------------------- public API

def generate(model, tokenizer, prompts: Sequence[Prompt], cfg: Union[GenerationConfig, Sequence[GenerationConfig], None] = None,
             *, draft_model=None, amateur_model=None, scorer: Optional[Callable[[Any, str], float]] = None,
             answer_extractor: Optional[Callable[[str], Optional[str]]] = None, add_bos: bool = True,
             batch_size: int = 32) -> list[Generation]:
    """Generate one completion per prompt (a string, or token ids used as-is).

    ``cfg`` is one GenerationConfig for all prompts or one per prompt. Strategy-specific inputs:
    ``draft_model`` (speculative), ``amateur_model`` (contrastive decoding), ``scorer(prompt, text)``
    (best-of-n; default is the mean token log-prob), ``answer_extractor(text)`` (self-consistency).
    Greedy/sample prompts run batched ``batch_size`` at a time; beam search returns
    ``num_return_sequences`` hypotheses in ``extra["beams"]`` (the best one is the Generation itself).
    """
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        raise TypeError("generate() takes a list of prompts; wrap a single prompt in a list")
    prompts = list(prompts)
    cfgs = _as_cfgs(cfg, len(prompts))
    ids = [encode_prompt(tokenizer, p, add_bos) for p in prompts]
    helpers = [m for m in (model, draft_model, amateur_model) if m is not None]
    modes = [m.training for m in helpers]
    for m in helpers:
        m.eval()  # no dropout while generating; the modes are restored below
    try:
        results: list[Optional[Generation]] = [None] * len(prompts)
        batched = [i for i, c in enumerate(cfgs) if c.strategy in ("greedy", "sample")]
        for start in range(0, len(batched), batch_size):
            part = batched[start:start + batch_size]
            for i, g in zip(part, run_batched(model, tokenizer, [ids[i] for i in part], [cfgs[i] for i in part])):
                results[i] = g
        for i, c in enumerate(cfgs):
            if results[i] is not None:
                continue
            results[i] = _run_single(model, tokenizer, prompts[i], ids[i], c, draft_model=draft_model,
                                     amateur_model=amateur_model, scorer=scorer, answer_extractor=answer_extractor)
        return results  # type: ignore[return-value]
    finally:
        for m, mode in zip(helpers, modes):
            m.train(mode)


def _run_single(model, tokenizer, prompt, ids, cfg, **kw) -> Generation:
    s = cfg.strategy
    if s == "beam":
        return beam_search(model, tokenizer, ids, cfg)
    if s == "contrastive_search":
        return contrastive_search(model, tokenizer, ids, cfg)
    if s == "contrastive_decoding":
        if kw.get("amateur_model") is None:
            raise ValueError("strategy 'contrastive_decoding' needs amateur_model= (a smaller model with the same tokenizer)")
        return contrastive_decoding(model, kw["amateur_model"], tokenizer, ids, cfg)
    if s == "speculative":
        if kw.get("draft_model") is None:
            raise ValueError("strategy 'speculative' needs draft_model= (a smaller model with the same tokenizer)")
        return speculative_generate(model, kw["draft_model"], tokenizer, ids, cfg)
    if s == "best_of_n":
        return best_of_n(model, tokenizer, prompt, ids, cfg, scorer=kw.get("scorer"))
    if s == "self_consistency":
        return self_consistency(model, tokenizer, ids, cfg, answer_extractor=kw.get("answer_extractor"))
    raise ValueError(f"unknown strategy {s!r}")


def chat(model, tokenizer, conversations: Sequence[Sequence[Message]],
         cfg: Union[GenerationConfig, Sequence[GenerationConfig], None] = None, **kw) -> list[Generation]:
    """Answer each conversation (a list of {"role", "content"} messages) as the assistant."""
    prompts = [chat_prompt_ids(tokenizer, conv) for conv in conversations]
    return generate(model, tokenizer, prompts, cfg, **kw)


def stream(model, tokenizer, prompts: Union[Prompt, Sequence[Prompt]],
           cfg: Union[GenerationConfig, Sequence[GenerationConfig], None] = None, *, add_bos: bool = True) -> Iterator[StreamChunk]:
    """Yield StreamChunks as tokens are produced (greedy or sample; prompts batched together).

    A single prompt (a string or a token list) may be passed directly. Text in the chunks is always
    complete UTF-8 and never contains (part of) a stop string; concatenating a request's chunk texts
    gives exactly ``generate(...)[i].text``."""
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]  # type: ignore[list-item]
    prompts = list(prompts)  # type: ignore[arg-type]
    cfgs = _as_cfgs(cfg, len(prompts))
    for c in cfgs:
        if c.strategy not in ("greedy", "sample"):
            raise ValueError(f"stream() supports strategies 'greedy' and 'sample', not {c.strategy!r}; "
                             "use generate() for search strategies")
    ids = [encode_prompt(tokenizer, p, add_bos) for p in prompts]
    was_training = model.training
    model.eval()
    try:
        for chunks in batched_steps(model, tokenizer, ids, cfgs):
            yield from chunks
    finally:
        model.train(was_training)


class Engine:
    """A model + tokenizer pair with default settings: the object the CLI and server hold."""

    def __init__(self, model, tokenizer, cfg: Optional[GenerationConfig] = None, *, draft_model=None, amateur_model=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = cfg or GenerationConfig()
        self.draft_model = draft_model
        self.amateur_model = amateur_model

    def _cfg(self, cfg, overrides):
        base = cfg or self.cfg
        return base.replace(**overrides) if overrides else base

    def generate(self, prompts, cfg=None, **overrides) -> list[Generation]:
        return generate(self.model, self.tokenizer, prompts, self._cfg(cfg, overrides),
                        draft_model=self.draft_model, amateur_model=self.amateur_model)

    def chat(self, conversations, cfg=None, **overrides) -> list[Generation]:
        return chat(self.model, self.tokenizer, conversations, self._cfg(cfg, overrides),
                    draft_model=self.draft_model, amateur_model=self.amateur_model)

    def stream(self, prompts, cfg=None, **overrides) -> Iterator[StreamChunk]:
        return stream(self.model, self.tokenizer, prompts, self._cfg(cfg, overrides))

    def stream_chat(self, messages, cfg=None, **overrides) -> Iterator[StreamChunk]:
        return stream(self.model, self.tokenizer, [chat_prompt_ids(self.tokenizer, messages)], self._cfg(cfg, overrides))
