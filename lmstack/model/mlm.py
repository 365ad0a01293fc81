"""A BERT-style masked language model built from the Transformer's blocks (Devlin et al. 2019).

    cfg = ModelConfig.preset("bert-style", vocab_size=4096)
    model = MaskedLM(cfg)                                   # or build_model(cfg)
    inputs, labels = mask_tokens(ids, cfg.vocab_size, model.mask_id)
    out = model(inputs, labels=labels)                     # out.loss: CE on the chosen positions
    vecs = model.encode(ids, attention_mask)               # [B, D] mean-pooled sentence vectors

The encoder reuses ``Attention`` (called with no causal mask: every token sees every other) and
``MLP`` from the decoder, arranged as BERT does: learned positions, an embedding LayerNorm,
post-norm residual blocks (x = LN(x + f(x))), and an MLM head (dense, GELU, LayerNorm, then the
tied embedding matrix plus a bias). That layout makes ``export_bert`` a pure renaming into HF's
``BertForMaskedLM``.

Inside the trainer (which hands every model next-token ``targets``) the model masks its own input
(``mask_tokens``) and ignores those targets: the objective is the masked-token loss. In eval mode
the masking is drawn from a fixed seed, so validation losses are comparable between evals.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .transformer import MLP, Attention, ModelOutput, make_norm


def mask_tokens(ids: torch.Tensor, vocab_size: int, mask_id: int, prob: float = 0.15,
                generator: torch.Generator | None = None, special_ids: tuple[int, ...] = ()
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: choose ``prob`` of the positions (never ``special_ids``); of those, 80%
    become ``mask_id``, 10% a uniformly random token in [0, vocab_size), 10% stay as they are.
    Returns (inputs, labels); labels hold the original token at chosen positions, -100 elsewhere."""
    def uniform():
        return torch.rand(ids.shape, generator=generator, device=ids.device)

    chosen = uniform() < prob
    for s in special_ids:
        chosen &= ids != s
    labels = ids.masked_fill(~chosen, -100)
    action = uniform()
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_tokens = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


class EncoderBlock(nn.Module):
    """Post-norm block (BERT): x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn = Attention(cfg, layer)
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.ffn = MLP(cfg, cfg.ffn_hidden)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        x = self.attn_norm(x + self.dropout(self.attn(x, None, mask, False, None)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class MaskedLM(nn.Module):
    is_causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"MaskedLM needs a ModelConfig, got {type(cfg).__name__}")
        if cfg.position_type != "learned":
            raise ValueError(f"ModelConfig.position_type={cfg.position_type!r}: the mlm family uses learned "
                             "positions (BERT); use ModelConfig.preset('bert-style', ...)")
        if cfg.n_experts:
            raise ValueError("ModelConfig.n_experts: the mlm family has dense FFNs only; set n_experts=0")
        self.config = cfg
        # the [MASK] token: an existing id, or one extra row after the vocabulary
        self.mask_id = cfg.mlm_mask_id if cfg.mlm_mask_id >= 0 else cfg.vocab_size
        self.n_embeddings = cfg.vocab_size + (1 if cfg.mlm_mask_id < 0 else 0)
        d = cfg.d_model
        self.embed = nn.Embedding(self.n_embeddings, d)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, d)
        self.embed_norm = make_norm(cfg, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.head_dense = nn.Linear(d, d)
        self.head_norm = make_norm(cfg, d)
        self.lm_head = nn.Linear(d, self.n_embeddings, bias=True)
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, cfg.init_std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def num_params(self, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if exclude_embeddings:
            total -= self.embed.weight.numel() + self.pos_embed.weight.numel()
        return total

    def new_kv_cache(self, *args, **kwargs):
        raise NotImplementedError("a masked LM is bidirectional and does not generate left to right; "
                                  "use a causal family (transformer, gla, lstm, ffnn) with lmstack generate")

    def _head_activation(self, x: torch.Tensor) -> torch.Tensor:
        t = self.config.ffn_type  # BERT's head uses the encoder's activation
        if t == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        if t == "relu":
            return F.relu(x)
        return F.gelu(x)

    def encoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual hidden states [B, T, D] (padding: attention_mask 1 = real token, 0 = pad)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than max_seq_len={self.config.max_seq_len}")
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (b, t):
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {(b, t)}")
            if not bool(attention_mask.bool().all()):
                mask = attention_mask.bool()[:, None, None, :]  # keys that may be attended to
        x = self.embed(input_ids) + self.pos_embed(torch.arange(t, device=input_ids.device))[None]
        x = self.dropout(self.embed_norm(x))
        for blk in self.layers:
            x = blk(x, mask)
        return x

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per sequence: the mean of its real tokens' hidden states (a sentence encoder)."""
        h = self.encoder(input_ids, attention_mask)
        if attention_mask is None:
            return h.mean(dim=1)
        w = attention_mask.to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                return_hidden: bool = False, fused_loss: bool = False, **_unused) -> ModelOutput:
        """``labels`` (original ids at masked positions, -100 elsewhere): score these inputs as given.
        ``targets`` only (the trainer's call): mask the inputs here and score the masked tokens."""
        if labels is None and targets is not None:
            gen = None
            if not self.training:
                gen = torch.Generator(device=input_ids.device).manual_seed(0)
            input_ids, labels = mask_tokens(input_ids, self.config.vocab_size, self.mask_id,
                                            self.config.mlm_prob, gen)
        hidden = self.encoder(input_ids, attention_mask)
        h = self.head_norm(self._head_activation(self.head_dense(hidden)))
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            flat = labels.reshape(-1)
            total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100,
                                    reduction="sum")
            loss = total / (flat != -100).sum().clamp(min=1)
        return ModelOutput(logits=logits, loss=loss, hidden=hidden if return_hidden else None,
                           aux_loss=torch.zeros((), device=input_ids.device))


# ------------------------------------------------------------------ Hugging Face export

_BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def bert_config_dict(cfg: ModelConfig, n_embeddings: int) -> dict:
    from .hf import HFExportError

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HFExportError(f"cannot export to BertForMaskedLM: {what}")

    need(cfg.family == "mlm", f"family={cfg.family!r}, expected 'mlm'")
    need(cfg.norm_type == "layernorm" and cfg.norm_bias, "BERT uses LayerNorm with a bias (norm_bias=True)")
    need(cfg.bias, "BERT's linears have biases (bias=True)")
    need(cfg.ffn_type in _BERT_ACTIVATIONS, f"ffn_type={cfg.ffn_type!r} has no BERT activation")
    need(cfg.n_kv_heads == cfg.n_heads, "BERT has no grouped-query attention (n_kv_heads must equal n_heads)")
    need(cfg.head_dim * cfg.n_heads == cfg.d_model, "BERT needs head_dim * n_heads == d_model")
    need(not cfg.qk_norm, "BERT has no qk_norm")
    need(cfg.tie_embeddings, "BertForMaskedLM ties its decoder to the word embeddings (tie_embeddings=True)")
    return {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": n_embeddings,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden, "hidden_act": _BERT_ACTIVATIONS[cfg.ffn_type],
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": 1, "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute", "tie_word_embeddings": True, "pad_token_id": 0,
    }


def bert_state_dict(model: MaskedLM) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {"bert.embeddings.word_embeddings.weight": sd["embed.weight"],
           "bert.embeddings.position_embeddings.weight": sd["pos_embed.weight"],
           # one token type, all zeros: lmstack has no segment embeddings
           "bert.embeddings.token_type_embeddings.weight": torch.zeros(1, model.config.d_model),
           "bert.embeddings.LayerNorm.weight": sd["embed_norm.weight"],
           "bert.embeddings.LayerNorm.bias": sd["embed_norm.bias"],
           "cls.predictions.transform.dense.weight": sd["head_dense.weight"],
           "cls.predictions.transform.dense.bias": sd["head_dense.bias"],
           "cls.predictions.transform.LayerNorm.weight": sd["head_norm.weight"],
           "cls.predictions.transform.LayerNorm.bias": sd["head_norm.bias"],
           "cls.predictions.bias": sd["lm_head.bias"]}
    names = {"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
             "attn.v_proj": "attention.self.value", "attn.o_proj": "attention.output.dense",
             "attn_norm": "attention.output.LayerNorm", "ffn.up_proj": "intermediate.dense",
             "ffn.down_proj": "output.dense", "ffn_norm": "output.LayerNorm"}
    for i in range(model.config.n_layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"bert.encoder.layer.{i}.{theirs}.{p}"] = sd[f"layers.{i}.{ours}.{p}"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_bert(model: MaskedLM, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a ``transformers`` BertForMaskedLM directory (config.json + model.safetensors, and the
    tokenizer's files when given). With mlm_mask_id=-1 the [MASK] id is vocab_size, a row the
    tokenizer itself does not name."""
    from safetensors.torch import save

    from lmstack.runs import atomic_write_bytes, atomic_write_json

    if not isinstance(model, MaskedLM):
        raise TypeError(f"export_bert needs a MaskedLM, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from .hf import _hf_special_ids

    hf_cfg = bert_config_dict(model.config, model.n_embeddings)
    hf_cfg.update(_hf_special_ids(tokenizer))
    hf_cfg["mask_token_id"] = model.mask_id
    atomic_write_bytes(directory / "model.safetensors", save(bert_state_dict(model), metadata={"format": "pt"}))
    atomic_write_json(directory / "config.json", hf_cfg)
    if tokenizer is not None and hasattr(tokenizer, "export_hf"):
        tokenizer.export_hf(directory)
    return directory
