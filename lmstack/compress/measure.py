"""Measurements of a compressed model that run it through the decoding engine (layer 4): decode speed
and the KL of what the fast decode step computes. Kept apart from ``evaluate`` so that the rest of
``lmstack.compress`` does not import ``lmstack.generate``, whose fast decode step imports the
quantized layers' decode kernels from here."""

from __future__ import annotations

import time

import torch
from torch import nn

from lmstack.generate import GenerationConfig, generate
from lmstack.generate.fast import fast_decoder

from .evaluate import kl_to_reference


def decode_tokens_per_second(model: nn.Module, tokenizer, prompt: list[int], new_tokens: int = 64) -> float:
    """Greedy batch-1 decoding speed through the public generate API (stop tokens ignored)."""
    generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=4, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    out = generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True))
    seconds = time.perf_counter() - t0
    return len(out[0].token_ids) / max(seconds, 1e-9)


@torch.no_grad()
def decode_kl(reference: nn.Module, int8_model: nn.Module, ids: torch.Tensor, prefill: int = 8) -> float:
    """Mean KL(reference || int8 decode step) over positions ``prefill..T-1`` of ``ids [1, T]``: the
    quality of what the fast decode step actually computes (int8 activations included)."""
    dec = fast_decoder(int8_model)
    if dec is None:
        raise ValueError("decode_kl: the fast decode step does not cover this model")
    cache = int8_model.new_kv_cache(1, ids.shape[1])
    int8_model(ids[:, :prefill], kv_cache=cache)
    logits = torch.cat([dec.step(ids[:, t:t + 1], cache) for t in range(prefill, ids.shape[1])])
    return float(kl_to_reference(logits, reference(ids).logits[0, prefill:]))
