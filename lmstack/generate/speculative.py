"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

A small draft model proposes ``γ = num_draft_tokens`` tokens one by one (distributions q_i);
the target scores all of them in one forward pass (distributions p_i). Draft token d_i is accepted
with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token is drawn from the
residual norm(max(0, p_i - q_i)) and the round ends; if all are accepted, a bonus token is drawn
from p_{γ+1}. The output then has exactly the target's distribution (both papers, Theorem 1).
With temperature 0 both p and q are one-hot argmaxes, so the output equals plain greedy.
Both KV caches are cropped back to the accepted prefix after every round.
"""

from __future__ import annotations

from typing import Optional

import torch

from .config import GenerationConfig
from .sequence import Generation, SequenceState, decode_stepper, model_device, processors_for, token_budget
from .processors import MinP, Temperature, TopK, TopP


def accept_drafts(p: torch.Tensor, q: torch.Tensor, drafts: list[int],
                  generator: Optional[torch.Generator]) -> tuple[int, int]:
    """Rejection-sampling step. p: [γ+1, V] target probs, q: [γ, V] draft probs, drafts: γ tokens.
    Returns (number of accepted drafts, the extra token drawn from the residual or bonus distribution)."""
    for i, d in enumerate(drafts):
        u = torch.rand((), generator=generator).item()
        if u < min(1.0, float(p[i, d]) / max(float(q[i, d]), 1e-30)):
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        total = residual.sum()
        # residual is zero only when p == q (then acceptance was certain); guard against round-off
        dist = residual / total if total > 0 else p[i]
        return i, int(torch.multinomial(dist, 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


def _probs(logits: torch.Tensor, procs, history: list[int], greedy: bool, device, gen_start: int) -> torch.Tensor:
    """Turn one position's logits [V] into the (processed) next-token distribution."""
    scores = logits.float()[None]
    if procs:
        scores = procs(torch.tensor([history], device=device), scores, gen_start=gen_start)
    if greedy:
        return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).float()[0]
    return torch.softmax(scores, dim=-1)[0]


@torch.inference_mode()
def speculative_generate(target, draft, tokenizer, prompt_ids: list[int], cfg: GenerationConfig) -> Generation:
    device = model_device(target)
    draft_device = model_device(draft)
    gamma = cfg.num_draft_tokens
    greedy = not cfg.do_sample
    prompt_len = len(prompt_ids)
    budget = token_budget(target, prompt_len, cfg.max_new_tokens, "speculative decoding (target)")
    # the draft may look gamma tokens ahead of the committed sequence
    budget = token_budget(draft, prompt_len, budget, "speculative decoding (draft)")
    seq = SequenceState(tokenizer, cfg, budget)
    procs = processors_for(tokenizer, cfg, seq.stop_ids, warpers=not greedy)
    generator = torch.Generator().manual_seed(int(cfg.seed)) if (cfg.seed is not None and not greedy) else None
    stats = {"rounds": 0, "drafted": 0, "accepted": 0, "target_forwards": 0, "draft_forwards": 0}
    if budget == 0:
        return seq.result(prompt_len, cfg, extra=stats)
    cap = prompt_len + budget + gamma + 1
    cache_t = target.new_kv_cache(1, cap, device=device)
    cache_d = draft.new_kv_cache(1, cap, device=draft_device)
    draft_step = decode_stepper(draft)
    target_step = decode_stepper(target)  # scores all drafts in one call (cost: benchmarks/generate.py)
    plain_greedy = greedy and not procs
    # temperature/top-k/top-p/min-p do not look at the history, so all positions can be processed at once
    history_free = not greedy and all(isinstance(pr, (Temperature, TopK, TopP, MinP)) for pr in procs)
    committed = list(prompt_ids)  # caches hold a prefix of this; the rest is fed at the next round
    while True:
        remaining = budget - len(seq.tokens)
        g = min(gamma, remaining - 1)
        drafts: list[int] = []
        q_rows = []
        if g > 0:
            feed = committed[cache_d.length:]
            logits_d = draft_step(torch.tensor([feed], device=draft_device), cache_d)[0]
            stats["draft_forwards"] += 1
            for i in range(g):
                if plain_greedy:
                    tok = int(logits_d.argmax())
                else:
                    q = _probs(logits_d.to(device), procs, committed + drafts, greedy, device, prompt_len)
                    tok = int(q.argmax()) if greedy else int(torch.multinomial(q, 1, generator=generator))
                    q_rows.append(q)
                drafts.append(tok)
                if i + 1 < g:
                    logits_d = draft_step(torch.tensor([[tok]], device=draft_device), cache_d)[0]
                    stats["draft_forwards"] += 1
        feed = committed[cache_t.length:] + drafts
        logits_t = target_step(torch.tensor([feed], device=device), cache_t, all_positions=True)[0, -(g + 1):]
        stats["target_forwards"] += 1
        if plain_greedy:  # no processors: compare argmaxes directly
            best = logits_t.argmax(dim=-1).tolist()
            n_acc = 0
            while n_acc < g and drafts[n_acc] == best[n_acc]:
                n_acc += 1
            extra = best[n_acc]
        elif history_free:  # warpers only: every position in one pass
            p = torch.softmax(procs(None, logits_t.float()), dim=-1) if procs else torch.softmax(logits_t.float(), dim=-1)
            n_acc, extra = accept_drafts(p, torch.stack(q_rows) if q_rows else p[:0], drafts, generator)
        else:
            p = torch.stack([_probs(logits_t[i], procs, committed + drafts[:i], greedy, device, prompt_len)
                             for i in range(g + 1)])
            if greedy:
                n_acc = 0
                while n_acc < g and drafts[n_acc] == int(p[n_acc].argmax()):
                    n_acc += 1
                extra = int(p[n_acc].argmax())
            else:
                n_acc, extra = accept_drafts(p, torch.stack(q_rows) if q_rows else p[:0], drafts, generator)
        stats["rounds"] += 1
        stats["drafted"] += g
        stats["accepted"] += n_acc
        new_tokens = drafts[:n_acc] + [extra]
        logp_rows = torch.log_softmax(logits_t.float(), dim=-1) if cfg.logprobs else None
        done = False
        for i, tok in enumerate(new_tokens):
            done = seq.push(tok, float(logp_rows[i, tok]) if logp_rows is not None else None)
            if done:
                break
        if done:
            break
        committed += new_tokens
        # keep only what is now committed (minus the newest token, which is fed next round)
        cache_t.crop(len(committed) - 1)
        cache_d.crop(min(cache_d.length, len(committed) - 1))
    stats["acceptance_rate"] = stats["accepted"] / stats["drafted"] if stats["drafted"] else 0.0
    return seq.result(prompt_len, cfg, extra=stats)
