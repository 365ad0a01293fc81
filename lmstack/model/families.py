"""Model families beside the decoder Transformer, chosen by ``ModelConfig.family``.

    model = build_model(ModelConfig(family="lstm", vocab_size=512, d_model=128, n_layers=2))
    out = model(ids, targets=next_ids)           # out.logits, out.loss, out.aux_loss (= 0)

Every family keeps the Transformer's interface, so the trainer, the evals and (causal families)
the generation engine serve them unchanged. The causal ones answer ``new_kv_cache(batch, max_len)``
with a :class:`RecurrentState` instead of a key/value cache: the engine passes it back on every
step, and the model carries whatever it needs (last n-1 tokens, LSTM (h, c), linear-attention
state) in O(1) memory per row. Left padding is honoured: a padded position leaves the state as it
was, so a padded row decodes exactly like the same row unpadded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .transformer import ModelOutput, unique_parameter_count


class RecurrentState:
    """Fixed-size decode state of a recurrent/feed-forward LM; stands where a KVCache would.

    ``tensors`` all have the batch as dim 0. ``length`` counts the tokens consumed (the engine's
    context budget), ``max_len`` is the budget the engine asked for.
    """

    has_padding = False

    def __init__(self, tensors: dict[str, torch.Tensor], max_len: int):
        self.tensors = tensors
        self.max_len = max_len
        self.length = 0

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"decode state full: {self.length} consumed + {new_tokens} new tokens > "
                             f"max_len={self.max_len}; create it with a larger max_len (model.new_kv_cache)")

    def reorder(self, index: torch.Tensor) -> None:
        """Select/reorder batch rows (beam search keeps the surviving beams)."""
        self.tensors = {k: v.index_select(0, index) for k, v in self.tensors.items()}

    def crop(self, length: int) -> None:
        if length == self.length:
            return
        raise NotImplementedError(
            f"a recurrent decode state cannot be rewound from {self.length} to {length} tokens; speculative "
            "decoding needs a Transformer (KV-cache) target and draft model")


def split_attention_mask(attention_mask: torch.Tensor | None, b: int, t: int, past: int) -> torch.Tensor | None:
    """This call's [B, T] bool mask of real tokens, or None when every token is real."""
    if attention_mask is None:
        return None
    if attention_mask.shape == (b, past + t):
        valid = attention_mask[:, past:].bool()
    elif attention_mask.shape == (b, t):
        valid = attention_mask.bool()
    else:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} matches neither (batch, seq)="
                         f"({b}, {t}) nor (batch, cached+seq)=({b}, {past + t})")
    return None if bool(valid.all()) else valid


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy over targets != -100 (sum / count: a batch with no target gives 0, not NaN)."""
    if targets is None:
        return None
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape {tuple(logits.shape[:2])}")
    flat = targets.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100, reduction="sum")
    return total / (flat != -100).sum().clamp(min=1)


class CausalLMBase(nn.Module):
    """The shared forward of the non-Transformer causal families.

    Subclasses implement ``initial_state(batch, device)`` (a dict of batch-first tensors) and
    ``hidden_and_logits(ids, valid, state) -> (hidden, logits, new_state)``; ``valid`` is None or a
    [B, T] bool mask of real tokens, ``state`` None during training (start from nothing).
    """

    is_causal = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"{type(self).__name__} needs a ModelConfig, got {type(cfg).__name__}")
        self.config = cfg

    def num_params(self, exclude_embeddings: bool = False) -> int:
        total = unique_parameter_count(self)
        if exclude_embeddings:
            total -= self.embed.weight.numel()
        return total

    def new_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> RecurrentState:
        device = device or self.embed.weight.device
        return RecurrentState(self.initial_state(batch_size, torch.device(device)), max_len)

    def attention_flops_per_token(self, seq_len: int) -> float:
        return 0.0  # no attention over the context: the cost per token does not grow with it

    def forward(self, input_ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                kv_cache: RecurrentState | None = None, return_hidden: bool = False,
                fused_loss: bool = False) -> ModelOutput:
        """Same call as ``Transformer.forward``; ``position_ids`` and ``fused_loss`` are accepted and
        unused (these models have no positions; the loss is always the plain one)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        past = 0
        state = None
        if kv_cache is not None:
            if not isinstance(kv_cache, RecurrentState):
                raise TypeError(f"{type(self).__name__} decodes with the state from its own new_kv_cache(), "
                                f"got {type(kv_cache).__name__}")
            kv_cache.check_room(t)
            if kv_cache.batch_size != b:
                raise ValueError(f"decode state was made for batch {kv_cache.batch_size}, input has batch {b}")
            past, state = kv_cache.length, kv_cache.tensors
        valid = split_attention_mask(attention_mask, b, t, past)
        hidden, logits, new_state = self.hidden_and_logits(input_ids, valid, state)
        if kv_cache is not None:
            kv_cache.tensors = new_state
            kv_cache.length += t
        return ModelOutput(logits=logits, loss=lm_loss(logits, targets),
                           hidden=hidden if return_hidden else None,
                           aux_loss=torch.zeros((), device=input_ids.device))


class FeedForwardLM(CausalLMBase):
    """Bengio et al. 2003: y = b + W x + U tanh(d + H x), x = the embeddings of the last n-1 tokens.

    The context before the first token is a learned "nothing yet" embedding (one extra row), so the
    model scores every position of a window, like the other families. ``ffn_hidden`` is the tanh
    layer's width, ``d_model`` the embedding size, ``ffnn_direct`` adds W x.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        n, d = cfg.ffnn_context, cfg.d_model
        self.null_id = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size + 1, d)
        self.hidden = nn.Linear(n * d, cfg.ffn_hidden)  # H, d
        self.output = nn.Linear(cfg.ffn_hidden, cfg.vocab_size)  # U, b
        self.direct = nn.Linear(n * d, cfg.vocab_size, bias=False) if cfg.ffnn_direct else None  # W
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.embed.weight, 0.0, cfg.init_std)
        for lin in (self.hidden, self.output, self.direct):
            if lin is not None:
                nn.init.normal_(lin.weight, 0.0, cfg.init_std)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def initial_state(self, batch: int, device) -> dict[str, torch.Tensor]:
        return {"history": torch.full((batch, self.config.ffnn_context), self.null_id, dtype=torch.long,
                                      device=device)}

    def hidden_and_logits(self, ids, valid, state):
        n = self.config.ffnn_context
        b, t = ids.shape
        if valid is not None:
            ids = ids.masked_fill(~valid, self.null_id)  # padding is "nothing yet"
        history = state["history"] if state is not None else self.initial_state(b, ids.device)["history"]
        full = torch.cat([history, ids], dim=1)  # [B, n + T]
        windows = full.unfold(1, n, 1)[:, 1:]  # [B, T, n]: the n tokens ending at each position
        x = self.dropout(self.embed(windows).flatten(2))  # [B, T, n*d]
        h = torch.tanh(self.hidden(x))
        logits = self.output(self.dropout(h))
        if self.direct is not None:
            logits = logits + self.direct(x)
        return h, logits, {"history": full[:, -n:]}


class LSTMLM(CausalLMBase):
    """An LSTM language model (Hochreiter & Schmidhuber 1997; Zaremba et al. 2014 dropout between
    layers): embedding -> n_layers LSTM of width d_model -> linear head (tied to the embedding
    when ``tie_embeddings``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.lstm = nn.LSTM(d, d, num_layers=cfg.n_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, 0.0, cfg.init_std)
        nn.init.normal_(self.lm_head.weight, 0.0, cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def initial_state(self, batch: int, device) -> dict[str, torch.Tensor]:
        shape = (batch, self.config.n_layers, self.config.d_model)
        dtype = self.embed.weight.dtype
        return {"h": torch.zeros(shape, device=device, dtype=dtype), "c": torch.zeros(shape, device=device, dtype=dtype)}

    def hidden_and_logits(self, ids, valid, state):
        x = self.dropout(self.embed(ids))
        hc = None
        if state is not None:
            hc = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
        if valid is None:
            y, (h, c) = self.lstm(x, hc)
        else:
            # left padding: step by step, a padded step keeps the previous state (a prompt prefill only)
            if hc is None:
                st = self.initial_state(ids.shape[0], ids.device)
                hc = (st["h"].transpose(0, 1).contiguous(), st["c"].transpose(0, 1).contiguous())
            h, c = hc
            outs = []
            for i in range(ids.shape[1]):
                yi, (hi, ci) = self.lstm(x[:, i:i + 1], (h, c))
                keep = valid[:, i].view(1, -1, 1)
                h, c = torch.where(keep, hi, h), torch.where(keep, ci, c)
                outs.append(yi)
            y = torch.cat(outs, dim=1)
        y = self.dropout(y)
        return y, self.lm_head(y), {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}


class BiLSTMLM(LSTMLM):
    """ELMo's bidirectional LM (Peters et al. 2018): a forward LSTM LM and a backward one (predicting
    the previous token from the tokens to its right) sharing the embedding and the softmax. Training
    minimises the mean of both directions' losses; decoding uses the forward half, so the engine and
    the pretrain stage serve it like the LSTM; ``contextual_embeddings`` gives the ELMo features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.backward_lstm = nn.LSTM(d, d, num_layers=cfg.n_layers, batch_first=True,
                                     dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)

    def _backward_states(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, T, D]: at t, the backward LSTM's summary of tokens t..end (right padding respected)."""
        b, t = ids.shape
        lengths = (attention_mask.long().sum(1) if attention_mask is not None
                   else torch.full((b,), t, device=ids.device))
        pos = torch.arange(t, device=ids.device)[None].expand(b, t)
        # reverse each row's real tokens in place; padding stays at the end
        flip = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
        x = self.dropout(self.embed(ids.gather(1, flip)))
        y, _ = self.backward_lstm(x)
        return y.gather(1, flip[..., None].expand_as(y))

    def forward(self, input_ids: torch.Tensor, *, targets: torch.Tensor | None = None, **kwargs) -> ModelOutput:
        out = super().forward(input_ids, targets=targets, **kwargs)
        if targets is None or kwargs.get("kv_cache") is not None:
            return out
        # the backward LM at t predicts the token before t (targets hold the next tokens, so the
        # previous token of position t is input_ids[t-1]; nothing precedes position 0)
        previous = torch.cat([torch.full_like(input_ids[:, :1], -100), input_ids[:, :-1]], dim=1)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            previous = previous.masked_fill(~mask.bool(), -100)
        back_logits = self.lm_head(self.dropout(self._backward_states(input_ids, mask)))
        out.loss = 0.5 * (out.loss + lm_loss(back_logits, previous))
        return out

    def contextual_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                              ) -> torch.Tensor:
        """[B, T, 2D]: the top forward state (tokens up to t) next to the top backward state (t to the end)."""
        forward_states = self.hidden_and_logits(input_ids, None, None)[0]
        return torch.cat([forward_states, self._backward_states(input_ids, attention_mask)], dim=-1)

    def static_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, D]: ELMo's layer 0, the context-free token embeddings (the probe's baseline)."""
        return self.embed(input_ids)
