"""The batched greedy / sampling loop: many prompts, one KV cache, one token per row per step.

Prompts of different lengths are left-padded and the padding is masked in attention; one prefill
fills the cache and each later step feeds one token per row. Each request may carry its own
GenerationConfig (sampling parameters, seed, max tokens, stop strings). ``batched_steps`` yields
the chunks of every step (what ``stream`` passes on); ``run_batched`` collects them into one
Generation per prompt (what ``generate`` and best-of-n / self-consistency use).
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .config import GenerationConfig
from .processors import ProcessorList, sample_from_scores
from .sequence import (Generation, SequenceState, StreamChunk, decode_stepper, forward, left_pad, model_device,
                       pad_id_for, processors_for, token_budget)


class BatchRequest(SequenceState):
    """One prompt of a batched greedy / sampling call."""

    def __init__(self, index: int, prompt_ids: list[int], cfg: GenerationConfig, tokenizer, model):
        super().__init__(tokenizer, cfg, token_budget(model, len(prompt_ids), cfg.max_new_tokens, f"prompt {index}"))
        self.index = index
        self.prompt_ids = prompt_ids
        self.cfg = cfg
        self.processors: ProcessorList = processors_for(tokenizer, cfg, self.stop_ids, warpers=cfg.do_sample)
        self.generator = None
        if cfg.do_sample and cfg.seed is not None:
            self.generator = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
        self.key = cfg.sampling_key()


def choose_next_tokens(reqs: list[BatchRequest], active: list[int], logits: torch.Tensor, seqs: torch.Tensor,
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
def batched_steps(model, tokenizer, prompt_ids: list[list[int]], cfgs: list[GenerationConfig]) -> Iterator[list[StreamChunk]]:
    """Core loop: yields, after each decode step, the chunks of the rows that produced something."""
    device = model_device(model)
    reqs = [BatchRequest(i, p, c, tokenizer, model) for i, (p, c) in enumerate(zip(prompt_ids, cfgs))]
    for r in reqs:
        if not r.prompt_ids:
            raise ValueError(f"prompt {r.index} is empty; give at least one token (a string prompt gets <|bos|>)")
    if all(r.done for r in reqs):
        yield [StreamChunk(r.index, None, "", None, r.finish_reason) for r in reqs]
        return
    pre_done = [StreamChunk(r.index, None, "", None, r.finish_reason) for r in reqs if r.done]
    if pre_done:
        yield pre_done
    pad = pad_id_for(tokenizer)
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
        picked = choose_next_tokens(reqs, active, logits, seqs[:, :cur], seq_mask[:, :cur], width)
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


def run_batched(model, tokenizer, ids: list[list[int]], cfgs: list[GenerationConfig]) -> list[Generation]:
    """Drain ``batched_steps`` into one Generation per prompt (the requests live inside the
    generator, so the results are rebuilt from the chunks)."""
    tokens: list[list[int]] = [[] for _ in ids]
    texts: list[list[str]] = [[] for _ in ids]
    lps: list[list[Optional[float]]] = [[] for _ in ids]
    finish: dict[int, str] = {}
    for chunks in batched_steps(model, tokenizer, ids, cfgs):
        for ch in chunks:
            if ch.token_id is not None:
                tokens[ch.index].append(ch.token_id)
                lps[ch.index].append(ch.logprob)
            texts[ch.index].append(ch.text)
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return [Generation(text="".join(texts[i]), token_ids=tokens[i], finish_reason=finish.get(i, "length"),
                       logprobs=lps[i] if cfgs[i].logprobs else None, prompt_tokens=len(ids[i]))
            for i in range(len(ids))]
