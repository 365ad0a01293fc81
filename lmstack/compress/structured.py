"""Structured pruning: remove whole FFN neurons, attention head groups or blocks -> a smaller dense model.

Unlike unstructured sparsity, the result needs no sparse kernel: it is an ordinary ``Transformer``
with a smaller config (so every layer loses the same number of units; the config has one
``ffn_hidden`` and one head count). Importance is measured on calibration tokens:
- FFN neuron j of a layer: ``mean|h_j| * ||W_down[:, j]||``, the average size of what the neuron
  writes into the residual stream (the structured analogue of Wanda's |W| * ||x||);
- attention head group (one kv head and the query heads that share it, so GQA stays valid):
  the mean norm of that group's contribution through ``o_proj``;
- a block: 1 - cos(residual in, residual out) averaged over tokens ("Block Influence", Men et al.
  2024, arXiv:2403.03853): a block that barely turns the residual stream can go.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

STRUCTURES = ("ffn", "heads", "layers")


def _check_model(model: nn.Module) -> None:
    cfg = model.config
    if cfg.n_experts:
        raise NotImplementedError("structured pruning covers dense models; this one has MoE layers")
    for name, m in model.named_modules():
        if getattr(m, "is_quantized_linear", False) or type(m).__name__ == "LoRALinear":
            raise ValueError(f"structured pruning needs a plain dense model; {name} is {type(m).__name__} "
                             "(prune first, then quantize)")


def _run_with_hooks(model, calib: torch.Tensor, hooks: list[tuple[nn.Module, Callable, bool]], batch_size: int = 8) -> None:
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn, pre in hooks]
    try:
        with torch.no_grad():
            for i in range(0, calib.shape[0], batch_size):
                model(calib[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()


def ffn_neuron_importance(model, calib: torch.Tensor) -> list[torch.Tensor]:
    sums = [None] * len(model.layers)
    counts = [0] * len(model.layers)

    def hook_for(i):
        def hook(module, args):
            h = args[0].detach().reshape(-1, args[0].shape[-1]).abs()
            sums[i] = h.sum(0) if sums[i] is None else sums[i] + h.sum(0)
            counts[i] += h.shape[0]
        return hook

    _run_with_hooks(model, calib, [(blk.ffn.down_proj, hook_for(i), True) for i, blk in enumerate(model.layers)])
    return [(sums[i] / counts[i]) * blk.ffn.down_proj.weight.detach().norm(dim=0) for i, blk in enumerate(model.layers)]


def head_group_importance(model, calib: torch.Tensor) -> list[torch.Tensor]:
    cfg = model.config
    group_width = (cfg.n_heads // cfg.n_kv_heads) * cfg.head_dim
    totals = [torch.zeros(cfg.n_kv_heads) for _ in model.layers]
    counts = [0] * len(model.layers)

    def hook_for(i, o_proj):
        def hook(module, args):
            y = args[0].detach().reshape(-1, args[0].shape[-1])  # [N, H * hd], query heads in kv-group order
            w = o_proj.weight.detach()
            for g in range(cfg.n_kv_heads):
                cols = slice(g * group_width, (g + 1) * group_width)
                totals[i][g] += (y[:, cols] @ w[:, cols].t()).norm(dim=-1).sum()
            counts[i] += y.shape[0]
        return hook

    _run_with_hooks(model, calib, [(blk.attn.o_proj, hook_for(i, blk.attn.o_proj), True) for i, blk in enumerate(model.layers)])
    return [t / counts[i] for i, t in enumerate(totals)]


def block_influence(model, calib: torch.Tensor) -> torch.Tensor:
    totals = torch.zeros(len(model.layers))
    counts = [0]

    def hook_for(i):
        def hook(module, args, output):
            x_in = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            x_out = output[0].detach().reshape(-1, x_in.shape[-1]).float()
            totals[i] += (1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)).sum()
            if i == 0:
                counts[0] += x_in.shape[0]
        return hook

    _run_with_hooks(model, calib, [(blk, hook_for(i), False) for i, blk in enumerate(model.layers)])
    return totals / counts[0]


@torch.no_grad()
def _rebuild(model, new_cfg, layer_map: list[int], ffn_keep: list[torch.Tensor] | None,
             head_keep: list[torch.Tensor] | None):
    """A new Transformer with ``new_cfg``; block k copies old block ``layer_map[k]``, keeping only the
    listed FFN neurons / kv head groups."""
    from lmstack.model import Transformer

    old_cfg = model.config
    new = Transformer(new_cfg).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.")}
    rep, hd = old_cfg.n_heads // old_cfg.n_kv_heads, old_cfg.head_dim
    for k, i in enumerate(layer_map):
        blk = model.layers[i]
        entries = {n: t for n, t in blk.state_dict().items()}
        if ffn_keep is not None:
            keep = ffn_keep[i]
            for n in ("ffn.gate_proj.weight", "ffn.up_proj.weight"):
                if n in entries:
                    entries[n] = entries[n][keep]
            for n in ("ffn.gate_proj.bias", "ffn.up_proj.bias"):
                if n in entries:
                    entries[n] = entries[n][keep]
            entries["ffn.down_proj.weight"] = entries["ffn.down_proj.weight"][:, keep]
        if head_keep is not None:
            groups = head_keep[i]
            q_rows = torch.cat([torch.arange(g * rep * hd, (g + 1) * rep * hd) for g in groups.tolist()])
            kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups.tolist()])
            for n, rows in (("attn.q_proj", q_rows), ("attn.k_proj", kv_rows), ("attn.v_proj", kv_rows)):
                entries[f"{n}.weight"] = entries[f"{n}.weight"][rows]
                if f"{n}.bias" in entries:
                    entries[f"{n}.bias"] = entries[f"{n}.bias"][rows]
            entries["attn.o_proj.weight"] = entries["attn.o_proj.weight"][:, q_rows]
        state.update({f"layers.{k}.{n}": t for n, t in entries.items()})
    missing, unexpected = new.load_state_dict(state, strict=False)
    real_missing = [m for m in missing if not (m == "lm_head.weight" and new_cfg.tie_embeddings)]
    if real_missing or unexpected:
        raise RuntimeError(f"structured pruning: rebuilt model does not match ({real_missing[:3]}, {unexpected[:3]})")
    if new_cfg.tie_embeddings:
        new.lm_head.weight = new.embed.weight
    return new.eval()


def structured_prune(model, calib: torch.Tensor, structure: str, ratio: float,
                     multiple_of: int = 32) -> tuple[nn.Module, dict]:
    """Remove ``ratio`` of the FFN neurons / head groups / blocks with the lowest importance.
    The kept FFN width is rounded to a multiple of ``multiple_of`` (so group-wise quantization
    still divides it). Returns (new smaller model, {"importance": ..., "kept": ...})."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"structured pruning ratio must be in [0, 1), got {ratio}")
    _check_model(model)
    model = model.eval()
    cfg = model.config
    layer_map = list(range(cfg.n_layers))
    if structure == "ffn":
        scores = ffn_neuron_importance(model, calib)
        keep_n = max(1, round(cfg.ffn_hidden * (1 - ratio)))
        if multiple_of > 1 and cfg.ffn_hidden % multiple_of == 0:
            keep_n = max(multiple_of, round(keep_n / multiple_of) * multiple_of)
        keep = [torch.sort(torch.topk(s, keep_n).indices).values for s in scores]
        new = _rebuild(model, cfg.replace(ffn_hidden=keep_n, moe_expert_hidden=keep_n), layer_map, keep, None)
        return new, {"importance": scores, "kept": keep}
    if structure == "heads":
        scores = head_group_importance(model, calib)
        rep = cfg.n_heads // cfg.n_kv_heads
        keep_n = max(1, round(cfg.n_kv_heads * (1 - ratio)))
        keep = [torch.sort(torch.topk(s, keep_n).indices).values for s in scores]
        new_cfg = cfg.replace(n_kv_heads=keep_n, n_heads=keep_n * rep, head_dim=cfg.head_dim)
        return _rebuild(model, new_cfg, layer_map, None, keep), {"importance": scores, "kept": keep}
    scores = block_influence(model, calib)
    keep_n = max(1, round(cfg.n_layers * (1 - ratio)))
    kept = sorted(torch.topk(scores, keep_n).indices.tolist())
    new_cfg = cfg.replace(n_layers=keep_n, attention_pattern=[cfg.layer_attention(i) for i in kept])
    return _rebuild(model, new_cfg, kept, None, None), {"importance": scores, "kept": kept}


__all__ = ["structured_prune", "ffn_neuron_importance", "head_group_importance", "block_influence", "STRUCTURES"]
