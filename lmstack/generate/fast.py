"""A leaner decode step for llama-style models (the engine's hot loop and speculative verification).

At batch sizes of 1-8 on a CPU a decode step is bound by memory traffic and per-op overhead, not
FLOPs. This step computes the same function as ``Transformer.forward`` with a ``KVCache`` (same
cache, same positions), from a decode copy of the model's weights that is rebuilt whenever a
parameter changes (checked via tensor versions, so PPO rollouts after an optimizer step stay
exact). It (1) multiplies q, k and v in one matmul and gate and up in another; (2) stores every
matrix in the layout that streams fastest for its shape and splits it over the CPU threads
(``_Weight``); (3) rotates q and k together; (4) runs grouped-query attention without copying
keys, by viewing each kv head's query group as the query-length axis. The copy costs one more
set of the matrices' memory while generating. Anything this step does not cover (MoE, sliding
windows, ALiBi, qk-norm, LoRA, SmoothQuant layers, biases, learned positions) uses
``model.forward``, as does the batched engine's prefill. Quantized linears (lmstack.compress) run
from their dequantized weights, int8 per-channel ones through whichever of ``lmstack.compress.int8``'s
kernels measured fastest for their shape. Tests check it against the model's own forward and against HF generate.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _plain_linear(m) -> bool:
    return (type(m) is nn.Linear and m.bias is None) or _quantized_kind(m) is not None


def _quantized_kind(m):
    # quantized linears (lmstack.compress): "int8" runs an int8 GEMM, "dense" a dequantized copy
    if not getattr(m, "is_quantized_linear", False):
        return None
    from lmstack.compress.int8 import decode_kind
    return decode_kind(m)


def _decode_weight(modules, parts: int):
    """The decode form of one linear or of several stacked along their outputs (q|k|v, gate|up)."""
    if all(type(m) is nn.Linear for m in modules):
        return _Weight(modules[0].weight if len(modules) == 1 else torch.cat([m.weight for m in modules]), parts)
    if all(_quantized_kind(m) == "int8" for m in modules):
        from lmstack.compress.int8 import Int8DecodeWeight
        # "dense": the same fp32 decode matmul as a plain model's, the fallback the int8 kernels are timed against
        return Int8DecodeWeight(modules, dense=lambda w: _Weight(w, parts))
    from lmstack.compress.int8 import decode_dense_weight
    # otherwise compute in float with what each layer computes
    return _Weight(torch.cat([m.weight if type(m) is nn.Linear else decode_dense_weight(m) for m in modules]), parts)


def _weight_tensor(m) -> torch.Tensor:
    # a tensor whose version changes when the layer's weights do
    return m.weight if type(m) is nn.Linear else next(iter(m.buffers()))


def supports_fast_decode(model) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "layers") or getattr(model, "training", False):
        return False
    if getattr(cfg, "family", "transformer") != "transformer":
        return False  # the recurrent and feed-forward families decode through their own state
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


class _Weight:
    """A linear weight laid out for decoding a few rows at a time on a CPU: ``w(x [M, in]) -> [M, out]``.

    One row times a weight matrix is memory-bound, and two things decide its speed here
    (benchmarks/generate.py measures both): (1) the layout: a contiguous [in, out] copy streams
    faster than the [out, in] parameter when out >= in, and the other way round when out < in; (2) threads: torch runs a one-row matmul on one core, so the weight is split
    into ``parts`` slices (columns when out >= in, else rows of [in, out], whose partial products
    are summed) that one batched matmul spreads over the cores. ``parts=1`` (GPU) is a plain matmul.
    """

    __slots__ = ("kind", "w", "parts")

    def __init__(self, weight: torch.Tensor, parts: int):
        out, inp = weight.shape
        wt = weight.detach().t()  # [in, out] view
        self.parts = parts
        if parts > 1 and out >= inp and out % parts == 0:
            self.kind = "cols"  # [P, in, out/P]
            self.w = wt.reshape(inp, parts, out // parts).permute(1, 0, 2).contiguous()
        elif parts > 1 and out < inp and inp % parts == 0:
            self.kind = "rows"  # [P, in/P, out]
            self.w = wt.contiguous().view(parts, inp // parts, out)
        else:
            self.kind = "mm"
            self.w = wt.contiguous() if out >= inp else wt

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mm":
            return x @ self.w
        m, p = x.shape[0], self.parts
        if self.kind == "cols":
            return torch.bmm(x.expand(p, m, x.shape[1]), self.w).transpose(0, 1).reshape(m, -1)
        return torch.bmm(x.view(m, p, -1).transpose(0, 1), self.w).sum(0)


class _Norm:
    """The model's RMSNorm written with fewer, cheaper ops (F.rms_norm and .mean() dispatch several
    small kernels each on CPU): same value up to float rounding. Other dtypes than fp32 call the
    module itself (its fp32-internal formula)."""

    __slots__ = ("norm", "eps")

    def __init__(self, norm):
        self.norm = norm
        self.eps = torch.tensor(norm.eps)  # 0-dim: a scalar on any device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return self.norm(x)
        ms = torch.add(self.eps, (x * x).sum(-1, keepdim=True), alpha=1.0 / x.shape[-1])
        return self.norm.weight * (x * torch.rsqrt(ms))


class FastDecoder:
    """``step(tokens [B, T], cache) -> logits [B, V]`` equal (to float rounding) to
    ``model(tokens, kv_cache=cache).logits[:, -1]``. ``parts``: how many slices each weight is split
    into (default: torch's thread count on CPU, 1 on GPU)."""

    def __init__(self, model, parts: Optional[int] = None):
        self.model = model
        self.cfg = model.config
        self.parts = parts
        self._key = None
        self._layers: list[tuple] = []

    def _params(self):
        for blk in self.model.layers:
            a, f = blk.attn, blk.ffn
            yield from (_weight_tensor(m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                                                     f.gate_proj, f.up_proj, f.down_proj))
        yield self.model.lm_head.weight

    def refresh(self) -> "FastDecoder":
        """Rebuild the decode weights if any parameter changed since the last call (once per generation)."""
        key = tuple((id(p), p._version, p.data_ptr()) for p in self._params()) + (torch.get_num_threads(),)
        if key == self._key:
            return self
        layers = []
        dev = self.model.lm_head.weight.device
        parts = self.parts or (torch.get_num_threads() if dev.type == "cpu" else 1)
        with torch.no_grad():
            for blk in self.model.layers:
                a, f = blk.attn, blk.ffn
                qkv = _decode_weight([a.q_proj, a.k_proj, a.v_proj], parts)
                gate_up = _decode_weight([f.gate_proj, f.up_proj], parts)
                # prepared once: the hot loop looks up no submodules, only the norm weights
                layers.append((_Norm(blk.attn_norm), qkv, _decode_weight([a.o_proj], parts), _Norm(blk.ffn_norm),
                               gate_up, _decode_weight([f.down_proj], parts)))
            self._final_norm = _Norm(self.model.norm)
            self._lm_head = _Weight(self.model.lm_head.weight, parts)
        self._layers = layers
        self._key = key
        return self

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, cache, all_positions: bool = False):
        """Feed ``tokens [B, T]`` after the cached ones. Returns the last position's logits [B, V]
        (or every position's, [B, T, V], with ``all_positions``). T > 1 (a speculative verify pass)
        needs a cache without padding. Call ``refresh()`` first whenever the weights may have
        changed (``fast_decoder()`` does it)."""
        cfg, model = self.cfg, self.model
        b, t = tokens.shape
        if t > 1 and cache.has_padding:
            raise ValueError("FastDecoder.step: several tokens at once need a cache without padding")
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        rep = H // Hkv
        cache.check_room(t)
        past = cache.length
        end = past + t
        pos = cache.next_position[:, None] + torch.arange(t, device=tokens.device) if t > 1 else cache.next_position[:, None]  # [B, T]
        rot = model.rotary
        rot.ensure_length(int(pos.max()) + 1)
        x = model.embed(tokens.reshape(-1))  # [B*T, D]
        cos = rot.cos[pos].to(x.dtype)[:, :, None, :]  # [B, T, 1, hd]
        sin = rot.sin[pos].to(x.dtype)[:, :, None, :]
        if t > 1:
            # query row (t, r) of a kv head's group may see keys up to past + t
            ar = torch.arange(end, device=tokens.device)
            mask = (ar[None, :] <= ar[past:, None]).repeat_interleave(rep, dim=0)
        elif cache.has_padding:
            mask = cache.key_valid[:, None, None, :end].clone()
            mask[..., past] = True
        else:
            mask = None
        same_dtype = cache.keys[0].dtype == x.dtype
        half = hd // 2
        nq = H * hd
        nk = Hkv * hd
        for i, (attn_norm, qkv_w, o_w, ffn_norm, gate_up_w, down_w) in enumerate(self._layers):
            qkv = qkv_w(attn_norm(x))
            qk = qkv[:, :nq + nk].view(b, t, H + Hkv, hd)
            # RoPE, "half" layout (GPT-NeoX / HF Llama): x*cos + rotate_half(x)*sin, q and k at once
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = torch.addcmul(qk * cos, rotated, sin)
            keys, values = cache.keys[i], cache.values[i]
            # copy_ casts to the cache dtype if it differs
            keys[:, :, past:end] = qk[:, :, H:].transpose(1, 2)
            values[:, :, past:end] = qkv[:, nq + nk:].view(b, t, Hkv, hd).transpose(1, 2)
            k_all = keys[:, :, :end]
            v_all = values[:, :, :end]
            if same_dtype is False:
                k_all, v_all = k_all.to(qk.dtype), v_all.to(qk.dtype)
            # grouped-query attention without copying keys: a kv head's rep query heads (times T
            # positions) are its "query positions"
            q = qk[:, :, :H].reshape(b, t, Hkv, rep, hd).permute(0, 2, 1, 3, 4).reshape(b, Hkv, t * rep, hd)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
            x = x + o_w(y.view(b, Hkv, t, rep, hd).transpose(1, 2).reshape(b * t, nq))
            gate, up = gate_up_w(ffn_norm(x)).chunk(2, dim=-1)
            x = x + down_w(F.silu(gate) * up)
        cache.advance(t, None, pos)
        x = x.view(b, t, -1)
        if not all_positions:
            x = x[:, -1]
        hidden = self._final_norm(x)
        logits = self._lm_head(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:-1], -1)
        if cfg.logit_softcap > 0:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        return logits


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
