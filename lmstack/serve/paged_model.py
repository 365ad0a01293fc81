"""One forward pass of lmstack's Transformer over a ragged batch whose keys/values live in a BlockPool.

Continuous batching mixes, in one step, sequences that decode one token and sequences that prefill a
chunk of their prompt. All their new tokens are flattened into one row of N tokens, so every matmul
(projections, MLP, LM head) runs once for the whole step. Attention is the only per-sequence part: each
sequence's queries attend to the keys/values gathered through its block table (the PagedAttention
idea; here a gather plus SDPA, which is exact and simple rather than a fused kernel). Attention is
computed per sequence for prompt chunks, and in groups for single-token rows (decodes): rows whose
contexts round up to the same length (a multiple of ``DECODE_PAD`` tokens) share one SDPA call, each
row padded to that length and masked. A row's padded length depends only on its own context, so its
numbers are the same alone or inside any batch (batch invariance), while a decode step still makes a
handful of attention calls instead of one per sequence.

The pass walks the model's own modules (embeddings, norms, q/k/v/o projections, FFN or MoE, LM head),
so LoRA-merged, quantized or MoE models are served unchanged. Layers with sliding-window attention and
ALiBi positions are not supported here: ``check_paged_support`` says so before a server starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmstack.model.positions import apply_rotary

from .kv_pool import BlockPool


DECODE_PAD = 64  # single-token rows are padded to a multiple of this many keys


@dataclass
class SeqSlice:
    """One sequence's part of a step: ``n_new`` tokens starting at ``q_start`` of the flattened batch,
    attending over the first ``context`` positions of the sequence (these tokens included), which live in
    the pool blocks listed by ``table``."""
    q_start: int
    n_new: int
    context: int
    table: list[int]


@dataclass
class DecodeGroup:
    """Single-token rows attending over contexts of the same padded length L."""
    rows: torch.Tensor  # [b] positions in the flattened batch
    slots: torch.Tensor  # [b, L] pool slots (padding points into the row's blocks or block 0, and is masked)
    mask: torch.Tensor  # [b, 1, 1, L] True = a real key


def table_slots(tables: list[list[int]], length: int, block_size: int, device) -> torch.Tensor:
    """[len(tables), length] pool slots of positions 0..length-1 through each block table (one tensor op
    per call, not per sequence)."""
    n_blocks = -(-length // block_size)
    padded = [t[:n_blocks] + [0] * (n_blocks - len(t[:n_blocks])) for t in tables]
    blocks = torch.tensor(padded, dtype=torch.long, device=device)
    offsets = torch.arange(length, device=device) % block_size
    return (blocks * block_size).repeat_interleave(block_size, dim=1)[:, :length] + offsets


def group_decodes(slices: list[SeqSlice], block_size: int, device) -> tuple[list[SeqSlice], list[DecodeGroup]]:
    """Split a step's slices into multi-token chunks (run one by one) and groups of single-token rows."""
    chunks, buckets = [], {}
    for s in slices:
        if s.n_new == 1:
            buckets.setdefault(-(-s.context // DECODE_PAD) * DECODE_PAD, []).append(s)
        else:
            chunks.append(s)
    groups = []
    for length, members in sorted(buckets.items()):
        slots = table_slots([s.table for s in members], length, block_size, device)
        lengths = torch.tensor([s.context for s in members], device=device)
        mask = (torch.arange(length, device=device)[None, :] < lengths[:, None])[:, None, None, :]
        rows = torch.tensor([s.q_start for s in members], dtype=torch.long, device=device)
        groups.append(DecodeGroup(rows, slots, mask))
    return chunks, groups


def check_paged_support(model) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "layers"):
        raise ValueError("the server needs an lmstack Transformer (model.config and model.layers)")
    if cfg.position_type == "alibi":
        raise NotImplementedError("serving ALiBi models through the paged cache is not implemented; "
                                  "use lmstack.generate for this model")
    if getattr(cfg, "value_embed_layers", 0) or getattr(cfg, "unet_skips", False):
        raise NotImplementedError("serving models with value_embed_layers / unet_skips through the paged cache "
                                  "is not implemented; use lmstack.generate for this model")
    kinds = {blk.attention_type for blk in model.layers}
    if kinds - {"full"}:
        raise NotImplementedError(f"serving attention types {sorted(kinds - {'full'})} (sliding windows) through "
                                  "the paged cache is not implemented; use lmstack.generate for this model")


def _causal_mask(n_new: int, ctx: int, device) -> torch.Tensor:
    # the chunk's queries sit at positions ctx-n_new .. ctx-1; query i may see keys 0 .. ctx-n_new+i
    q_pos = torch.arange(ctx - n_new, ctx, device=device)[:, None]
    return torch.arange(ctx, device=device)[None, :] <= q_pos


def _attention(attn, h, rope, pool: BlockPool, layer: int, write_slots: torch.Tensor,
               chunks: list[tuple[SeqSlice, torch.Tensor]],
               groups: list[DecodeGroup]):
    n = h.shape[1]
    q = attn.q_proj(h).view(1, n, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(1, n, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(1, n, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    keys, values = pool.keys[layer], pool.values[layer]
    keys.index_copy_(0, write_slots, k[0].transpose(0, 1).to(keys.dtype))
    values.index_copy_(0, write_slots, v[0].transpose(0, 1).to(values.dtype))
    rep = attn.n_heads // attn.n_kv_heads
    out = q.new_empty(n, attn.n_heads, attn.head_dim)
    for s, ctx_slots in chunks:
        qs = q[:, :, s.q_start:s.q_start + s.n_new]
        ks = keys.index_select(0, ctx_slots).transpose(0, 1)[None].to(q.dtype)  # [1, Hkv, ctx, Dh]
        vs = values.index_select(0, ctx_slots).transpose(0, 1)[None].to(q.dtype)
        if rep > 1:
            ks, vs = ks.repeat_interleave(rep, dim=1), vs.repeat_interleave(rep, dim=1)
        ctx = ks.shape[2]
        if s.n_new == ctx:
            y = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=_causal_mask(s.n_new, ctx, q.device))
        out[s.q_start:s.q_start + s.n_new] = y[0].transpose(0, 1)
    for g in groups:
        b = g.rows.shape[0]
        # grouped-query attention without copying keys: a kv head's `rep` query heads act as its query axis
        qg = q[0].index_select(1, g.rows).transpose(0, 1).reshape(b, attn.n_kv_heads, rep, attn.head_dim)
        flat = g.slots.reshape(-1)
        kg = keys.index_select(0, flat).view(b, -1, attn.n_kv_heads, attn.head_dim).permute(0, 2, 1, 3).to(q.dtype)
        vg = values.index_select(0, flat).view(b, -1, attn.n_kv_heads, attn.head_dim).permute(0, 2, 1, 3).to(q.dtype)
        y = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=g.mask)  # [b, Hkv, rep, Dh]
        out.index_copy_(0, g.rows, y.reshape(b, attn.n_heads, attn.head_dim))
    return attn.o_proj(out.reshape(1, n, attn.n_heads * attn.head_dim))


@torch.inference_mode()
def paged_forward(model, pool: BlockPool, tokens: torch.Tensor, positions: torch.Tensor, write_slots: torch.Tensor,
                  seqs: list[SeqSlice], logit_rows: torch.Tensor) -> torch.Tensor:
    """tokens/positions/write_slots [N]; returns logits [len(logit_rows), V] for the requested rows."""
    cfg = model.config
    n = tokens.shape[0]
    x = model.embed(tokens[None])
    if model.pos_embed is not None:
        if int(positions.max()) >= cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond the learned position table "
                             f"(max_seq_len={cfg.max_seq_len})")
        x = x + model.pos_embed(positions[None])
    elif model.sinusoidal is not None:
        x = x + model.sinusoidal(positions[None]).to(x.dtype)
    rope = None
    if model.rotary is not None:
        rope = model.rotary.tables(n, positions[None], x.dtype)
    chunks, groups = group_decodes(seqs, pool.block_size, tokens.device)
    chunks = [(s, table_slots([s.table], s.context, pool.block_size, tokens.device)[0]) for s in chunks]
    for layer, block in enumerate(model.layers):
        x = x + _attention(block.attn, block.attn_norm(x), rope, pool, layer, write_slots, chunks, groups)
        h = block.ffn(block.ffn_norm(x))
        if isinstance(h, tuple):  # MoE returns (output, aux loss)
            h = h[0]
        x = x + h
    hidden = model.norm(x[0, logit_rows])
    logits = model.lm_head(hidden)
    if cfg.logit_softcap > 0:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits
