"""The one decoder-only Transformer. Every variant (GPT-2 style, Llama style, MoE, ...) is config.

Module names are stable and HF-like because other parts of lmstack find layers by name: LoRA and
quantisation swap ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`` (all plain
``nn.Linear``), and HF export maps them one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .fused_ce import linear_cross_entropy
from .kv_cache import KVCache
from .positions import PositionalEncoding, RotaryEmbedding, alibi_slopes, apply_rotary


def unique_parameter_count(module: nn.Module) -> int:
    """Parameters of ``module``, each counted once: ``parameters()`` already skips a tied lm_head's alias
    of the embedding."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # [B, T, V]; None when the loss was computed fused (fused_loss=True)
    loss: torch.Tensor | None = None  # mean CE over targets != -100 (targets are NOT shifted here)
    hidden: torch.Tensor | None = None  # final normed hidden states [B, T, D] (return_hidden=True)
    aux_loss: torch.Tensor | None = None  # weighted MoE load-balance + z-loss; 0 for dense models


class RMSNorm(nn.Module):
    """x / rms(x) * g (Zhang & Sennrich 2019); computed in at least fp32 for bf16 stability."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # bf16/fp16 up to fp32; fp64 stays fp64
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def document_ids(input_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """[B, T] document index of each token of packed rows whose documents start with ``bos_id``:
    a BOS opens a new document; tokens before a row's first BOS are document 0."""
    return (input_ids == bos_id).long().cumsum(dim=1)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm_type == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.norm_bias)


class MLP(nn.Module):
    """Position-wise FFN. swiglu: down(silu(gate x) * up x) (Shazeer 2020); relu2: relu(x)^2 (So et al. 2021)."""

    def __init__(self, cfg: ModelConfig, hidden: int):
        super().__init__()
        self.ffn_type = cfg.ffn_type
        if cfg.ffn_type == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.ffn_type
        if t == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif t == "relu":
            h = F.relu(self.up_proj(x))
        elif t == "gelu":
            h = F.gelu(self.up_proj(x))
        elif t == "gelu_tanh":
            h = F.gelu(self.up_proj(x), approximate="tanh")
        else:  # relu2
            h = F.relu(self.up_proj(x)).square()
        return self.down_proj(h)


class MoE(nn.Module):
    """Top-k routed experts (Shazeer et al. 2017) with an optional always-on shared expert
    (DeepSeekMoE), Switch load-balancing loss, ST-MoE router z-loss and a capacity factor."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.moe_top_k
        self.aux_coef, self.z_coef = cfg.moe_aux_loss_coef, cfg.moe_z_loss_coef
        self.capacity_factor = cfg.moe_capacity_factor
        self.normalize_top_k = cfg.moe_normalize_top_k
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, cfg.moe_expert_hidden) for _ in range(cfg.n_experts))
        self.shared_expert = MLP(cfg, cfg.moe_expert_hidden) if cfg.moe_shared_expert else None
        # Monitoring only (detached): fraction of token->expert assignments dropped by the capacity
        # limit and the per-expert load of the last forward pass.
        self.last_dropped_fraction = 0.0
        self.last_load: torch.Tensor | None = None

    def capacity(self, n_tokens: int) -> int | None:
        if not (self.training and self.capacity_factor > 0):
            return None  # never drop at inference: the output of a token must not depend on its batch
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        logits = self.router(flat).float()  # [N, E]
        probs = logits.softmax(dim=-1)
        gate, expert_idx = probs.topk(self.top_k, dim=-1)  # [N, k]
        if self.normalize_top_k:
            gate = gate / gate.sum(dim=-1, keepdim=True)

        # Switch Transformer eq. 4: E * sum_i f_i * P_i, f_i = share of assignments to expert i,
        # P_i = mean router probability of expert i; minimal (=1) when both are uniform.
        assignments = F.one_hot(expert_idx, self.n_experts).sum(dim=1).float()  # [N, E]
        load = assignments.mean(dim=0) / self.top_k
        balance = self.n_experts * (load * probs.mean(dim=0)).sum()
        # ST-MoE eq. 5: mean squared log-partition keeps router logits small.
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        aux = self.aux_coef * balance + self.z_coef * z_loss

        out = torch.zeros_like(flat)
        capacity = self.capacity(n)
        dropped = 0
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(expert_idx == e)
            if token.numel() == 0:
                continue
            if capacity is not None and token.numel() > capacity:
                # keep the tokens that want this expert most; the rest skip it (residual passes them on)
                keep = gate[token, slot].topk(capacity).indices
                dropped += token.numel() - capacity
                token, slot = token[keep], slot[keep]
            y = expert(flat[token]) * gate[token, slot].unsqueeze(-1).to(flat.dtype)
            out.index_add_(0, token, y.to(out.dtype))
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        self.last_dropped_fraction = dropped / max(1, n * self.top_k)
        self.last_load = load.detach()
        return out.reshape(shape), aux


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None, is_causal: bool, kv_cache: KVCache | None,
                value_embed: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x)
        if value_embed is not None:  # modded-nanogpt's value embeddings: token identity straight into v
            v = v + value_embed.to(v.dtype)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k.to(kv_cache.keys[self.layer].dtype),
                                   v.to(kv_cache.values[self.layer].dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
        if self.n_kv_heads != self.n_heads:
            # GQA/MQA: each kv head serves n_heads / n_kv_heads query heads (Ainslie et al. 2023).
            # An explicit repeat keeps SDPA on its fused CPU kernel (enable_gqa falls back to math).
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.o_proj(y)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_type = cfg.layer_attention(layer)
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.ffn = MoE(cfg) if cfg.layer_is_moe(layer) else MLP(cfg, cfg.ffn_hidden)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, is_causal, kv_cache, value_embed=None):
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), rope, mask, is_causal, kv_cache, value_embed))
        h = self.ffn(self.ffn_norm(x))
        if isinstance(h, tuple):
            h, aux = h
        else:
            aux = None
        return x + self.resid_dropout(h), aux


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"Transformer needs a ModelConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position_type == "learned" else None
        self.sinusoidal = PositionalEncoding(cfg.d_model, cfg.max_seq_len) if cfg.position_type == "sinusoidal" else None
        self.rotary = None
        if cfg.position_type == "rope":
            self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling,
                                          cfg.rope_scaling_factor, cfg.rope_original_max_len,
                                          cfg.yarn_beta_fast, cfg.yarn_beta_slow)
        if cfg.position_type == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
        else:
            self.alibi_slopes = None
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, kv_dim) for _ in range(cfg.value_embed_layers))
        self.skip_weights = nn.Parameter(torch.ones(cfg.n_layers // 2)) if cfg.unet_skips else None
        self.norm = make_norm(cfg, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        std = self.config.init_std
        # GPT-2: scale residual-branch output projections by 1/sqrt(2 * n_layers) so the residual
        # stream's variance does not grow with depth.
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                last = name.rsplit(".", 1)[-1]
                nn.init.normal_(module.weight, 0.0, resid_std if last in ("o_proj", "down_proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for table in self.value_embeds:
            nn.init.zeros_(table.weight)  # the model starts as the one without value embeddings
        if self.skip_weights is not None:
            nn.init.ones_(self.skip_weights)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied lm_head counts once)."""
        total = unique_parameter_count(self)
        if exclude_embeddings:
            total -= self.embed.weight.numel()
            if self.pos_embed is not None:
                total -= self.pos_embed.weight.numel()
        return total

    def new_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        p = self.embed.weight
        return KVCache(self.config.n_layers, batch_size, self.config.n_kv_heads, self.config.head_dim,
                       max_len, device=device or p.device, dtype=dtype or p.dtype)

    def set_rope_scaling(self, scaling: str, factor: float = 1.0, original_max_len: int | None = None) -> None:
        """Switch the RoPE context-extension method of a (trained) model in place."""
        if self.rotary is None:
            raise ValueError(f"set_rope_scaling needs position_type='rope', this model uses {self.config.position_type!r}")
        cfg = self.config
        new = cfg.replace(rope_scaling=scaling, rope_scaling_factor=float(factor),
                          rope_original_max_len=original_max_len or cfg.rope_original_max_len)
        self.config = new
        self.rotary.configure(new.rope_theta, new.rope_scaling, new.rope_scaling_factor,
                              new.rope_original_max_len, new.yarn_beta_fast, new.yarn_beta_slow)

    # ------------------------------------------------------------------ masks
    def _attention_masks(self, t: int, past: int, key_valid: torch.Tensor | None, device
                         ) -> tuple[dict[str, torch.Tensor | None], bool]:
        """One mask per attention type used by the layers; True = may attend.

        Returns ({type: mask [B|1, 1|H, T, S] or None}, is_causal). A None mask with is_causal=True
        lets SDPA use its fused causal kernel (the common training case).
        """
        cfg = self.config
        s = past + t
        types = {blk.attention_type for blk in self.layers}
        plain_causal = key_valid is None and self.alibi_slopes is None and (past == 0 or t == 1)
        masks: dict[str, torch.Tensor | None] = {}
        q_slot = torch.arange(past, s, device=device)[:, None]
        k_slot = torch.arange(s, device=device)[None, :]
        base = k_slot <= q_slot  # [T, S]
        for kind in types:
            windowed = kind in ("sliding", "local_global") and s > cfg.sliding_window
            if plain_causal and not windowed:
                masks[kind] = None  # past == 0: is_causal; t == 1: every cached key is visible
                continue
            allowed = base
            if windowed:
                local = (q_slot - k_slot) < cfg.sliding_window
                if kind == "local_global" and cfg.n_global_tokens:
                    if key_valid is None:
                        is_global = (k_slot < cfg.n_global_tokens)
                    else:  # the first *real* tokens of each row, not its left padding
                        rank = key_valid.long().cumsum(dim=1) - 1
                        is_global = (rank < cfg.n_global_tokens) & key_valid
                        is_global = is_global[:, None, :]
                    local = local | is_global
                allowed = allowed & local
            if key_valid is not None:
                allowed = allowed & key_valid[:, None, :]
                # padded query rows would see no key at all (NaN in softmax): let them see themselves
                allowed = allowed | (k_slot == q_slot)
            if allowed.dim() == 2:
                allowed = allowed[None]
            allowed = allowed[:, None]  # head dim
            if self.alibi_slopes is not None:
                # ALiBi: bias = -m_h * distance, added to the attention scores
                distance = (q_slot - k_slot).clamp(min=0).float()
                bias = -self.alibi_slopes.to(device)[:, None, None] * distance[None]  # [H, T, S]
                masks[kind] = bias[None].masked_fill(~allowed, float("-inf"))
            else:
                masks[kind] = allowed
        return masks, (past == 0 and plain_causal)

    def _document_masks(self, masks: dict[str, torch.Tensor | None], doc_ids: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """AND "same document" into every layer type's mask (block-diagonal causal attention)."""
        t = doc_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
        allowed = ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]  # [B, 1, T, T]
        out = {}
        for kind, mask in masks.items():
            if mask is None:
                out[kind] = allowed
            elif mask.dtype == torch.bool:
                out[kind] = mask & allowed
            else:  # ALiBi bias
                out[kind] = mask.masked_fill(~allowed, float("-inf"))
        return out

    @staticmethod
    def _check_documents(doc_ids, b, t, attention_mask, position_ids, kv_cache) -> torch.Tensor:
        """Validate doc_ids; return positions that restart at 0 at each document's first token."""
        if doc_ids.shape != (b, t):
            raise ValueError(f"doc_ids shape {tuple(doc_ids.shape)} != input_ids shape {(b, t)}")
        if kv_cache is not None or attention_mask is not None or position_ids is not None:
            raise ValueError("doc_ids (packed training rows) cannot be combined with kv_cache, attention_mask "
                             "or position_ids; it sets the mask and positions itself")
        index = torch.arange(t, device=doc_ids.device).expand(b, t)
        starts = torch.ones(b, t, dtype=torch.bool, device=doc_ids.device)
        starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
        return index - first

    def _run_layers(self, x, input_ids, rope, masks, is_causal, kv_cache):
        """The blocks, with the optional value embeddings and U-net skips (modded-nanogpt)."""
        n = len(self.layers)
        skips: list[torch.Tensor] = []
        aux_total = None
        for i, block in enumerate(self.layers):
            if self.skip_weights is not None:
                if i < n // 2:
                    skips.append(x)  # the input of encoder layer i feeds decoder layer n-1-i
                elif i >= n - n // 2:
                    x = x + self.skip_weights[n - 1 - i] * skips.pop()
            ve = self.value_embeds[i](input_ids) if i < len(self.value_embeds) else None
            x, aux = block(x, rope, masks[block.attention_type], is_causal, kv_cache, ve)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        return x, aux_total

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, return_hidden: bool = False,
                fused_loss: bool = False, inputs_embeds: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None) -> ModelOutput:
        """input_ids [B, T]. targets [B, T] are the next tokens (already shifted; -100 = ignore).

        fused_loss: with targets, compute the loss chunk by chunk without the [B, T, V] logits
        (lmstack.model.fused_ce; ``out.logits`` is then None). Training uses it; it saves the
        logits' memory traffic, which dominates small models.

        attention_mask: 1 = real token, 0 = padding (left padding supported). Its shape is [B, T]
        (this call's tokens) or [B, cached + T] (HF style); with a KV cache the padding of earlier
        calls is remembered, so later decoding steps may pass no mask. position_ids default to
        0, 1, ... counted over real tokens only, continuing from the cache.
        inputs_embeds [B, T, D], when given, replaces the token embeddings of input_ids (which still
        set the shape): multimodal models splice projected image features in at placeholder slots.
        doc_ids [B, T] (packed training rows, see :func:`document_ids`): a token attends only to
        earlier tokens with the same id, and positions restart at 0 where the id changes, so each
        document of the row is computed exactly as if it were alone.
        """
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        device = input_ids.device
        past = kv_cache.length if kv_cache is not None else 0
        if doc_ids is not None:
            position_ids = self._check_documents(doc_ids, b, t, attention_mask, position_ids, kv_cache)
        if kv_cache is not None:
            kv_cache.check_room(t)
            if kv_cache.batch_size != b:
                raise ValueError(f"KV cache was made for batch {kv_cache.batch_size}, input has batch {b}")

        new_valid = None
        if attention_mask is not None:
            if attention_mask.shape == (b, past + t):
                new_valid = attention_mask[:, past:].bool()
            elif attention_mask.shape == (b, t):
                new_valid = attention_mask.bool()
            else:
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} matches neither "
                                 f"(batch, seq)=({b}, {t}) nor (batch, cached+seq)=({b}, {past + t})")
            if bool(new_valid.all()):
                new_valid = None

        if position_ids is None:
            start = kv_cache.next_position[:, None] if kv_cache is not None else None
            if new_valid is not None:
                pos = (new_valid.long().cumsum(dim=1) - 1).clamp(min=0)
                position_ids = pos if start is None else pos + start
            elif start is not None:
                position_ids = start + torch.arange(t, device=device)[None]
            # else: 0..T-1, handled without materialising ids
        elif position_ids.dim() == 1:
            position_ids = position_ids[None].expand(b, t)

        key_valid = None
        if kv_cache is not None and (kv_cache.has_padding or new_valid is not None):
            prev = kv_cache.key_valid[:, :past]
            cur = new_valid if new_valid is not None else torch.ones(b, t, dtype=torch.bool, device=device)
            key_valid = torch.cat([prev, cur], dim=1)
        elif new_valid is not None:
            key_valid = new_valid

        if inputs_embeds is None:
            x = self.embed(input_ids)
        elif inputs_embeds.shape != (b, t, cfg.d_model):
            raise ValueError(f"inputs_embeds shape {tuple(inputs_embeds.shape)} != (batch, seq, d_model) "
                             f"= {(b, t, cfg.d_model)}")
        else:
            x = inputs_embeds
        if self.pos_embed is not None or self.sinusoidal is not None:
            pos = position_ids if position_ids is not None else torch.arange(t, device=device)[None]
            if self.pos_embed is not None:
                if int(pos.max()) >= cfg.max_seq_len:
                    raise ValueError(f"position {int(pos.max())} is beyond the learned position table "
                                     f"(max_seq_len={cfg.max_seq_len}); learned positions cannot extrapolate")
                x = x + self.pos_embed(pos)
            else:
                x = x + self.sinusoidal(pos).to(x.dtype)
        x = self.embed_dropout(x)

        rope = None
        if self.rotary is not None:
            dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
            rope = self.rotary.tables(t, position_ids, dtype)

        masks, is_causal = self._attention_masks(t, past, key_valid, device)
        if doc_ids is not None:
            masks, is_causal = self._document_masks(masks, doc_ids), False
        x, aux_total = self._run_layers(x, input_ids, rope, masks, is_causal, kv_cache)
        if kv_cache is not None:
            if position_ids is None:
                position_ids = torch.arange(t, device=device)[None]
            kv_cache.advance(t, new_valid, position_ids)

        hidden = self.norm(x)
        logits, loss = self._logits_and_loss(hidden, targets, fused_loss)
        if aux_total is None:
            aux_total = torch.zeros((), device=device)
        return ModelOutput(logits=logits, loss=loss, hidden=hidden if return_hidden else None,
                           aux_loss=aux_total)

    def _logits_and_loss(self, hidden: torch.Tensor, targets: torch.Tensor | None, fused_loss: bool
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cfg = self.config
        b, t = hidden.shape[:2]
        if targets is not None and targets.shape != (b, t):
            raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape {(b, t)}")
        fused = fused_loss and targets is not None and type(self.lm_head) is nn.Linear
        logits = None
        if not fused:
            logits = self.lm_head(hidden)
            if cfg.logit_softcap > 0:
                logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        if targets is None:
            return logits, None
        flat_targets = targets.reshape(-1)
        # sum / count instead of reduction="mean": no host sync (torch.compile friendly), and a
        # batch with nothing to predict gives 0 (with a graph) instead of NaN.
        if fused:
            total = linear_cross_entropy(hidden.reshape(b * t, -1), self.lm_head.weight, flat_targets,
                                         softcap=cfg.logit_softcap)
        else:
            total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_targets,
                                    ignore_index=-100, reduction="sum")
        return logits, total / (flat_targets != -100).sum().clamp(min=1)
