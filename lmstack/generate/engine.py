"""The generate API and the batched KV-cache engine.

Every caller (chat CLI, evals, alignment rollouts, the server) goes through ``generate``,
``chat`` or ``stream``. Greedy and sampling run batched: prompts of different lengths are
left-padded, the padding is masked in attention, one prefill fills the KV cache and each later
step feeds one token per row. Each request may carry its own GenerationConfig (sampling
parameters, seed, max tokens, stop strings). The other strategies (beam, contrastive,
speculative, best-of-n, self-consistency) live in their own modules and are dispatched here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

from . import fast as _fast
from .config import GenerationConfig
from .processors import ProcessorList, build_processors, sample_from_scores
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


# ---------------------------------------------------------------- model / tokenizer helpers

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


def encode_prompt(tokenizer, prompt: Prompt, add_bos: bool = True) -> list[int]:
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt))
        bos = getattr(tokenizer, "bos_id", None)
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [int(bos)] + ids
        return ids
    ids = [int(t) for t in prompt]
    return ids


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
    out = model(ids, attention_mask=attention_mask, kv_cache=cache, return_hidden=hidden)
    return out


def decode_stepper(model):
    """A function ``(tokens [B, T], cache, all_positions=False) -> logits [B, V]`` (or [B, T, V]) for
    one generation: the fast step when the model allows it (its decode weights refreshed now, once),
    else ``model.forward``. T > 1 needs a cache without padding (speculative decoding's verify pass)."""
    dec = _fast.fast_decoder(model)
    if dec is not None:
        return dec.step

    def step(tokens, cache, all_positions=False):
        logits = model(tokens, kv_cache=cache).logits
        return logits if all_positions else logits[:, -1]
    return step


def _pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_id", None)
    return int(pad) if pad is not None else 0


def _check_room(model, prompt_len: int, max_new: int, where: str) -> int:
    """New-token budget that fits the model's context; errors if the prompt alone does not fit."""
    limit = model_max_len(model)
    if limit is None:
        return max_new
    if prompt_len >= limit:
        raise ValueError(
            f"{where}: prompt has {prompt_len} tokens but the model's context is {limit} "
            f"(max_seq_len); shorten the prompt or use a model with a longer context")
    return min(max_new, limit - prompt_len)


# ---------------------------------------------------------------- batched greedy / sampling

class _Sequence:
    """One output in progress: tokens, stop tokens / stop strings, token budget."""

    def __init__(self, tokenizer, cfg: GenerationConfig, budget: int):
        self.stop_ids = set(stop_token_ids_for(tokenizer, cfg))
        self.tracker = TextTracker(tokenizer, cfg.stop)
        self.budget = budget
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: Optional[str] = None if budget > 0 else "length"

    def push(self, tok: int, logprob: Optional[float] = None) -> bool:
        self.tokens.append(tok)
        if logprob is not None:
            self.logprobs.append(logprob)
        if tok in self.stop_ids:
            self.finish_reason = "stop"
        else:
            self.tracker.push(tok)
            if self.tracker.stopped_at is not None:
                self.finish_reason = "stop"
            elif len(self.tokens) >= self.budget:
                self.finish_reason = "length"
        if self.finish_reason is not None:
            self.tracker.finish()
        return self.finish_reason is not None

    def result(self, prompt_len: int, cfg: GenerationConfig, **kw) -> Generation:
        return Generation(text=self.tracker.final_text, token_ids=list(self.tokens),
                          finish_reason=self.finish_reason or "length",
                          logprobs=list(self.logprobs) if cfg.logprobs else None, prompt_tokens=prompt_len, **kw)


def _processors(tokenizer, cfg, stop_ids, warpers=False):
    bad = bad_words_to_ids(tokenizer, cfg.bad_words) if cfg.bad_words else []
    return build_processors(cfg, stop_token_ids=sorted(stop_ids), bad_words_ids=bad, warpers=warpers)


class _Request(_Sequence):
    """One prompt of a batched greedy / sampling call."""

    def __init__(self, index: int, prompt_ids: list[int], cfg: GenerationConfig, tokenizer, model):
        super().__init__(tokenizer, cfg,
                         _check_room(model, len(prompt_ids), cfg.max_new_tokens, f"prompt {index}"))
        self.index = index
        self.prompt_ids = prompt_ids
        self.cfg = cfg
        self.processors: ProcessorList = _processors(tokenizer, cfg, self.stop_ids, warpers=cfg.do_sample)
        self.generator = None
        if cfg.do_sample and cfg.seed is not None:
            self.generator = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
        self.key = cfg.sampling_key()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def result(self) -> Generation:
        return super().result(len(self.prompt_ids), self.cfg)


def _choose(reqs: list[_Request], active: list[int], logits: torch.Tensor, seqs: torch.Tensor,
            mask: torch.Tensor, gen_start: int) -> dict[int, int]:
    """Pick the next token of every active row; rows sharing sampling settings share one pass."""
    groups: dict[tuple, list[int]] = {}
    for b in active:
        groups.setdefault(reqs[b].key, []).append(b)
    picked: dict[int, int] = {}
    for rows in groups.values():
        cfg = reqs[rows[0]].cfg
        procs = reqs[rows[0]].processors
        if len(rows) == logits.shape[0]:  # the whole batch, in order: no gather needed
            scores = logits.float()
            if procs:
                scores = procs(seqs, scores, mask=mask, gen_start=gen_start)
        else:
            idx = torch.tensor(rows, device=logits.device)
            scores = logits.index_select(0, idx).float()
            if procs:
                scores = procs(seqs.index_select(0, idx), scores, mask=mask.index_select(0, idx), gen_start=gen_start)
        if cfg.do_sample:
            toks = sample_from_scores(scores, [reqs[b].generator for b in rows])
        else:
            toks = scores.argmax(dim=-1)
        for b, t in zip(rows, toks.tolist()):
            picked[b] = t
    return picked


@torch.inference_mode()
def _batched_steps(model, tokenizer, prompt_ids: list[list[int]], cfgs: list[GenerationConfig]) -> Iterator[list[StreamChunk]]:
    """Core loop: yields, after each decode step, the chunks of the rows that produced something."""
    device = model_device(model)
    reqs = [_Request(i, p, c, tokenizer, model) for i, (p, c) in enumerate(zip(prompt_ids, cfgs))]
    for r in reqs:
        if not r.prompt_ids:
            raise ValueError(f"prompt {r.index} is empty; give at least one token (a string prompt gets <|bos|>)")
    if all(r.done for r in reqs):
        yield [StreamChunk(r.index, None, "", None, r.finish_reason) for r in reqs]
        return
    pre_done = [StreamChunk(r.index, None, "", None, r.finish_reason) for r in reqs if r.done]
    if pre_done:
        yield pre_done
    pad = _pad_id(tokenizer)
    ids, mask = left_pad([r.prompt_ids for r in reqs], pad, device)
    batch, width = ids.shape
    max_new = max(r.budget for r in reqs)
    cache = model.new_kv_cache(batch, width + max_new, device=device)
    seqs = torch.full((batch, width + max_new), pad, dtype=torch.long, device=device)
    seqs[:, :width] = ids
    seq_mask = torch.zeros((batch, width + max_new), dtype=torch.bool, device=device)
    seq_mask[:, :width] = mask
    out = forward(model, ids, cache, attention_mask=mask if not bool(mask.all()) else None)
    logits = out.logits[:, -1]
    step_fn = decode_stepper(model)
    need_logprobs = any(r.cfg.logprobs for r in reqs)
    need_history = any(len(r.processors) for r in reqs)
    step = 0
    while True:
        active = [r.index for r in reqs if not r.done]
        cur = width + step
        picked = _choose(reqs, active, logits, seqs[:, :cur], seq_mask[:, :cur], width)
        logp = torch.log_softmax(logits.float(), dim=-1) if need_logprobs else None
        chunks = []
        column = [pad] * batch
        for b in active:
            r, tok = reqs[b], picked[b]
            column[b] = tok
            lp = float(logp[b, tok]) if logp is not None else None
            r.push(tok, lp if r.cfg.logprobs else None)
            chunks.append(StreamChunk(b, tok, r.tracker.take_new(r.done), lp, r.finish_reason))
        next_tokens = torch.tensor(column, dtype=torch.long, device=device).view(batch, 1)
        if need_history:  # only processors look at the token history
            seqs[:, cur] = next_tokens[:, 0]
            seq_mask[:, cur] = True
        yield chunks
        step += 1
        if all(r.done for r in reqs):
            return
        # finished rows keep riding along (fixed batch shape); their outputs are ignored
        logits = step_fn(next_tokens, cache)


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
            for i, g in zip(part, _run_batched(model, tokenizer, [ids[i] for i in part], [cfgs[i] for i in part])):
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


def _run_batched(model, tokenizer, ids: list[list[int]], cfgs: list[GenerationConfig]) -> list[Generation]:
    reqs_out: dict[int, Generation] = {}
    steps = _batched_steps(model, tokenizer, ids, cfgs)
    # drain the step generator; the request objects live inside it, so rebuild results from chunks
    tokens: dict[int, list[int]] = {i: [] for i in range(len(ids))}
    texts: dict[int, list[str]] = {i: [] for i in range(len(ids))}
    lps: dict[int, list[float]] = {i: [] for i in range(len(ids))}
    finish: dict[int, str] = {}
    for chunks in steps:
        for ch in chunks:
            if ch.token_id is not None:
                tokens[ch.index].append(ch.token_id)
                lps[ch.index].append(ch.logprob)
            texts[ch.index].append(ch.text)
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    for i in range(len(ids)):
        reqs_out[i] = Generation(text="".join(texts[i]), token_ids=tokens[i], finish_reason=finish.get(i, "length"),
                                 logprobs=lps[i] if cfgs[i].logprobs else None, prompt_tokens=len(ids[i]))
    return [reqs_out[i] for i in range(len(ids))]


def _run_single(model, tokenizer, prompt, ids, cfg, **kw) -> Generation:
    s = cfg.strategy
    if s == "beam":
        from .search import beam_search
        return beam_search(model, tokenizer, ids, cfg)
    if s == "contrastive_search":
        from .search import contrastive_search
        return contrastive_search(model, tokenizer, ids, cfg)
    if s == "contrastive_decoding":
        from .search import contrastive_decoding
        if kw.get("amateur_model") is None:
            raise ValueError("strategy 'contrastive_decoding' needs amateur_model= (a smaller model with the same tokenizer)")
        return contrastive_decoding(model, kw["amateur_model"], tokenizer, ids, cfg)
    if s == "speculative":
        from .speculative import speculative_generate
        if kw.get("draft_model") is None:
            raise ValueError("strategy 'speculative' needs draft_model= (a smaller model with the same tokenizer)")
        return speculative_generate(model, kw["draft_model"], tokenizer, ids, cfg)
    if s == "best_of_n":
        from .rerank import best_of_n
        return best_of_n(model, tokenizer, prompt, ids, cfg, scorer=kw.get("scorer"))
    if s == "self_consistency":
        from .rerank import self_consistency
        return self_consistency(model, tokenizer, ids, cfg, answer_extractor=kw.get("answer_extractor"))
    raise ValueError(f"unknown strategy {s!r}")


def chat(model, tokenizer, conversations: Sequence[Sequence[Message]],
         cfg: Union[GenerationConfig, Sequence[GenerationConfig], None] = None, **kw) -> list[Generation]:
    """Answer each conversation (a list of {"role", "content"} messages) as the assistant."""
    prompts = [chat_prompt_ids(tokenizer, conv) for conv in conversations]
    return generate(model, tokenizer, prompts, cfg, **kw)


def chat_prompt_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {m!r}")
    ids, _mask = tokenizer.encode_chat(list(messages), add_generation_prompt=True)
    return list(ids)


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
        for chunks in _batched_steps(model, tokenizer, ids, cfgs):
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


def tokens_per_second(n_tokens: int, t0: float) -> float:
    dt = time.perf_counter() - t0
    return n_tokens / dt if dt > 0 else float("inf")
