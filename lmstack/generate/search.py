"""Search strategies over one prompt: beam search, contrastive search, contrastive decoding.

All three use the model's KV cache. Beam search keeps ``num_beams`` rows in one cache and
reorders them after each step; contrastive search scores its top-k candidates as k rows of
the cache; contrastive decoding runs an expert and an amateur cache side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import GenerationConfig
from .sequence import (Generation, SequenceState, decode_stepper, forward, model_device, processors_for,
                       stop_token_ids_for, token_budget)
from .text import TextTracker

DEAD = -1.0e9  # HF's "impossible" score: finite so that sums and sorts stay well defined


def _text_of(tokenizer, tokens: list[int], cfg: GenerationConfig, stop_ids: set[int]) -> tuple[str, str]:
    tracker = TextTracker(tokenizer, cfg.stop)
    for t in tokens:
        if t in stop_ids:
            tracker.finish()
            return tracker.final_text, "stop"
        tracker.push(t)
    tracker.finish()
    return tracker.final_text, ("stop" if tracker.stopped_at is not None else "length")


@torch.inference_mode()
def beam_search(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig) -> Generation:
    """Beam search with HF ``generate()`` semantics (transformers >= 4.50 vectorized beam search).

    Every step the ``2 * num_beams`` best continuations over all beams are ranked by summed
    log-prob. Those ending in a stop token (or reaching the length limit) are finished with score
    ``sum_logprobs / generated_len ** length_penalty`` (Wu et al. 2016 style normalization; the
    stop token counts in the length) if they rank within the top ``num_beams``; the best
    ``num_beams`` unfinished ones continue. Early stopping: True = stop once ``num_beams``
    hypotheses are finished; False = also stop when the best running beam, normalized by the current
    length, cannot beat the worst finished one; "never" = the same bound at the longest length when
    length_penalty > 0. Returns the best hypothesis; ``extra["beams"]`` holds the n-best list."""
    device = model_device(model)
    K = cfg.num_beams
    prompt_len = len(prompt_ids)
    budget = token_budget(model, prompt_len, cfg.max_new_tokens, "beam search")
    stop_ids = sorted(set(stop_token_ids_for(tokenizer, cfg)))
    procs = processors_for(tokenizer, cfg, stop_ids)
    if budget == 0:
        return Generation("", [], "length", prompt_tokens=prompt_len, score=0.0, extra={"beams": []})
    max_len = prompt_len + budget
    keep = max(2, 1 + len(stop_ids)) * K
    top_mask = torch.arange(keep, device=device) < K
    stop_t = torch.tensor(stop_ids, dtype=torch.long, device=device)

    running = torch.zeros((K, max_len), dtype=torch.long, device=device)
    running[:, :prompt_len] = torch.tensor(prompt_ids, device=device)
    running_scores = torch.full((K,), DEAD, device=device)
    running_scores[0] = 0.0  # all beams start identical: only one may expand at the first step
    fin_seqs = running.clone()
    fin_scores = torch.full((K,), DEAD, device=device)
    fin_lens = torch.zeros(K, dtype=torch.long, device=device)
    fin_done = torch.zeros(K, dtype=torch.bool, device=device)
    improvable = True

    cache = model.new_kv_cache(1, max_len, device=device)
    step_fn = decode_stepper(model)
    logits = forward(model, running[:1, :prompt_len], cache).logits[:, -1]
    cache.reorder(torch.zeros(K, dtype=torch.long, device=device))
    logits = logits.expand(K, -1)
    cur = prompt_len
    while True:
        logp = torch.log_softmax(logits.float(), dim=-1)
        if procs:
            logp = procs(running[:, :cur], logp, gen_start=prompt_len)
        vocab = logp.shape[-1]
        total = (logp + running_scores[:, None]).reshape(-1)
        cand_scores, flat = torch.topk(total, keep)
        origin = flat // vocab
        tok = flat % vocab
        cand = running.index_select(0, origin)
        cand[:, cur] = tok
        hits = torch.isin(tok, stop_t) if len(stop_ids) else torch.zeros_like(tok, dtype=torch.bool)
        if cur + 1 >= max_len:
            hits = torch.ones_like(hits)
        gen_len = cur + 1 - prompt_len

        # beams that continue: the best K candidates that did not finish
        alive_scores = cand_scores + hits.float() * DEAD
        sel = torch.topk(alive_scores, K).indices
        # hypotheses that finish now enter the n-best list if they rank in the top K of this step
        new_fin = cand_scores / (gen_len ** cfg.length_penalty)
        if bool(fin_done.all()) and cfg.early_stopping is True:
            new_fin = new_fin + DEAD
        if not improvable:
            new_fin = new_fin + DEAD
        new_fin = new_fin + (~(hits & top_mask)).float() * DEAD
        merged_scores = torch.cat([fin_scores, new_fin])
        best = torch.topk(merged_scores, K).indices
        fin_seqs = torch.cat([fin_seqs, cand]).index_select(0, best)
        fin_scores = merged_scores.index_select(0, best)
        fin_lens = torch.cat([fin_lens, torch.full((keep,), gen_len, device=device)]).index_select(0, best)
        fin_done = torch.cat([fin_done, hits & top_mask]).index_select(0, best)

        running = cand.index_select(0, sel)
        running_scores = alive_scores.index_select(0, sel)
        cur += 1
        # can a running beam still beat the worst finished one? (HF's heuristic, sticky once false)
        if cfg.early_stopping == "never" and cfg.length_penalty > 0:
            best_len = max_len - prompt_len
        else:
            best_len = cur - prompt_len
        best_possible = running_scores[0] / (best_len ** cfg.length_penalty)
        worst = torch.where(fin_done, fin_scores.min(), torch.tensor(DEAD, device=device))
        improvable = improvable and bool((best_possible > worst).any())
        if not improvable or (bool(fin_done.all()) and cfg.early_stopping is True) or bool(hits.all()):
            break
        cache.reorder(origin.index_select(0, sel))
        logits = step_fn(running[:, cur - 1:cur], cache)

    beams = []
    stop_set = set(stop_ids)
    for i in range(min(cfg.num_return_sequences, K)):
        n = int(fin_lens[i])
        toks = fin_seqs[i, prompt_len:prompt_len + n].tolist()
        text, reason = _text_of(tokenizer, toks, cfg, stop_set)
        if reason == "length" and toks and toks[-1] in stop_set:
            reason = "stop"
        beams.append(Generation(text=text, token_ids=toks, finish_reason=reason,
                                score=float(fin_scores[i]), prompt_tokens=prompt_len))
    best_gen = beams[0]
    best_gen.extra["beams"] = beams
    return best_gen


@torch.inference_mode()
def contrastive_search(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig) -> Generation:
    """Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation"):
    among the top-k tokens pick argmax_v (1 - α) p(v | x) - α max_j cos(h_v, h_j), where h_v is the
    candidate's last hidden state and h_j runs over the context's hidden states (degeneration penalty)."""
    device = model_device(model)
    k, alpha = cfg.contrastive_k, cfg.penalty_alpha
    prompt_len = len(prompt_ids)
    budget = token_budget(model, prompt_len, cfg.max_new_tokens, "contrastive search")
    seq = SequenceState(tokenizer, cfg, budget)
    procs = processors_for(tokenizer, cfg, seq.stop_ids)
    if budget == 0:
        return seq.result(prompt_len, cfg)
    ids = torch.tensor([prompt_ids], device=device)
    cache = model.new_kv_cache(1, prompt_len + budget, device=device)
    out = forward(model, ids, cache, hidden=True)
    context_h = F.normalize(out.hidden[0].float(), dim=-1)  # [L, D]
    logits = out.logits[:, -1]
    cache.reorder(torch.zeros(k, dtype=torch.long, device=device))
    all_ids = list(prompt_ids)
    while True:
        scores = logits.float()
        if procs:
            scores = procs(torch.tensor([all_ids], device=device), scores, gen_start=prompt_len)
        probs = torch.softmax(scores, dim=-1)[0]
        k_eff = min(k, int((probs > 0).sum()))
        top_p, top_ids = torch.topk(probs, k_eff)
        if k_eff < k:  # pad with the best candidate so the cache keeps k rows
            top_p = torch.cat([top_p, top_p[:1].expand(k - k_eff)])
            top_ids = torch.cat([top_ids, top_ids[:1].expand(k - k_eff)])
        cand_out = forward(model, top_ids[:, None], cache, hidden=True)
        cand_h = F.normalize(cand_out.hidden[:, -1].float(), dim=-1)  # [k, D]
        penalty = (cand_h @ context_h.T).max(dim=-1).values
        score = (1 - alpha) * top_p - alpha * penalty
        j = int(score[:k_eff].argmax())
        tok = int(top_ids[j])
        lp = float(torch.log_softmax(logits.float(), dim=-1)[0, tok]) if cfg.logprobs else None
        all_ids.append(tok)
        if seq.push(tok, lp):
            break
        # every row of the cache now continues the chosen candidate
        cache.reorder(torch.full((k,), j, dtype=torch.long, device=device))
        context_h = torch.cat([context_h, cand_h[j:j + 1]])
        logits = cand_out.logits[j:j + 1, -1]
    return seq.result(prompt_len, cfg)


@torch.inference_mode()
def contrastive_decoding(expert, amateur, tokenizer, prompt_ids: list[int], cfg: GenerationConfig) -> Generation:
    """Contrastive decoding (Li et al. 2022): greedy argmax of log p_expert(v) - log p_amateur(v)
    over the expert's plausible set {v : p_expert(v) >= α max_w p_expert(w)}; the amateur's
    logits are divided by ``amateur_temperature`` first."""
    device = model_device(expert)
    prompt_len = len(prompt_ids)
    budget = token_budget(expert, prompt_len, cfg.max_new_tokens, "contrastive decoding")
    budget = token_budget(amateur, prompt_len, budget, "contrastive decoding (amateur)")
    seq = SequenceState(tokenizer, cfg, budget)
    procs = processors_for(tokenizer, cfg, seq.stop_ids)
    if budget == 0:
        return seq.result(prompt_len, cfg)
    ids = torch.tensor([prompt_ids], device=device)
    cache_e = expert.new_kv_cache(1, prompt_len + budget, device=device)
    cache_a = amateur.new_kv_cache(1, prompt_len + budget, device=model_device(amateur))
    le = forward(expert, ids, cache_e).logits[:, -1].float()
    la = forward(amateur, ids.to(model_device(amateur)), cache_a).logits[:, -1].float().to(device)
    if le.shape[-1] != la.shape[-1]:
        raise ValueError(f"contrastive decoding: expert vocab {le.shape[-1]} != amateur vocab {la.shape[-1]}; "
                         "both models must share the tokenizer")
    step_e, step_a = decode_stepper(expert), decode_stepper(amateur)
    all_ids = list(prompt_ids)
    while True:
        if procs:
            le_p = procs(torch.tensor([all_ids], device=device), le, gen_start=prompt_len)
        else:
            le_p = le
        lp_e = torch.log_softmax(le_p, dim=-1)
        lp_a = torch.log_softmax(la / cfg.amateur_temperature, dim=-1)
        plausible = lp_e >= lp_e.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(max(cfg.cd_alpha, 1e-30)))
        score = torch.where(plausible, lp_e - lp_a, torch.tensor(float("-inf"), device=device))
        tok = int(score.argmax(dim=-1))
        lp = float(torch.log_softmax(le, dim=-1)[0, tok]) if cfg.logprobs else None
        all_ids.append(tok)
        if seq.push(tok, lp):
            break
        t = torch.tensor([[tok]], device=device)
        le = step_e(t, cache_e).float()
        la = step_a(t.to(model_device(amateur)), cache_a).float().to(device)
    return seq.result(prompt_len, cfg)
