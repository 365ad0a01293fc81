"""Optimizers: AdamW with decay / no-decay parameter groups, and Muon for hidden matrices.

Weight decay applies to matrices (ndim >= 2) only; biases, norm gains and other vectors are
not decayed, since shrinking them towards 0 only fights the normalisation (as in GPT-2/nanoGPT).

Muon (Keller Jordan 2024, "Muon: MomentUm Orthogonalized by Newton-schulz") replaces the
update of each 2-D hidden weight matrix by the orthogonalised Nesterov momentum. Embeddings,
the output head and all vectors stay on AdamW, as the Muon authors recommend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn

OptimizerName = Literal["adamw", "muon", "adamw8bit"]
OPTIMIZERS = get_args(OptimizerName)


@dataclass
class OptimConfig:
    name: OptimizerName = "adamw"     # muon: Muon for hidden matrices + AdamW for the rest; adamw8bit: 8-bit moments
    lr: float = 3e-3                  # AdamW learning rate (peak)
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    muon_lr: float = 0.02             # Muon learning rate (peak); scaled by the same schedule
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5
    muon_momentum_warmup_steps: int = 0  # > 0: momentum rises linearly from muon_momentum_start (modded-nanogpt)
    muon_momentum_start: float = 0.85
    block_size: int = 2048            # adamw8bit: elements per quantization block (Dettmers et al. 2021)


def is_embedding_or_head(name: str, module_by_param: dict[str, nn.Module], p: torch.Tensor,
                         vocab_size: int | None) -> bool:
    if isinstance(module_by_param.get(name), nn.Embedding):
        return True
    leaf = name.rsplit(".", 1)[0] if "." in name else name
    if any(tag in leaf.split(".")[-1] for tag in ("lm_head", "head", "wte", "wpe", "embed")):
        return True
    return vocab_size is not None and p.ndim == 2 and p.shape[0] == vocab_size


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into groups; each group carries a ``kind`` ("adamw" or "muon")."""
    module_by_param: dict[str, nn.Module] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            module_by_param[f"{mod_name}.{p_name}" if mod_name else p_name] = module
    vocab_size = getattr(getattr(model, "cfg", None), "vocab_size", None) or getattr(
        getattr(model, "config", None), "vocab_size", None)
    decay, no_decay, muon = [], [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        if p.ndim >= 2:
            if cfg.name == "muon" and p.ndim == 2 and not is_embedding_or_head(name, module_by_param, p, vocab_size):
                muon.append(p)
            else:
                decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "kind": "adamw", "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "kind": "adamw", "name": "no_decay"},
    ]
    if cfg.name == "muon":
        groups.append({"params": muon, "weight_decay": cfg.weight_decay, "kind": "muon", "name": "muon"})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if len(cfg.betas) != 2:
        raise ValueError(f"optimizer betas must be two numbers, got {cfg.betas}")
    groups = param_groups(model, cfg)
    for g in groups:
        g["base_lr"] = cfg.muon_lr if g["kind"] == "muon" else cfg.lr
        g["lr"] = g["base_lr"]
    if cfg.name == "adamw":
        # foreach is deterministic on CPU and faster than the per-tensor loop.
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=True)
    if cfg.name == "adamw8bit":
        from lmstack.train.optim8bit import AdamW8bit
        return AdamW8bit(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, block_size=cfg.block_size)
    return MuonWithAdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps,
                         momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps)


@torch.no_grad()
def newton_schulz_orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate U V^T of g = U S V^T with the quintic Newton-Schulz iteration (Jordan 2024).

    The coefficients (3.4445, -4.7750, 2.0315) push all singular values into ~[0.7, 1.2] in 5
    steps; exact orthogonality is not needed for a good update direction. ``g`` may carry leading
    batch dimensions ``[..., m, n]``: each matrix is orthogonalised on its own, in one batched
    matmul per iteration (how the optimizer treats all same-shape matrices of a model at once).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    # bf16 is what the reference uses on GPU; on CPU float32 matmuls are faster than bf16 ones.
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object over groups of two kinds, so that checkpointing and LR scheduling
    treat it like any torch optimizer: ``kind="muon"`` groups get Muon, the rest AdamW."""

    def __init__(self, param_groups: list[dict], *, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5):
        defaults = dict(lr=1e-3, betas=betas, eps=eps, weight_decay=0.0, momentum=momentum,
                        ns_steps=ns_steps, kind="adamw")
        super().__init__(param_groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu)  # Nesterov momentum
            by_shape.setdefault(tuple(p.shape), []).append((p, update))
        # Same-shape matrices (q/k/v/o, the MLP's of every layer) are orthogonalised together:
        # one batched matmul per Newton-Schulz iteration instead of one small matmul per matrix.
        for shape, items in by_shape.items():
            params = [p for p, _ in items]
            ortho = newton_schulz_orthogonalize(torch.stack([u for _, u in items]), steps=group["ns_steps"])
            # Scale so the update RMS does not depend on the matrix aspect ratio (Jordan 2024).
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        # Decoupled weight decay Adam (Loshchilov & Hutter 2019).
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1.0 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
            bias1 = 1.0 - beta1 ** t
            bias2 = 1.0 - beta2 ** t
            denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(eps)
            if wd:
                p.mul_(1.0 - lr * wd)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def muon_momentum(step: int, cfg: OptimConfig) -> float:
    """Muon momentum at update ``step``: a low momentum while the early gradients change fast,
    then the configured one (modded-nanogpt's 0.85 -> 0.95 over the first 300 steps)."""
    if cfg.muon_momentum_warmup_steps <= 0 or step >= cfg.muon_momentum_warmup_steps:
        return cfg.muon_momentum
    frac = step / cfg.muon_momentum_warmup_steps
    return cfg.muon_momentum_start + frac * (cfg.muon_momentum - cfg.muon_momentum_start)


def set_muon_momentum(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig) -> None:
    if cfg.muon_momentum_warmup_steps <= 0:
        return
    for g in optimizer.param_groups:
        if g.get("kind") == "muon":
            g["momentum"] = muon_momentum(step, cfg)


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Set each group's LR to its ``base_lr`` times ``multiplier`` (schedule x anomaly back-off)."""
    for g in optimizer.param_groups:
        g["lr"] = g.get("base_lr", g["lr"]) * multiplier
