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


# ----------------------------------------------------------------------------- per source

WORLD_QA_KINDS = ("quiz",)  # world documents in question/answer form; the rest of the world is prose
# Tokens scored per source, the same for every model so that their figures compare the same text.
PER_SOURCE_MAX_TOKENS = 32768


def validation_groups(run_path: str | Path) -> dict[str, list[str]]:
    """The validation documents (``data/val.jsonl``) grouped by what they are: ``world prose``, ``world QA``
    and every other source by name and kind (``stdlib (code)``). A world document's kind is read from the
    world itself (rebuilt from ``data/world/world.json``): its ``id`` is ``world:<index>``."""
    from lmstack.runs import iter_jsonl

    run_path = Path(run_path)
    world_kinds: list[str] | None = None
    if (run_path / "data" / "world" / "world.json").exists():
        from lmstack.data.world import load_world

        world_kinds = [d["kind"] for d in load_world(run_path / "data" / "world").pretrain_docs()]
    groups: dict[str, list[str]] = {}
    for _, doc in iter_jsonl(run_path / "data" / "val.jsonl"):
        doc_id = str(doc.get("id", ""))
        if world_kinds is not None and doc_id.startswith("world:") and doc_id[6:].isdigit() \
                and int(doc_id[6:]) < len(world_kinds):
            name = "world QA" if world_kinds[int(doc_id[6:])] in WORLD_QA_KINDS else "world prose"
        else:
            name = f"{doc.get('source', '?')} ({doc.get('kind', 'prose')})"
        groups.setdefault(name, []).append(doc["text"])
    return dict(sorted(groups.items()))


def encode_group(tokenizer, texts: list[str], max_tokens: int = 0) -> tuple[list[int], int]:
    """Documents as one ``<|bos|> d1 <|bos|> d2 ...`` stream (the shards' layout) and their UTF-8 bytes.
    With ``max_tokens``, whole documents are kept until the stream would pass it (at least one)."""
    ids: list[int] = []
    n_bytes = 0
    for text in texts:
        doc = [tokenizer.bos_id] + tokenizer.encode(text)
        if max_tokens and ids and len(ids) + len(doc) > max_tokens:
            break
        ids += doc
        n_bytes += len(text.encode("utf-8"))
    return ids, n_bytes


def model_bits_per_byte(model, ids: list[int], n_bytes: int, seq_len: int, batch_size: int = 8) -> tuple[float, float]:
    """(mean loss in nats per predicted token, bits per byte) of a causal LM on a token stream, scored in
    consecutive windows of ``seq_len`` (each token predicted once, with up to ``seq_len`` of context)."""
    import torch
    import torch.nn.functional as F

    if len(ids) < 2 or n_bytes <= 0:
        raise ValueError("model_bits_per_byte: need at least two tokens and one byte")
    device = next(model.parameters()).device
    windows = [ids[i:i + seq_len + 1] for i in range(0, len(ids) - 1, seq_len)]
    windows = [w for w in windows if len(w) > 1]
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            width = max(len(w) for w in chunk)
            x = torch.zeros((len(chunk), width - 1), dtype=torch.long)
            y = torch.full((len(chunk), width - 1), -100, dtype=torch.long)
            for r, w in enumerate(chunk):
                t = torch.tensor(w)
                x[r, :len(w) - 1], y[r, :len(w) - 1] = t[:-1], t[1:]
            logits = model(x.to(device)).logits.float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((y != -100).sum())
    loss = total / count
    # every token but the stream's first is predicted: tokens/bytes uses the predicted ones
    return loss, bits_per_byte(loss, tokens_per_byte=count / n_bytes)
