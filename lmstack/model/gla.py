"""Gated linear attention: a sub-quadratic decoder with an O(1)-size decode state.

Each head keeps a matrix state S (head_dim x head_dim) updated by a data-dependent decay:

    S_t = a_t S_{t-1} + k_t v_t^T,        o_t = q_t S_t,        a_t = sigmoid(w . x_t)^(1/tau)

(linear attention with a forget gate; RetNet, Sun et al. 2023, uses a fixed a per head; GLA, Yang
et al. 2024, a data-dependent one per key dimension; this block uses one data-dependent scalar per
head and token, as Mamba-2 does; flash-linear-attention calls it simple GLA and its reference
implementation is this module's test oracle). The output goes through a per-head RMSNorm and a SiLU output
gate, as in GLA/RetNet. Training uses the chunkwise-parallel form: inside a chunk of C tokens a
masked C x C "attention" with decays exp(b_t - b_s) (b = cumulative log-decay, so every exponent is
<= 0 and nothing overflows), across chunks the state carries over. Cost O(T * C * d) instead of
O(T^2 * d). Decoding runs the recurrence one token at a time. Both give the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .families import CausalLMBase
from .transformer import MLP, RMSNorm, make_norm


def gla_chunked(q, k, v, log_decay, state=None, chunk: int = 64):
    """Chunkwise-parallel gated linear attention.

    q, k [B, H, T, Dk], v [B, H, T, Dv], log_decay [B, H, T] (<= 0), state [B, H, Dk, Dv] or None.
    Returns (o [B, H, T, Dv], final state). Computed in float32, also under autocast: the state sums
    the whole prefix, and bf16 rounding would build up along it.
    """
    with torch.autocast(q.device.type, enabled=False):
        return _gla_chunked_fp32(q, k, v, log_decay, state, chunk)


def _gla_chunked_fp32(q, k, v, log_decay, state, chunk):
    dtype = v.dtype
    q, k, v, g = q.float(), k.float(), v.float(), log_decay.float()
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    if state is None:
        state = q.new_zeros(b, h, dk, dv)
    pad = (-t) % chunk
    if pad:  # zero keys and no decay: the padded tail changes nothing
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = F.pad(g, (0, pad))
    n = (t + pad) // chunk
    q, k, v = (x.view(b, h, n, chunk, -1) for x in (q, k, v))
    cum = g.view(b, h, n, chunk).cumsum(-1)  # b_t inside each chunk
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    rel = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = (q @ k.transpose(-1, -2)) * rel.exp()  # [B, H, n, C, C]
    out = scores @ v  # contributions from inside the chunk
    q_decayed = q * cum.exp()[..., None]  # read the carried state, decayed to each position
    k_to_end = k * (cum[..., -1:] - cum).exp()[..., None]  # each key's decay to the chunk's end
    chunk_decay = cum[..., -1].exp()[..., None, None]  # [B, H, n, 1, 1]
    outs = []
    for j in range(n):
        outs.append(out[:, :, j] + q_decayed[:, :, j] @ state)
        state = chunk_decay[:, :, j] * state + k_to_end[:, :, j].transpose(-1, -2) @ v[:, :, j]
    o = torch.stack(outs, dim=2).view(b, h, n * chunk, dv)[:, :, :t]
    return o.to(dtype), state


def gla_step(q, k, v, log_decay, state):
    """One recurrent step: q, k [B, H, Dk], v [B, H, Dv], log_decay [B, H], state [B, H, Dk, Dv]."""
    with torch.autocast(q.device.type, enabled=False):
        return _gla_step_fp32(q, k, v, log_decay, state)


def _gla_step_fp32(q, k, v, log_decay, state):
    state = log_decay.float().exp()[..., None, None] * state + k.float()[..., :, None] * v.float()[..., None, :]
    o = (q.float()[..., None, :] @ state).squeeze(-2)
    return o.to(v.dtype), state


class GatedLinearAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        inner = cfg.n_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.decay_proj = nn.Linear(cfg.d_model, cfg.n_heads, bias=True)
        self.out_gate = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.head_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.tau, self.chunk = cfg.gla_gate_tau, cfg.gla_chunk

    def forward(self, x, valid, state):
        b, t, _ = x.shape
        heads = lambda y: y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        k = k * self.head_dim ** -0.5
        log_decay = (F.logsigmoid(self.decay_proj(x).float()) / self.tau).transpose(1, 2)  # [B, H, T]
        if valid is not None:  # a padded position neither writes nor decays the state
            keep = valid[:, None, :]
            log_decay = log_decay.masked_fill(~keep, 0.0)
            k = k.masked_fill(~keep[..., None], 0.0)
        if t == 1 and state is not None:
            o, state = gla_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_decay[:, :, 0], state)
            o = o[:, :, None]
        else:
            o, state = gla_chunked(q, k, v, log_decay, state, self.chunk)
        o = self.head_norm(o).transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(o * F.silu(self.out_gate(x))), state


class GLABlock(nn.Module):
    """Pre-norm residual block with the linear-attention mixer in place of softmax attention.
    (Named ``mixer``, not ``attn``, so code written for softmax attention does not mistake it.)"""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mixer_norm = make_norm(cfg, cfg.d_model)
        self.mixer = GatedLinearAttention(cfg)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.ffn = MLP(cfg, cfg.ffn_hidden)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, valid, state):
        y, state = self.mixer(self.mixer_norm(x), valid, state)
        x = x + self.resid_dropout(y)
        return x + self.resid_dropout(self.ffn(self.ffn_norm(x))), state


class GLALM(CausalLMBase):
    """Decoder of GLA blocks; no position encoding (the decays order the tokens)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if cfg.n_experts:
            raise ValueError("ModelConfig.n_experts: the gla family has dense FFNs only; set n_experts=0")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(GLABlock(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        std, resid_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, resid_std if name.endswith(("o_proj", "down_proj")) else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
        for blk in self.blocks:
            # decays start near sigmoid(3)^(1/tau) ~ 0.997: a long memory to begin with
            nn.init.constant_(blk.mixer.decay_proj.bias, 3.0)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def attention_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs of the mixing itself per token: the causal half of a C x C chunk of scores
        and weighted values, plus reading and updating the Dk x Dv state."""
        cfg = self.config
        c, dk = min(cfg.gla_chunk, seq_len), cfg.head_dim
        return float(cfg.n_layers * cfg.n_heads * (c * (dk + dk) + 4 * dk * dk))

    def initial_state(self, batch: int, device) -> dict[str, torch.Tensor]:
        cfg = self.config
        return {f"S{i}": torch.zeros(batch, cfg.n_heads, cfg.head_dim, cfg.head_dim, device=device)
                for i in range(cfg.n_layers)}

    def hidden_and_logits(self, ids, valid, state):
        x = self.embed_dropout(self.embed(ids))
        new_state = {}
        for i, blk in enumerate(self.blocks):
            x, new_state[f"S{i}"] = blk(x, valid, None if state is None else state[f"S{i}"])
        hidden = self.norm(x)
        return hidden, self.lm_head(hidden), new_state
