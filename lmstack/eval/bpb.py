"""Bits per byte: a loss that does not depend on the tokenizer.

Cross-entropy per token depends on how much text a token covers, so two tokenizers cannot be
compared by it. Converting nats/token to bits/byte divides that out (as in the GPT-2 paper and
"The Pile", Gao et al. 2020): bpb = (loss / ln 2) * tokens / bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def bits_per_byte(loss_nats_per_token: float, *, tokens_per_byte: float) -> float:
    if tokens_per_byte <= 0:
        raise ValueError(f"tokens_per_byte must be positive, got {tokens_per_byte}")
    return loss_nats_per_token / math.log(2) * tokens_per_byte


def bytes_per_token_from_meta(meta_path: str | Path, split: str = "val") -> float:
    """UTF-8 bytes per token of a shard split, from shards/meta.json written by the tokenizer stage."""
    meta_path = Path(meta_path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta_path}: not found (run the tokenizer stage first)") from None
    entry = meta.get(split)
    if not isinstance(entry, dict) or not entry.get("tokens") or "bytes" not in entry:
        raise ValueError(f"{meta_path}: field '{split}' must hold 'tokens' and 'bytes' counts, got {entry!r}")
    return float(entry["bytes"]) / float(entry["tokens"])
