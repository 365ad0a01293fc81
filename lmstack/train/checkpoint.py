"""Training checkpoints: safetensors + JSON, written atomically, last good one kept.

Layout of one checkpoint directory ``<ckpt_dir>/step_000120/``::

    model.safetensors + config.json   the weights, via lmstack.model.save_pretrained when available
    optimizer.safetensors             every tensor of the optimizer state, keyed "<param index or name>::<state name>"
    trainer_state.json                step, data position, schedule, anomaly-guard state, RNG states
                                      (base64/lists, never pickle), optimizer hyper-parameters

A checkpoint is first written into a hidden ``.tmp-step_...`` directory and renamed into place
when every file is on disk, so a crash mid-write leaves the previous checkpoint untouched.
Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from lmstack.model.io import CheckpointError, read_safetensors
from lmstack.runs import atomic_write_json, file_sha256, fsync_dir, read_json

STEP_DIR = re.compile(r"^step_(\d{6,})$")


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """All RNG states that influence training, as JSON-safe values."""
    np_state = np.random.get_state()
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "python": _to_jsonable(random.getstate()),
        "numpy": {"kind": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


def _to_jsonable(x):
    return [_to_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------- optimizer state
def optimizer_state_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a torch optimizer state_dict into tensors (for safetensors) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state_dict["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: v for k, v in g.items()} for g in state_dict["param_groups"]]
    for g in groups:
        for k, v in list(g.items()):
            if isinstance(v, tuple):
                g[k] = list(v)
            elif torch.is_tensor(v):
                g[k] = v.item()
    return tensors, {"param_groups": groups, "scalars": scalars}


def _param_key(idx: str):
    # torch optimizers key state by parameter index; distributed full state dicts by parameter name.
    return int(idx) if idx.isdigit() else idx


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        idx, key = name.split("::", 1)
        state.setdefault(_param_key(idx), {})[key] = t
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(_param_key(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------ model I/O
def save_model_weights(model: torch.nn.Module, directory: Path, state_dict: dict | None = None) -> None:
    try:
        from lmstack.model import Transformer, save_pretrained
    except ImportError:
        Transformer = save_pretrained = None
    if Transformer is not None and isinstance(model, Transformer):
        if state_dict is None:
            save_pretrained(model, directory)
            return
        # A gathered (FSDP) state dict: same files as save_pretrained, built from the full tensors.
        from lmstack.model.io import FORMAT, FORMAT_VERSION
        sd = dict(state_dict)
        if model.config.tie_embeddings:
            sd.pop("lm_head.weight", None)
        save_file(_dedup_shared(sd), str(directory / "model.safetensors"))
        atomic_write_json(directory / "config.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                                      "model": model.config.to_dict()})
        return
    sd = state_dict if state_dict is not None else model.state_dict()
    save_file(_dedup_shared(sd), str(directory / "model.safetensors"))


def _dedup_shared(sd: dict) -> dict:
    """safetensors refuses tensors that share memory (tied embeddings); keep the first name."""
    out, seen = {}, {}
    for k, v in sd.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        out[k] = v.detach().cpu().contiguous()
    return out


def load_model_weights(model: torch.nn.Module, directory: Path) -> None:
    sd = read_safetensors(directory / "model.safetensors")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Missing keys are acceptable only when they are tied aliases of a stored tensor.
    own = model.state_dict()
    ptrs = {own[s].data_ptr() for s in sd if s in own}
    really_missing = [k for k in missing if own[k].data_ptr() not in ptrs]
    if really_missing or unexpected:
        raise ValueError(f"{directory}/model.safetensors does not match the model: "
                         f"missing {really_missing[:5]}, unexpected {list(unexpected)[:5]}")


# ----------------------------------------------------------------------- checkpoint dirs
def save_checkpoint(ckpt_dir: str | os.PathLike, *, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, trainer_state: dict, keep: int = 2,
                    model_state_dict: dict | None = None, optimizer_state_dict: dict | None = None) -> Path:
    """Write ``<ckpt_dir>/step_<step>/`` atomically and prune older checkpoints beyond ``keep``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp-step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_weights(model, tmp, model_state_dict)
    state = dict(trainer_state)
    if optimizer is not None or optimizer_state_dict is not None:
        osd = optimizer_state_dict if optimizer_state_dict is not None else optimizer.state_dict()
        tensors, meta = optimizer_state_to_flat(osd)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = meta
    state["step"] = step
    state["rng"] = rng_state()
    # Checksums of the tensor files, so that a resume can tell a damaged checkpoint from a good one.
    state["files"] = {f.name: file_sha256(f) for f in sorted(tmp.glob("*.safetensors"))}
    atomic_write_json(tmp / "trainer_state.json", state)
    for f in tmp.iterdir():  # make every file durable before the directory becomes visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ``.tmp-*`` directories are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        step = checkpoint_step(p)
        complete = p.is_dir() and (p / "trainer_state.json").exists() and (p / "model.safetensors").exists()
        if step is not None and complete:
            found.append((step, p))
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step a ``step_NNNNNN`` checkpoint directory was saved at (None for any other name)."""
    m = STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """The trainer state of a checkpoint whose files all match the checksums it recorded;
    otherwise a :class:`CheckpointError` that names the file and what is wrong."""
    path = Path(path)
    try:
        state = read_json(path / "trainer_state.json")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/trainer_state.json: unreadable ({e})") from None
    for name, digest in state.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{f}: missing")
        if file_sha256(f) != digest:
            raise CheckpointError(f"{f}: sha256 does not match the one recorded when it was written "
                                  f"({f.stat().st_size:,} bytes now): truncated or corrupt")
    return state


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, restore_rng: bool = True) -> dict:
    """Restore model and optimizer in place; return the trainer state (RNG restored if asked).
    Every file is verified before anything is changed."""
    path = Path(path)
    state = verify_checkpoint(path)
    if model is not None:
        load_model_weights(model, path)
    if optimizer is not None and "optimizer" in state:
        tensors = read_safetensors(path / "optimizer.safetensors")
        optimizer.load_state_dict(optimizer_state_from_flat(tensors, state["optimizer"]))
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state
