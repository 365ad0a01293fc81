"""Shared plumbing of the alignment stages: loading run-dir artifacts, LoRA attachment, log-probs,
the optimizer step, checkpoint writing and generation-based evaluation. (Tables and plots: lmstack.report.)"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.align.lora import LoRAAdapterConfig, apply_lora, count_parameters, merge_lora, save_adapter
from lmstack.runs import atomic_write_json, iter_jsonl
from lmstack.train.optim import OptimConfig, build_optimizer, set_lr
from lmstack.train.schedule import ScheduleConfig, schedule_multiplier

# ----------------------------------------------------------------------------- run-dir inputs


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(run_path: Path):
    from lmstack.tokenizer import Tokenizer

    path = run_path / "tokenizer" / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer missing (run the tokenizer stage first)")
    return Tokenizer.load(path)


def checkpoint_dir(run_path: Path, stage: str) -> Path:
    return run_path / "checkpoints" / stage


def load_model(run_path: Path, stage: str, device: str, *, needed_by: str) -> nn.Module:
    from lmstack.model import load_pretrained

    d = checkpoint_dir(run_path, stage)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d}: no model checkpoint; stage {needed_by!r} needs the {stage!r} stage to run first")
    return load_pretrained(d, device=device)


def start_stage(ctx, cfg, stage: str):
    """What every alignment stage does first: check its ``[stage.lora]`` table, seed the RNGs, and
    load the run's tokenizer and the ``cfg.init_from`` checkpoint. Returns (tokenizer, model)."""
    cfg.lora.validate(f"{stage}.lora")
    set_seed(ctx.seed)
    tokenizer = load_tokenizer(ctx.run.path)
    return tokenizer, load_model(ctx.run.path, cfg.init_from, ctx.device, needed_by=stage)


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with no trainable parameters: the reference policy of DPO and PPO."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def world_file(run_path: Path, name: str) -> Path:
    p = run_path / "data" / "world" / name
    if not p.exists():
        raise FileNotFoundError(f"{p}: missing (the data stage writes the world's SFT/preference/eval sets)")
    return p


def read_jsonl(path: Path) -> list[dict]:
    return [value for _, value in iter_jsonl(path)]


def model_max_len(model: nn.Module) -> int:
    return int(model.config.max_seq_len)


# ----------------------------------------------------------------------------- LoRA per stage


def attach_lora(model: nn.Module, cfg: LoRAAdapterConfig, log: Callable[[str], None]) -> dict:
    """Apply LoRA (or QLoRA) per the stage's ``lora`` table; returns parameter-count metrics."""
    if not cfg.enabled:
        trainable, total = count_parameters(model)
        return {"trainable_params": trainable, "total_params": total}
    targets = apply_lora(model, cfg)
    trainable, total = count_parameters(model)
    log(f"{'QLoRA' if cfg.qlora else 'LoRA'} r={cfg.r} alpha={cfg.alpha} on {len(targets)} modules: "
        f"{trainable:,} trainable of {total:,} params ({100 * trainable / total:.2f}%)")
    return {"trainable_params": trainable, "total_params": total, "lora_modules": len(targets)}


def save_finetuned(model: nn.Module, out_dir: Path, lora_cfg: LoRAAdapterConfig | None, extra_state: dict,
                   base_checkpoint: str) -> dict[str, str]:
    """Write ``out_dir/model.safetensors + config.json`` (a plain, merged model any later stage can
    load) and, for LoRA, the adapter alone in ``out_dir/adapter``. Returns artifact paths."""
    from lmstack.model import save_pretrained

    artifacts = {}
    if lora_cfg is not None and lora_cfg.enabled:
        save_adapter(model, out_dir / "adapter", base_model_name_or_path=base_checkpoint)
        artifacts["adapter"] = str(out_dir / "adapter")
        merged = merge_lora(copy.deepcopy(model), dequantize=True)
    else:
        merged = model
    save_pretrained(merged, out_dir)
    atomic_write_json(out_dir / "trainer_state.json", extra_state)
    artifacts["model"] = str(out_dir)
    return artifacts


# ----------------------------------------------------------------------------- log-probs


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position; targets of -100 give 0."""
    safe = targets.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * (targets != -100)


def completion_logps(model: nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                     return_hidden: bool = False):
    """Per-token log-probs of the completion tokens under ``model`` for right-padded sequences.

    Returns (sum over completion [B], per-token [B, T-1] (0 off the completion), mask [B, T-1],
    hidden [B, T-1, D] or None). Right padding needs no attention mask: causal attention never lets
    a real token see the padding that follows it.
    """
    out = model(input_ids[:, :-1], return_hidden=return_hidden)
    mask = completion_mask[:, 1:].to(torch.float32)
    targets = input_ids[:, 1:].masked_fill(mask == 0, -100)
    per_token = token_logps(out.logits, targets)
    return per_token.sum(dim=1), per_token, mask, out.hidden


def sft_loss(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean CE over assistant tokens (targets != -100). Returns (loss, number of target tokens)."""
    out = model(input_ids)
    n = int((targets != -100).sum())
    loss = F.cross_entropy(out.logits.float().reshape(-1, out.logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    if out.aux_loss is not None and torch.is_tensor(out.aux_loss):
        loss = loss + out.aux_loss
    return loss, n


def replay_loader(run_path: Path, batch_size: int, seq_len: int, seed: int):
    """Windows of the pretraining corpus (the tokenizer stage's ``shards/train.bin``) to replay during
    fine-tuning, or None when ``batch_size`` is 0."""
    from lmstack.data.shards import read_tokens
    from lmstack.train.loader import TokenLoader

    if batch_size <= 0:
        return None
    path = run_path / "shards" / "train.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; replay_batch_size > 0 needs the tokenizer stage's shards "
                                "(or set replay_batch_size = 0)")
    return TokenLoader(read_tokens(path), batch_size=batch_size, seq_len=seq_len, seed=seed + 7, name=str(path))


def replay_note(cfg) -> str:
    """How a report names the replay term of an SFT or DPO config ("" when it is off)."""
    return (f", plus {cfg.replay_weight:g} x LM loss on {cfg.replay_batch_size} pretraining windows per step (replay)"
            if cfg.replay_batch_size else "")


def replay_loss(model: nn.Module, replay, device) -> torch.Tensor:
    """Next-token loss on the next batch of pretraining windows from ``replay_loader``."""
    window = replay.next_batch()
    return sft_loss(model, window.inputs.to(device), window.targets.to(device))[0]


# ----------------------------------------------------------------------------- optimisation


def finetune_optim(lr: float) -> OptimConfig:
    """The alignment stages' default optimizer: AdamW without weight decay."""
    return OptimConfig(name="adamw", lr=lr, weight_decay=0.0)


def finetune_schedule(warmup_steps: int = 10, kind: str = "cosine") -> ScheduleConfig:
    return ScheduleConfig(kind=kind, warmup_steps=warmup_steps, min_lr_ratio=0.1)


def build_optimizer_for(model: nn.Module, optim: OptimConfig, lr: float | None = None):
    """The stage's optimizer over the trainable parameters; ``lr`` (LoRA's own rate) overrides optim.lr."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no trainable parameters (LoRA matched nothing, or everything is frozen)")
    return build_optimizer(model, dataclasses.replace(optim, lr=lr or optim.lr))


def lr_multiplier(step: int, total: int, schedule: ScheduleConfig) -> float:
    # a short run may be shorter than the warmup: warm up over all but its last step
    warmup = min(schedule.warmup_steps, max(0, total - 1))
    return schedule_multiplier(step, total, dataclasses.replace(schedule, warmup_steps=warmup))


def optimizer_step(model: nn.Module, optimizer, step: int, total: int, schedule: ScheduleConfig,
                   grad_clip: float) -> float:
    """Clip, set the scheduled LR, step, zero grads. Returns the pre-clip gradient norm."""
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    set_lr(optimizer, lr_multiplier(step, total, schedule))
    if torch.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def progress(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, mininterval=1.0)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return time.time() - self.t0


# ----------------------------------------------------------------------------- evaluation


def generation_config(max_new_tokens: int, **kw):
    from lmstack.generate.config import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, strategy=kw.pop("strategy", "greedy"), **kw)


def chat_answers(model: nn.Module, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                 batch_size: int = 32, **generation) -> list[str | None]:
    """Greedy answers through lmstack.generate (the same path the chat CLI and server use); ``generation``
    overrides GenerationConfig fields (e.g. strategy="sample", temperature, seed).
    A conversation whose prompt alone fills the model's context gets None (callers skip and count it)."""
    from lmstack.generate import chat

    limit = model_max_len(model)
    keep = [i for i, c in enumerate(conversations)
            if len(tokenizer.encode_chat(c, add_generation_prompt=True)[0]) < limit - 1]
    out: list[str | None] = [None] * len(conversations)
    if keep:
        gens = chat(model, tokenizer, [conversations[i] for i in keep], generation_config(max_new_tokens, **generation),
                    batch_size=batch_size)
        for i, g in zip(keep, gens):
            out[i] = g.text.strip()
    return out


def text_answers(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, stop: list[str],
                 batch_size: int = 32) -> list[str | None]:
    from lmstack.generate import generate

    limit = model_max_len(model)
    keep = [i for i, p in enumerate(prompts) if len(tokenizer.encode(p)) + 1 < limit - 1]
    out: list[str | None] = [None] * len(prompts)
    if keep:
        gens = generate(model, tokenizer, [prompts[i] for i in keep], generation_config(max_new_tokens, stop=stop),
                        batch_size=batch_size)
        for i, g in zip(keep, gens):
            out[i] = g.text.strip()
    return out


def rate(flags: Sequence[bool]) -> float:
    return float(sum(flags)) / len(flags) if flags else float("nan")
