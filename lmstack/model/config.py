"""ModelConfig: every architectural choice of the one decoder-only Transformer, plus named presets.

A preset fixes the architecture *family* (GPT-2: learned positions, GELU, LayerNorm, biases, MHA;
Llama: RoPE, SwiGLU, RMSNorm, GQA, no biases; MoE: Llama + routed experts) at a CPU-friendly size.
Every field can be overridden: ``ModelConfig.preset("llama-style", vocab_size=8192, n_layers=4)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

FFNType = Literal["relu", "gelu", "gelu_tanh", "swiglu", "relu2"]
NormType = Literal["layernorm", "rmsnorm"]
PositionType = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
RopeScaling = Literal["none", "linear", "ntk", "yarn"]
AttentionType = Literal["full", "sliding", "local_global"]
FFN_TYPES = get_args(FFNType)
NORM_TYPES = get_args(NormType)
POSITION_TYPES = get_args(PositionType)
ROPE_SCALING_TYPES = get_args(RopeScaling)
ATTENTION_TYPES = get_args(AttentionType)


@dataclass
class ModelConfig:
    family: str = "transformer"  # which model class lmstack.model.build_model makes (FAMILIES)
    # sizes
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 8
    # n_kv_heads == n_heads: MHA; 1 < n_kv_heads < n_heads: GQA; 1: MQA. 0 means "= n_heads".
    n_kv_heads: int = 4
    head_dim: int = 0  # 0 = d_model // n_heads
    max_seq_len: int = 256  # learned/sinusoidal table size and the RoPE cache's initial length
    # feed-forward
    ffn_type: FFNType = "swiglu"
    ffn_hidden: int = 0  # 0 = 4*d_model (2/3 of that, rounded up to 64, for swiglu)
    # normalisation (always pre-norm)
    norm_type: NormType = "rmsnorm"
    norm_eps: float = 1e-5
    # positions
    position_type: PositionType = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = "none"
    rope_scaling_factor: float = 1.0
    rope_original_max_len: int = 0  # context the model was trained at; 0 = max_seq_len
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    # attention pattern: one entry per layer, or a shorter list that repeats over the layers,
    # e.g. ["sliding", "sliding", "full"] interleaves local and global layers (Gemma-2 style).
    attention_pattern: list[AttentionType] = field(default_factory=lambda: ["full"])
    sliding_window: int = 128  # keys visible to a query, itself included, in sliding/local layers
    n_global_tokens: int = 4  # "local_global": the first tokens stay visible to every query
    qk_norm: bool = False  # RMSNorm on each head's q and k before RoPE (OLMo-2 / Qwen-3)
    # speedrun options (modded-nanogpt); off by default
    value_embed_layers: int = 0  # the first k layers add their own embedding of the input ids to v (zero-init)
    unet_skips: bool = False  # layer n-1-i adds w_i * (input of layer i), i < n//2; w_i learned, init 1
    # mixture of experts (n_experts = 0: dense FFN in every layer)
    n_experts: int = 0
    moe_top_k: int = 2
    moe_shared_expert: bool = False
    moe_expert_hidden: int = 0  # 0 = same as ffn_hidden
    moe_every: int = 1  # layer i is MoE when (i % moe_every) == moe_every - 1
    moe_aux_loss_coef: float = 0.01  # Switch Transformer load-balancing loss weight
    moe_z_loss_coef: float = 0.001  # ST-MoE router z-loss weight
    moe_capacity_factor: float = 0.0  # 0 = no token dropping; applied in training mode only
    moe_normalize_top_k: bool = True  # renormalise the top-k gate weights to sum to 1
    # misc
    bias: bool = False  # biases in every Linear (GPT-2: True)
    norm_bias: bool = False  # LayerNorm bias (ignored by RMSNorm)
    tie_embeddings: bool = True
    logit_softcap: float = 0.0  # 0 = off; else logits = c * tanh(logits / c) (Gemma-2)
    dropout: float = 0.0  # embedding, residual and attention-probability dropout
    init_std: float = 0.02
    # other families (lmstack.model.families / gla / mlm); ignored by the transformer
    ffnn_context: int = 4  # ffnn: tokens conditioned on (n-1 of an n-gram)
    ffnn_direct: bool = False  # ffnn: direct embedding -> output connections (Bengio's W x)
    gla_chunk: int = 64  # gla: chunk length of the parallel training form
    gla_gate_tau: float = 16.0  # gla: log-decay = logsigmoid(.) / tau keeps decays near 1 (Yang et al. 2024)
    mlm_prob: float = 0.15  # mlm: share of positions chosen for prediction (80% [MASK], 10% random, 10% kept)
    mlm_mask_id: int = -1  # mlm: the [MASK] token id; -1 = one extra embedding row after the vocabulary

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "change one of them or set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.ffn_hidden == 0:
            if self.ffn_type == "swiglu":
                # keep the parameter count of a 4x MLP with three matrices (Shazeer 2020)
                self.ffn_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)
            else:
                self.ffn_hidden = 4 * self.d_model
        if self.moe_expert_hidden == 0:
            self.moe_expert_hidden = self.ffn_hidden
        if self.rope_original_max_len == 0:
            self.rope_original_max_len = self.max_seq_len
        if isinstance(self.attention_pattern, str):
            self.attention_pattern = [self.attention_pattern]
        self.attention_pattern = list(self.attention_pattern)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {msg}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "max_seq_len", "ffn_hidden"):
            if getattr(self, name) <= 0:
                bad(name, "must be positive")
        if self.n_heads % self.n_kv_heads:
            bad("n_kv_heads", f"must divide n_heads={self.n_heads} (GQA groups query heads evenly)")
        if self.ffn_type not in FFN_TYPES:
            bad("ffn_type", f"choose one of {FFN_TYPES}")
        if self.norm_type not in NORM_TYPES:
            bad("norm_type", f"choose one of {NORM_TYPES}")
        if self.position_type not in POSITION_TYPES:
            bad("position_type", f"choose one of {POSITION_TYPES}")
        if self.rope_scaling not in ROPE_SCALING_TYPES:
            bad("rope_scaling", f"choose one of {ROPE_SCALING_TYPES}")
        if self.rope_scaling != "none" and self.rope_scaling_factor < 1.0:
            bad("rope_scaling_factor", "must be >= 1 (the factor by which the context grows)")
        if self.position_type == "rope" and self.head_dim % 2:
            bad("head_dim", "must be even for RoPE")
        if self.position_type == "sinusoidal" and self.d_model % 2:
            bad("d_model", "must be even for sinusoidal positions")
        if not self.attention_pattern:
            bad("attention_pattern", "must name at least one layer type")
        for kind in self.attention_pattern:
            if kind not in ATTENTION_TYPES:
                bad("attention_pattern", f"entry {kind!r} is not one of {ATTENTION_TYPES}")
        if self.sliding_window <= 0:
            bad("sliding_window", "must be positive")
        if self.n_global_tokens < 0:
            bad("n_global_tokens", "must be >= 0")
        if not 0 <= self.value_embed_layers <= self.n_layers:
            bad("value_embed_layers", f"must be in 0..n_layers={self.n_layers}")
        if self.n_experts < 0:
            bad("n_experts", "must be >= 0")
        if self.n_experts:
            if not 1 <= self.moe_top_k <= self.n_experts:
                bad("moe_top_k", f"must be in 1..n_experts={self.n_experts}")
            if self.moe_every < 1:
                bad("moe_every", "must be >= 1")
            if self.moe_capacity_factor < 0:
                bad("moe_capacity_factor", "must be >= 0 (0 disables token dropping)")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if self.logit_softcap < 0:
            bad("logit_softcap", "must be >= 0 (0 disables it)")
        if self.family not in FAMILIES:
            bad("family", f"choose one of {FAMILIES}")
        if self.ffnn_context < 1:
            bad("ffnn_context", "must be >= 1 (the number of previous tokens the feed-forward LM sees)")
        if self.gla_chunk < 1:
            bad("gla_chunk", "must be >= 1")
        if self.gla_gate_tau <= 0:
            bad("gla_gate_tau", "must be > 0")
        if not 0.0 < self.mlm_prob < 1.0:
            bad("mlm_prob", "must be in (0, 1)")
        if self.mlm_mask_id >= self.vocab_size:
            bad("mlm_mask_id", f"must be < vocab_size={self.vocab_size}, or -1 for an extra embedding row")

    # ------------------------------------------------------------------ helpers
    def layer_attention(self, layer: int) -> str:
        return self.attention_pattern[layer % len(self.attention_pattern)]

    def layer_is_moe(self, layer: int) -> bool:
        return self.n_experts > 0 and layer % self.moe_every == self.moe_every - 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model") -> "ModelConfig":
        from lmstack.config import config_from_dict

        return config_from_dict(cls, data, where)

    def replace(self, **overrides: Any) -> "ModelConfig":
        d = self.to_dict()
        d.update(overrides)
        return ModelConfig.from_dict(d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named architecture family at a CPU-friendly size, with ``overrides`` applied."""
        table = PRESETS if name in PRESETS else FAMILY_PRESETS
        if name not in table:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS) + sorted(FAMILY_PRESETS)}")
        d = dict(table[name])
        d.update(overrides)
        return cls.from_dict(d, where=f"model preset {name!r}")

    def num_params(self) -> int:
        """Analytic parameter count (tied embeddings counted once); equals build_model(self).num_params()."""
        return count_params(self)


# transformer: the decoder (transformer.py); ffnn: Bengio et al. 2003 feed-forward LM; lstm: recurrent LM;
# gla: gated linear attention blocks (sub-quadratic, O(1) decode state); mlm: BERT-style encoder;
# bilstm: ELMo-style forward + backward LSTM LMs (generates with its forward half).
FAMILIES = ("transformer", "ffnn", "lstm", "gla", "mlm", "bilstm")


# Sizes chosen so the three presets have a comparable ~7M parameters at vocab 4096
# (the throughput benchmark's "about 7M" Llama). Counts are listed in PRESET_PARAMS below.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-style": dict(
        vocab_size=4096, d_model=256, n_layers=8, n_heads=8, n_kv_heads=0, max_seq_len=256,
        ffn_type="gelu_tanh", norm_type="layernorm", norm_bias=True, norm_eps=1e-5,
        position_type="learned", bias=True, tie_embeddings=True,
    ),
    "llama-style": dict(
        vocab_size=4096, d_model=256, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=256,
        ffn_type="swiglu", norm_type="rmsnorm", norm_eps=1e-5, position_type="rope",
        rope_theta=10000.0, bias=False, tie_embeddings=True,
    ),
    "moe": dict(
        vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=256,
        ffn_type="swiglu", norm_type="rmsnorm", position_type="rope", bias=False,
        tie_embeddings=True, n_experts=8, moe_top_k=2, moe_shared_expert=True,
        moe_expert_hidden=256,
    ),
}

# The other families (lmstack.model.families/gla/mlm) at comparable sizes, for the baseline table.
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "ffnn": dict(family="ffnn", vocab_size=4096, d_model=64, ffn_hidden=512, ffnn_context=4, ffnn_direct=False,
                 n_layers=1, n_heads=1, n_kv_heads=0, max_seq_len=256, tie_embeddings=False),
    "lstm": dict(family="lstm", vocab_size=4096, d_model=512, n_layers=2, n_heads=1, n_kv_heads=0,
                 max_seq_len=256, tie_embeddings=True),
    "bilstm": dict(family="bilstm", vocab_size=4096, d_model=384, n_layers=2, n_heads=1, n_kv_heads=0,
                   max_seq_len=256, tie_embeddings=True),
    "gla": dict(family="gla", vocab_size=4096, d_model=256, n_layers=7, n_heads=4, n_kv_heads=0,
                max_seq_len=256, ffn_type="swiglu", norm_type="rmsnorm", position_type="none", bias=False,
                tie_embeddings=True),
    "bert-style": dict(family="mlm", vocab_size=4096, d_model=256, n_layers=6, n_heads=4, n_kv_heads=0,
                       max_seq_len=256, ffn_type="gelu", norm_type="layernorm", norm_bias=True, norm_eps=1e-12,
                       position_type="learned", bias=True, tie_embeddings=True),
}


def _norm_params(cfg: ModelConfig, dim: int) -> int:
    if cfg.norm_type == "layernorm" and cfg.norm_bias:
        return 2 * dim
    return dim


def _mlp_params(cfg: ModelConfig, hidden: int) -> int:
    d = cfg.d_model
    n_in = 2 if cfg.ffn_type == "swiglu" else 1
    p = (n_in + 1) * d * hidden
    if cfg.bias:
        p += n_in * hidden + d
    return p


def _family_params(cfg: ModelConfig) -> int:
    """Parameters of the non-transformer families (lmstack.model.families / gla / mlm)."""
    d, v = cfg.d_model, cfg.vocab_size
    if cfg.family == "ffnn":
        n_in = cfg.ffnn_context * d
        return ((v + 1) * d + n_in * cfg.ffn_hidden + cfg.ffn_hidden + cfg.ffn_hidden * v + v
                + (n_in * v if cfg.ffnn_direct else 0))
    head = 0 if cfg.tie_embeddings else v * d
    if cfg.family in ("lstm", "bilstm"):
        directions = 2 if cfg.family == "bilstm" else 1
        return v * d + head + directions * cfg.n_layers * (8 * d * d + 8 * d)  # 4 gates: W_ih, W_hh, two biases
    if cfg.family == "gla":
        inner = cfg.n_heads * cfg.head_dim
        mixer = 5 * d * inner + d * cfg.n_heads + cfg.n_heads + cfg.head_dim  # q k v gate o, decay, head norm
        if cfg.bias:
            mixer += 4 * inner + d
        block = mixer + 2 * _norm_params(cfg, d) + _mlp_params(cfg, cfg.ffn_hidden)
        return v * d + head + cfg.n_layers * block + _norm_params(cfg, d)
    # mlm: one extra embedding row for [MASK] unless an existing id is used
    rows = v + (1 if cfg.mlm_mask_id < 0 else 0)
    head = 0 if cfg.tie_embeddings else rows * d
    attn = _attention_params(cfg)
    block = attn + 2 * _norm_params(cfg, d) + _mlp_params(cfg, cfg.ffn_hidden)
    return (rows * d + head + rows + cfg.max_seq_len * d + _norm_params(cfg, d) + cfg.n_layers * block
            + d * d + d + _norm_params(cfg, d))


def _attention_params(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    q_out, kv_out = cfg.n_heads * hd, cfg.n_kv_heads * hd
    attn = d * q_out + 2 * d * kv_out + q_out * d
    if cfg.bias:
        attn += q_out + 2 * kv_out + d
    if cfg.qk_norm:
        attn += 2 * hd
    return attn


def count_params(cfg: ModelConfig) -> int:
    if cfg.family != "transformer":
        return _family_params(cfg)
    d = cfg.d_model
    attn = _attention_params(cfg)
    total = cfg.vocab_size * d
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * d
    if cfg.position_type == "learned":
        total += cfg.max_seq_len * d
    for layer in range(cfg.n_layers):
        total += attn + 2 * _norm_params(cfg, d)
        if cfg.layer_is_moe(layer):
            total += d * cfg.n_experts + cfg.n_experts * _mlp_params(cfg, cfg.moe_expert_hidden)
            if cfg.moe_shared_expert:
                total += _mlp_params(cfg, cfg.moe_expert_hidden)
        else:
            total += _mlp_params(cfg, cfg.ffn_hidden)
    total += _norm_params(cfg, d)
    total += cfg.value_embed_layers * cfg.vocab_size * cfg.n_kv_heads * cfg.head_dim
    if cfg.unet_skips:
        total += cfg.n_layers // 2
    return total
