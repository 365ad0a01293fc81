"""A leaner single-token decode step for llama-style models (the engine's hot loop).

At batch sizes of 1-8 on a CPU a decode step is dominated by per-op overhead, not FLOPs. This step
reads the *same* parameters as ``Transformer`` (nothing is trained or stored separately) and the same
``KVCache``, but (1) multiplies q, k and v in one matmul and gate and up in another, using
concatenated weights that are rebuilt whenever a parameter changes (checked via tensor versions, so
PPO rollouts after an optimizer step stay exact); (2) rotates q and k together; (3) runs grouped-query
attention without copying keys, by viewing each kv head's query group as the query-length axis.
Prefill and anything this step does not cover (MoE, sliding windows, ALiBi, qk-norm, LoRA or
quantized linears, biases, learned positions) use ``model.forward``. Tests check it against the
model's own forward and against HF generate.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _plain_linear(m) -> bool:
    return type(m) is nn.Linear and m.bias is None


def supports_fast_decode(model) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "layers") or getattr(model, "training", False):
        return False
    if model._forward_hooks or model._forward_pre_hooks:
        return False  # someone watches the forward pass: keep calling it
    try:
        ok = (cfg.position_type == "rope" and cfg.norm_type == "rmsnorm" and cfg.ffn_type == "swiglu"
              and cfg.n_experts == 0 and not cfg.qk_norm and all(k == "full" for k in cfg.attention_pattern)
              and getattr(model, "alibi_slopes", None) is None and _plain_linear(model.lm_head))
        if not ok:
            return False
        for blk in model.layers:
            a, f = blk.attn, blk.ffn
            if not all(_plain_linear(m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)):
                return False
            if not all(_plain_linear(getattr(f, n, None)) for n in ("gate_proj", "up_proj", "down_proj")):
                return False
    except AttributeError:
        return False
    return True


class FastDecoder:
    """``step(tokens [B, 1], cache) -> logits [B, V]`` equal (to float rounding) to
    ``model(tokens, kv_cache=cache).logits[:, -1]``."""

    def __init__(self, model):
        self.model = model
        self.cfg = model.config
        self._key = None
        self._layers: list[tuple] = []

    def _params(self):
        for blk in self.model.layers:
            a, f = blk.attn, blk.ffn
            yield from (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, f.gate_proj.weight, f.up_proj.weight)

    def refresh(self) -> "FastDecoder":
        """Rebuild the fused weights if any parameter changed since the last call (once per generation)."""
        key = tuple((id(p), p._version, p.data_ptr()) for p in self._params())
        if key == self._key:
            return self
        layers = []
        with torch.no_grad():
            for blk in self.model.layers:
                a, f = blk.attn, blk.ffn
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                gate_up = torch.cat([f.gate_proj.weight, f.up_proj.weight])
                # plain tensors: no nn.Module attribute lookups in the hot loop
                layers.append((blk.attn_norm, qkv, a.o_proj.weight, blk.ffn_norm, gate_up, f.down_proj.weight))
        self._layers = layers
        self._key = key
        return self

    @staticmethod
    def _norm(x: torch.Tensor, norm) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)
        return norm(x)  # other dtypes: the model's own fp32-internal formula, bit for bit

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, cache, return_hidden: bool = False):
        """One decode step. Call ``refresh()`` first whenever the weights may have changed
        (``fast_decoder()`` does it)."""
        cfg, model = self.cfg, self.model
        b = tokens.shape[0]
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        rep = H // Hkv
        cache.check_room(1)
        past = cache.length
        pos = cache.next_position  # [B]
        rot = model.rotary
        rot.ensure_length(int(pos.max()) + 1)
        x = model.embed(tokens[:, 0])  # [B, D]
        cos = rot.cos[pos].to(x.dtype)[:, None, :]  # [B, 1, hd]
        sin = rot.sin[pos].to(x.dtype)[:, None, :]
        mask = cache.key_valid[:, None, None, :past + 1].clone() if cache.has_padding else None
        if mask is not None:
            mask[..., past] = True
        same_dtype = cache.keys[0].dtype == x.dtype
        half = hd // 2
        nq = H * hd
        nk = Hkv * hd
        norm = self._norm
        for i, (attn_norm, qkv_w, o_w, ffn_norm, gate_up_w, down_w) in enumerate(self._layers):
            h = norm(x, attn_norm)
            qkv = F.linear(h, qkv_w)
            qk = qkv[:, :nq + nk].view(b, H + Hkv, hd)
            # RoPE, "half" layout (GPT-NeoX / HF Llama): x*cos + rotate_half(x)*sin, q and k at once
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rotated * sin
            q = qk[:, :H].view(b, Hkv, rep, hd)
            keys, values = cache.keys[i], cache.values[i]
            keys[:, :, past] = qk[:, H:]  # copy_ casts to the cache dtype if it differs
            values[:, :, past] = qkv[:, nq + nk:].view(b, Hkv, hd)
            k_all = keys[:, :, :past + 1]
            v_all = values[:, :, :past + 1]
            if same_dtype is False:
                k_all, v_all = k_all.to(q.dtype), v_all.to(q.dtype)
            # one query token per head: a kv head's `rep` query heads are its "query positions"
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
            x = x + F.linear(y.reshape(b, nq), o_w)
            h = norm(x, ffn_norm)
            gate, up = F.linear(h, gate_up_w).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, down_w)
        cache.advance(1, None, pos[:, None])
        hidden = self._norm(x, model.norm)
        logits = F.linear(hidden, model.lm_head.weight)
        if cfg.logit_softcap > 0:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        return (logits, hidden) if return_hidden else logits


ENABLED = True  # set False to always decode through model.forward (e.g. to compare)


def fast_decoder(model) -> Optional[FastDecoder]:
    """The model's FastDecoder, or None when disabled or the model uses something the step does not cover."""
    if not ENABLED or not supports_fast_decode(model):
        return None
    dec = model.__dict__.get("_lmstack_fast_decoder")
    if dec is None:
        dec = FastDecoder(model)
        # kept on the model itself so it lives and dies with it (not a registered buffer: never saved)
        model.__dict__["_lmstack_fast_decoder"] = dec
    return dec.refresh()
