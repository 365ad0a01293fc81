"""save_pretrained / load_pretrained: model.safetensors + config.json, written atomically, never pickled."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from lmstack.runs import atomic_write_bytes, atomic_write_json, read_json

from .config import ModelConfig
from .transformer import Transformer

class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or for another model."""


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.load_file`` with one clear line for a damaged file instead of a Rust traceback."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file missing")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # SafetensorError is not a subclass of anything more specific
        raise CheckpointError(f"{path}: unreadable safetensors file, truncated or corrupt "
                              f"({path.stat().st_size:,} bytes; {e}); re-run the stage that wrote it") from None


FORMAT = "lmstack-transformer"
FORMAT_VERSION = 1


def model_state_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head copy (safetensors refuses shared storage)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_pretrained(model: Transformer, directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Weights first, config second: a directory whose config.json exists always has its weights.
    atomic_write_bytes(directory / "model.safetensors",
                       save(model_state_for_saving(model), metadata={"format": "pt", "lmstack": FORMAT}))
    atomic_write_json(directory / "config.json",
                      {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_dict(),
                       "num_params": model.num_params()})
    return directory


def load_config(directory: str | os.PathLike) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a directory written by save_pretrained")
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        hint = " (it looks like a Hugging Face model: use lmstack.model.hf.import_hf)" if "model_type" in meta else ""
        raise ValueError(f"{path}: not an lmstack model config (format={meta.get('format')!r}){hint}")
    if "model" not in meta:
        raise ValueError(f"{path}: field 'model' missing")
    return ModelConfig.from_dict(meta["model"], where=f"{path} model")


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    directory = Path(directory)
    cfg = load_config(directory)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights file missing (config.json is there)")
    state = read_safetensors(weights, device)
    from .factory import build_model
    model = build_model(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in model.state_dict():
        state.setdefault("lm_head.weight", state.get("embed.weight"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: does not match config.json; missing tensors {missing[:5]}, "
                         f"unexpected tensors {unexpected[:5]}")
    return model.to(device)
