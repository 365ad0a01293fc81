"""Vision Transformer (Dosovitskiy et al. 2021) and a small text encoder, both built from lmstack's own
transformer ``Block`` run without a causal mask.

The image is cut into non-overlapping P x P patches by a convolution whose kernel and stride are both
P (one linear map per patch), a learned class token is prepended, learned position embeddings are
added, and pre-norm encoder blocks mix the tokens. ``hidden[:, 0]`` (the class token) summarises the
image; ``hidden[:, 1:]`` are the patch features a language model reads through a projector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lmstack.model import Block, ModelConfig
from lmstack.model.transformer import make_norm


@dataclass
class EncoderConfig:
    """Sizes of a bidirectional encoder (the ViT or the text encoder)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_hidden: int = 0  # 0 = 4 * d_model
    dropout: float = 0.0
    # ViT only
    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    # text encoder only
    vocab_size: int = 512
    max_len: int = 48

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"EncoderConfig: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}; patches must tile the image")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_config(self, seq_len: int) -> ModelConfig:
        """The lmstack ModelConfig whose Blocks form this encoder (ViT style: LayerNorm, GELU, biases,
        MHA; positions are added to the input, so the blocks use none)."""
        return ModelConfig(vocab_size=1, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                           n_kv_heads=0, max_seq_len=seq_len, ffn_type="gelu", ffn_hidden=self.ffn_hidden,
                           norm_type="layernorm", norm_bias=True, bias=True, position_type="none",
                           dropout=self.dropout, tie_embeddings=False)

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbedding(nn.Module):
    """[B, C, H, W] -> [B, N, D]: a Conv2d with kernel = stride = patch size, i.e. one shared linear map
    applied to every flattened patch."""

    def __init__(self, channels: int, patch_size: int, d_model: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be [batch, channels, height, width], got shape {tuple(images.shape)}")
        return self.proj(images).flatten(2).transpose(1, 2)


def encode_blocks(blocks: nn.ModuleList, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Run lmstack Blocks bidirectionally: no causal mask, only padded keys hidden."""
    mask = None if key_valid is None else key_valid[:, None, None, :].bool()
    for block in blocks:
        x, _ = block(x, None, mask, False, None)
    return x


class VisionTransformer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        block_cfg = cfg.block_config(cfg.n_patches + 1)
        self.patch_embed = PatchEmbedding(cfg.channels, cfg.patch_size, cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.n_patches + 1, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(block_cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(block_cfg, cfg.d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> hidden [B, 1 + N, D] (class token first)."""
        cfg = self.config
        if images.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"ViT expects {cfg.image_size}x{cfg.image_size} images, got "
                             f"{tuple(images.shape[-2:])}; resize them or change image_size")
        patches = self.patch_embed(images)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        return self.norm(encode_blocks(self.blocks, x))


class TextEncoder(nn.Module):
    """Token + learned position embeddings, bidirectional lmstack Blocks, and a mean over real tokens."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        block_cfg = cfg.block_config(cfg.max_len)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.max_len, cfg.d_model)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        nn.init.normal_(self.pos_embed.weight, 0.0, 0.02)
        self.blocks = nn.ModuleList(Block(block_cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(block_cfg, cfg.d_model)

    def forward(self, ids: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """ids, key_valid [B, T] -> pooled [B, D]."""
        t = ids.shape[1]
        if t > self.config.max_len:
            raise ValueError(f"text of {t} tokens is longer than the text encoder's max_len={self.config.max_len}")
        x = self.embed(ids) + self.pos_embed(torch.arange(t, device=ids.device))[None]
        h = self.norm(encode_blocks(self.blocks, x, key_valid))
        w = key_valid.to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp(min=1)
