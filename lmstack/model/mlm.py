"""A BERT-style masked language model built from the Transformer's blocks (Devlin et al. 2019).

    cfg = ModelConfig.preset("bert-style", vocab_size=4096)
    model = MaskedLM(cfg)                                   # or build_model(cfg)
    inputs, labels = mask_tokens(ids, cfg.vocab_size, model.mask_id)
    out = model(inputs, labels=labels)                     # out.loss: CE on the chosen positions
    vecs = model.encode(ids, attention_mask)               # [B, D] mean-pooled sentence vectors

The encoder reuses ``Attention`` (called with no causal mask: every token sees every other) and
``MLP`` from the decoder, arranged as BERT does: learned positions, an embedding LayerNorm,
post-norm residual blocks (x = LN(x + f(x))), and an MLM head (dense, GELU, LayerNorm, then the
tied embedding matrix plus a bias). That layout makes ``lmstack.model.hf.export_bert`` a pure
renaming into HF's ``BertForMaskedLM``.

Inside the trainer (which hands every model next-token ``targets``) the model masks its own input
(``mask_tokens``) and ignores those targets: the objective is the masked-token loss. In eval mode
the masking is drawn from a fixed seed, so validation losses are comparable between evals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .transformer import MLP, Attention, ModelOutput, make_norm, unique_parameter_count


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
        total = unique_parameter_count(self)
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
