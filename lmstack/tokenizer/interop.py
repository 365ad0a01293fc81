"""Interop with the peers: HF ``tokenizer.json`` export and tiktoken rank files.

HF export. Byte-level vocabularies become a ``BPE`` model behind ``Split(pattern) +
ByteLevel(use_regex=False)`` with the GPT-2 byte-to-unicode alphabet, so HF's own pieces do
exactly what ours do. Character-level vocabularies become a ``BPE`` model with
``byte_fallback`` and ``<0xNN>`` byte tokens behind the same ``Split``. Merges are written as
pairs (not "a b" strings) because char-level tokens may contain spaces. Special tokens are
HF "added tokens"; note that HF matches them inside raw text unless
``tokenizer.encode_special_tokens = True``, while lmstack's ``encode`` never does unless asked.

tiktoken rank files hold one ``base64(token bytes) rank`` line per token. They carry no split
pattern and no special tokens, so ``load_tiktoken`` takes both as arguments and recovers the
merge list by replaying BPE on each token's bytes with lower-ranked tokens only.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Sequence

from lmstack.tokenizer.core import SPECIAL_TOKENS, Tokenizer, default_special_tokens
from lmstack.tokenizer.pretokenize import build_pattern


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map: printable Latin-1 bytes map to
    themselves, the other 68 bytes to code points from 256 upward, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _hf_token_strings(tok: Tokenizer) -> list[str]:
    if tok.mode == "byte":
        table = bytes_to_unicode()
        return ["".join(table[x] for x in b) for b in tok._vocab]
    byte_fallback = {i: v for v, i in enumerate(tok.byte_ids)}
    out = []
    for i, b in enumerate(tok._vocab):
        out.append(f"<0x{byte_fallback[i]:02X}>" if i in byte_fallback else b.decode("utf-8"))
    return out


def to_hf_dict(tok: Tokenizer) -> dict:
    """The HF tokenizers JSON document for ``tok``."""
    strings = _hf_token_strings(tok)
    vocab: dict[str, int] = {}
    for i, s in enumerate(strings):
        if s in vocab:
            raise ValueError(f"cannot export to HF: tokens {vocab[s]} and {i} have the same string {s!r}")
        vocab[s] = i
    split = {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False}
    if tok.mode == "byte":
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            split, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    else:
        pre_tokenizer = split
        decoder = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": tok.mode == "char",
            "ignore_merges": False, "vocab": vocab,
            "merges": [[strings[a], strings[b]] for a, b, _ in tok.merges],
        },
    }


def export_hf(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write an HF ``tokenizer.json`` (a directory gets ``tokenizer.json`` plus
    ``tokenizer_config.json`` / ``special_tokens_map.json`` for ``PreTrainedTokenizerFast``)."""
    from lmstack.runs import atomic_write_json, atomic_write_text

    path = Path(path)
    target = path / "tokenizer.json" if path.suffix != ".json" else path
    atomic_write_text(target, json.dumps(to_hf_dict(tok), ensure_ascii=False) + "\n")
    if path.suffix != ".json":
        sp = tok.special_tokens
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False}
        for key, name in (("bos_token", "<|bos|>"), ("eos_token", "<|eos|>"), ("pad_token", "<|pad|>")):
            if name in sp:
                cfg[key] = name
        cfg["additional_special_tokens"] = [s for s in sp if s not in ("<|bos|>", "<|eos|>", "<|pad|>")]
        atomic_write_json(path / "tokenizer_config.json", cfg)
        atomic_write_json(path / "special_tokens_map.json", {k: v for k, v in cfg.items() if k.endswith("token") or k.startswith("additional")})
    return target


def add_bos_post_processor(hf_dir: str | os.PathLike, bos: str = "<|bos|>") -> Path:
    """Make an exported ``tokenizer.json`` prepend ``bos`` when HF tools ask for special tokens (lmstack models
    read <|bos|> first; lm-evaluation-harness encodes with ``add_special_tokens``). ``export_hf`` leaves it out
    so that HF's encodings stay equal to lmstack's ``encode``."""
    path = Path(hf_dir) / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    bos_id = next(t["id"] for t in doc["added_tokens"] if t["content"] == bos)
    first = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    doc["post_processor"] = {"type": "TemplateProcessing", "single": first,
                             "pair": first + [{"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def export_tiktoken(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write a tiktoken rank file (``base64 rank`` per line) for a byte-level vocabulary."""
    from lmstack.runs import atomic_write_text

    if not tok.tiktoken_compatible():
        raise ValueError("only byte-level tokenizers whose ids follow merge order can be written as tiktoken ranks "
                         f"(this one is mode={tok.mode!r})")
    lines = [f"{base64.b64encode(b).decode('ascii')} {i}" for i, b in enumerate(tok._vocab)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _rank_bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best_i, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best_i, best_rank = i, r
        if best_i is None:
            return parts
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]


def load_tiktoken(path: str | os.PathLike, *, pattern: str = "lmstack", max_digits: int | None = None,
                  special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """Read a tiktoken rank file as a byte-level lmstack tokenizer.

    ``pattern`` is a pattern name or regex (rank files do not store it); ``special_tokens``
    get the ids right after the highest rank."""
    from lmstack.tokenizer.pretokenize import DEFAULT_MAX_DIGITS

    path = Path(path)
    ranks: dict[bytes, int] = {}
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                token, r = base64.b64decode(token_b64, validate=True), int(rank)
            except ValueError as e:
                raise ValueError(f"{path} line {lineno}: expected 'base64token rank' ({e})") from None
            if token in ranks:
                raise ValueError(f"{path} line {lineno}: token {token!r} listed twice")
            ranks[token] = r
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise ValueError(f"{path}: ranks must be exactly 0..{n - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: byte-level vocabulary lacks single-byte tokens such as 0x{missing[0]:02X}")
    vocab = [b"" for _ in range(n)]
    for b, r in ranks.items():
        vocab[r] = b
    merges = []
    for r, b in enumerate(vocab):
        if len(b) < 2:
            continue
        parts = _rank_bpe(ranks, b, r)
        if len(parts) != 2:
            raise ValueError(f"{path}: token of rank {r} ({b!r}) cannot be built from two lower-ranked tokens")
        merges.append((ranks[parts[0]], ranks[parts[1]], r))
    regex_pattern = build_pattern(pattern, DEFAULT_MAX_DIGITS if max_digits is None else max_digits)
    return Tokenizer(mode="byte", pattern=regex_pattern, vocab=vocab, merges=merges,
                     special_tokens=default_special_tokens(n, special_tokens),
                     byte_ids=[ranks[bytes([b])] for b in range(256)], metadata={"imported_from": str(path)})
