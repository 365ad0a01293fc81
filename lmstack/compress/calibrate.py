"""Calibration: statistics of each linear layer's inputs, gathered block by block.

GPTQ, SparseGPT, AWQ, SmoothQuant and Wanda all need the inputs a layer sees. They are gathered
"sequentially" (as in the GPTQ and SparseGPT papers): the layers are compressed in forward order,
and each group of layers that reads the same input (q/k/v; o; gate/up; down) is calibrated on
inputs produced by the already-compressed layers before it, so later layers also correct for the
errors of earlier ones. A forward pass stops right after the group of interest.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .gptq import HessianAccumulator

# Linears that read the same tensor: compressed together, after everything that feeds them.
_SHARED_INPUT = [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("up_proj",), ("down_proj",)]


class _StopForward(Exception):
    pass


def calibration_batch(tokens: np.ndarray, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_samples`` random windows of ``seq_len`` tokens from a token shard: [n, seq_len] int64."""
    if n_samples <= 0 or seq_len <= 0:
        raise ValueError(f"calibration needs n_samples > 0 and seq_len > 0, got {n_samples}, {seq_len}")
    if len(tokens) < seq_len + 1:
        raise ValueError(f"calibration shard has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seq_len, size=n_samples)
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int64) for s in starts]))


def layer_groups(model: nn.Module, names: Iterable[str]) -> list[list[str]]:
    """Target linear names grouped by shared input, in forward order (block by block)."""
    names = list(names)
    by_block: dict[str, list[str]] = {}
    for n in names:
        m = re.match(r"(layers\.\d+)\.", n)
        by_block.setdefault(m.group(1) if m else "", []).append(n)
    groups = []
    for block, members in by_block.items():
        rest = list(members)
        for suffixes in _SHARED_INPUT:
            g = [n for n in rest if n.rsplit(".", 1)[-1] in suffixes]
            if g:
                groups.append(g)
                rest = [n for n in rest if n not in g]
        groups += [[n] for n in rest]
    # layers outside the blocks (e.g. lm_head) come last
    return sorted(groups, key=lambda g: (0, int(g[0].split(".")[1])) if g[0].startswith("layers.") else (1, 0))


def collect_inputs(model: nn.Module, names: list[str], calib: torch.Tensor, *, batch_size: int = 8,
                   keep_rows: int = 0) -> dict[str, tuple[HessianAccumulator, torch.Tensor | None]]:
    """Run the calibration tokens through ``model`` until every module in ``names`` has seen its
    input; returns {name: (accumulator, about ``keep_rows`` input rows sampled evenly or None)}."""
    modules = dict(model.named_modules())
    stats: dict[str, HessianAccumulator] = {}
    kept: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    last = names[-1]
    n_batches = -(-calib.shape[0] // batch_size)
    per_batch = -(-keep_rows // n_batches) if keep_rows else 0

    def hook_for(name: str) -> Callable:
        def hook(module, args, output):
            x = args[0].detach()
            acc = stats.get(name)
            if acc is None:
                acc = stats[name] = HessianAccumulator(x.shape[-1], device=x.device)
            acc.add(x)
            if keep_rows:
                # an even share from every batch, spread over its rows, so the sample covers all sequences
                rows = x.reshape(-1, x.shape[-1])
                step = max(1, rows.shape[0] // per_batch)
                kept[name].append(rows[::step][:per_batch].float().clone())
            if name == last:
                raise _StopForward
        return hook

    for n in names:
        handles.append(modules[n].register_forward_hook(hook_for(n)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, calib.shape[0], batch_size):
                try:
                    model(calib[i:i + batch_size].to(_device_of(model)))
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in stats]
    if missing:
        raise RuntimeError(f"calibration: modules {missing} never ran in the forward pass")
    return {n: (stats[n], torch.cat(kept[n]) if keep_rows else None) for n in names}


def record_module_calls(model: nn.Module, module_name: str, calib: torch.Tensor, n_windows: int,
                        batch_size: int = 8) -> list[tuple[tuple, dict]]:
    """The positional and keyword arguments of ``module_name``'s calls on the first ``n_windows``
    calibration windows (one call per batch), each forward pass stopped right there. Replaying
    them gives the module's output on real inputs, with everything before it as it is now."""
    module = dict(model.named_modules())[module_name]
    calls: list[tuple[tuple, dict]] = []

    def detach(v):
        return v.detach().clone() if isinstance(v, torch.Tensor) else (
            tuple(detach(e) for e in v) if isinstance(v, tuple) else v)

    def hook(mod, args, kwargs):
        calls.append((tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()}))
        raise _StopForward

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, min(n_windows, calib.shape[0]), batch_size):
                try:
                    model(calib[i:min(i + batch_size, n_windows)].to(_device_of(model)))
                except _StopForward:
                    pass
    finally:
        handle.remove()
        model.train(was_training)
    return calls


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


__all__ = ["calibration_batch", "layer_groups", "collect_inputs", "record_module_calls"]
