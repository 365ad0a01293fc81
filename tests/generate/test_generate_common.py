"""Shared fixtures for the generate tests: a small real BPE tokenizer and tiny llama-style models."""

import functools
import json

import torch

from lmstack import DATA_DIR
from lmstack.model import ModelConfig, Transformer



@functools.lru_cache(maxsize=1)
def small_tokenizer():
    from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

    en = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30000]
    zh = [json.loads(line)["text"] for line in (DATA_DIR / "zh" / "poetry.jsonl").read_text(encoding="utf-8").splitlines()[:80]]
    return train_tokenizer([en, *zh], 512, mode="byte", special_tokens=list(SPECIAL_TOKENS), progress=False)


def tiny_model(vocab, seed=0, d_model=64, n_layers=2, init_std=0.08, max_seq_len=128):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("llama-style", vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=4,
                             n_kv_heads=2, max_seq_len=max_seq_len, init_std=init_std)
    return Transformer(cfg).eval()




def test_tokenizer_fixture_has_chat_specials():
    tok = small_tokenizer()
    assert {"<|bos|>", "<|end|>", "<|assistant|>"} <= set(tok.special_tokens)
