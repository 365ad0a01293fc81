"""Tokenizer and chat-template helpers shared by CLIP and the image-to-text model."""

from __future__ import annotations

from typing import Sequence

import torch

from lmstack.tokenizer import END, ROLE_TOKENS, SPECIAL_TOKENS, Tokenizer, train_tokenizer

IMAGE = "<|image|>"  # placeholder in a user message; expanded to one slot per image patch
MULTIMODAL_SPECIAL_TOKENS = tuple(SPECIAL_TOKENS) + (IMAGE,)


def world_texts(examples) -> list[str]:
    """Every caption, short caption, question and answer of a list of ImageExample."""
    out = []
    for ex in examples:
        out.extend(ex.captions.values())
        out.extend(ex.short_captions.values())
        for q in ex.questions:
            out.extend((q["question"], q["answer"]))
    return out


def build_tokenizer(texts: Sequence[str], vocab_size: int = 512) -> Tokenizer:
    """A character-level BPE tokenizer over ``texts`` with the image placeholder as a special token."""
    return train_tokenizer(list(texts), vocab_size, mode="char", special_tokens=MULTIMODAL_SPECIAL_TOKENS,
                           progress=False)


def image_token_id(tok: Tokenizer) -> int:
    if IMAGE not in tok.special_tokens:
        raise ValueError(f"tokenizer has no {IMAGE} special token; build it with "
                         "lmstack.multimodal.text.build_tokenizer")
    return tok.special_tokens[IMAGE]


def pad_texts(tok: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and right-pad: (ids [B, T], valid [B, T]); texts longer than max_len are cut."""
    rows = [tok.encode_ordinary(t)[:max_len] or [tok.pad_id] for t in texts]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), tok.pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        valid[i, :len(r)] = True
    return ids, valid


def encode_image_chat(tok: Tokenizer, messages: Sequence[dict], n_image_tokens: int,
                      add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """lmstack's chat template (``Tokenizer.encode_chat``) where each ``<|image|>`` in a message becomes
    ``n_image_tokens`` placeholder ids. Returns (ids, assistant_mask) like ``encode_chat``."""
    image_id = image_token_id(tok)
    ids, mask = [tok.bos_id], [0]
    for k, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLE_TOKENS or not isinstance(content, str):
            raise ValueError(f"message {k}: needs a role in {list(ROLE_TOKENS)} and a string content, got {m!r}")
        flag = 1 if role == "assistant" else 0
        ids.append(tok.special_tokens[ROLE_TOKENS[role]])
        mask.append(0)
        for j, piece in enumerate(content.split(IMAGE)):
            if j:
                ids.extend([image_id] * n_image_tokens)
                mask.extend([0] * n_image_tokens)
            body = tok.encode_ordinary(piece)
            ids.extend(body)
            mask.extend([flag] * len(body))
        ids.append(tok.special_tokens[END])
        mask.append(flag)
    if add_generation_prompt:
        ids.append(tok.special_tokens[ROLE_TOKENS["assistant"]])
        mask.append(0)
    return ids, mask
