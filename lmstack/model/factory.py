"""build_model: the model class for ``ModelConfig.family`` (one place, so nothing else branches on it)."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .families import BiLSTMLM, FeedForwardLM, LSTMLM
from .gla import GLALM
from .mlm import MaskedLM
from .transformer import Transformer

FAMILY_CLASSES: dict[str, type[nn.Module]] = {
    "transformer": Transformer, "ffnn": FeedForwardLM, "lstm": LSTMLM, "bilstm": BiLSTMLM, "gla": GLALM,
    "mlm": MaskedLM,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model for ``cfg.family`` (the pretrain stage, load_pretrained and the benchmarks call this)."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(cfg).__name__}")
    if cfg.family not in FAMILY_CLASSES:
        raise ValueError(f"ModelConfig.family={cfg.family!r}: no model class for it; choose one of {sorted(FAMILY_CLASSES)}")
    return FAMILY_CLASSES[cfg.family](cfg)
