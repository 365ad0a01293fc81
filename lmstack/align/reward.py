"""Stage ``reward``: a Bradley-Terry reward model on preference pairs.

The transformer's final hidden state at the last real (non-pad) token goes through a scalar head
(InstructGPT, Ouyang et al. 2022, Sec. 3.5). Trained with -log s(r_chosen - r_rejected - margin)
on data/world/prefs_train.jsonl; held-out pairwise accuracy on prefs_eval.jsonl, per category.
Writes checkpoints/reward: the backbone (model.safetensors + config.json, LoRA merged) plus
reward_head.safetensors.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmstack.align import common, rlaif
from lmstack.align.data import (chunks, collate_pairs, length_grouped_batches, load_preferences_jsonl, mismatch_pool,
                                mismatched_pairs, tokenize_pairs, world_extra_pairs)
from lmstack.align.losses import reward_loss
from lmstack.align.lora import LoRAAdapterConfig, apply_lora, count_parameters, merge_lora
from lmstack.report import markdown_table, save_line_plot
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig

HEAD_FILE = "reward_head.safetensors"


class RewardModel(nn.Module):
    """Transformer backbone + linear scalar head read at each sequence's last real token."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        d = backbone.config.d_model
        self.score_head = nn.Linear(d, 1)
        # small init so initial rewards are ~0 and the BT loss starts at log 2
        nn.init.normal_(self.score_head.weight, std=1.0 / math.sqrt(d + 1))
        nn.init.zeros_(self.score_head.bias)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] right-padded, lengths [B] -> scores [B]."""
        out = self.backbone(input_ids, return_hidden=True)
        last = (lengths - 1).clamp(min=0).to(input_ids.device)
        h = out.hidden[torch.arange(input_ids.size(0), device=input_ids.device), last]
        return self.score_head(h.float()).squeeze(-1)


def save_reward_model(rm: RewardModel, directory: Path) -> None:
    from safetensors.torch import save

    from lmstack.model import save_pretrained
    from lmstack.runs import atomic_write_bytes

    from lmstack.align.lora import lora_modules

    backbone = rm.backbone
    if lora_modules(backbone):
        import copy

        backbone = merge_lora(copy.deepcopy(backbone), dequantize=True)
    # head first, backbone (whose config.json marks completeness) last
    atomic_write_bytes(directory / HEAD_FILE, save({k: v.detach().cpu().contiguous() for k, v in rm.score_head.state_dict().items()}))
    save_pretrained(backbone, directory)


def load_reward_model(directory: Path, device: str = "cpu") -> RewardModel:
    from safetensors.torch import load_file

    from lmstack.model import load_pretrained

    head = directory / HEAD_FILE
    if not head.exists():
        raise FileNotFoundError(f"{head}: missing; {directory} is not a reward model (run the reward stage)")
    rm = RewardModel(load_pretrained(directory, device=device))
    rm.score_head.load_state_dict(load_file(str(head), device=str(device)))
    return rm.to(device)


@dataclass
class Config:
    init_from: str = "sft"           # backbone checkpoint (InstructGPT starts the RM from the SFT model)
    train_file: str = ""             # "" = data/world/prefs_train.jsonl
    eval_file: str = ""              # "" = data/world/prefs_eval.jsonl
    labels: str = "world"            # "ai" = train on the rlaif stage's judge labels (rlaif/prefs_train_ai.jsonl)
    steps: int = 80
    batch_size: int = 16             # pairs per step
    max_len: int = 0                 # 0 = model max_seq_len
    margin: float = 0.0              # constant margin m in -log s(r_w - r_l - m); a record's "margin" field overrides it
    center_coef: float = 0.0         # + c * mean((r_w + r_l)^2) keeps rewards centred
    max_train_pairs: int = 0
    # + this many pairs whose rejected answer is a good answer to another kind of request (data.mismatched_pairs):
    # teaches the RM to read the prompt, so PPO cannot score by answering a different question
    mismatched_pairs: int = 0
    mismatched_from: str = "prefs"   # "prefs" = the training pairs; "sft" = data/world/sft_train.jsonl (multi-turn too)
    # + pairs built from the run's world, as dpo's (align.data.world_extra_pairs): the world's pairs never reject an
    # "I don't know", so an RM trained on them alone rewards it as such (`lmstack experiment reward-overoptimisation`)
    pii_pairs: int = 0
    fact_pairs: int = 0
    idk_pairs: int = 0
    eval_pairs: int = 0              # 0 = all
    optim: OptimConfig = field(default_factory=lambda: common.finetune_optim(lr=3e-4))
    schedule: ScheduleConfig = field(default_factory=common.finetune_schedule)
    grad_clip: float = 1.0           # 0 = no clipping
    lora: LoRAAdapterConfig = field(default_factory=LoRAAdapterConfig)
    log_every: int = 10


@torch.no_grad()
def score_pairs(rm: RewardModel, pairs, pad_id: int, device: str, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    rm.eval()
    chosen, rejected = [], []
    for part in chunks(pairs, batch_size):
        b = collate_pairs(part, pad_id)
        s = rm(b["input_ids"].to(device), b["lengths"].to(device))
        c, r = s.chunk(2)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    return torch.cat(chosen), torch.cat(rejected)


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult

    run_path = ctx.run.path
    tokenizer, backbone = common.start_stage(ctx, cfg, "reward")
    max_len = cfg.max_len or common.model_max_len(backbone)
    rm = RewardModel(backbone).to(ctx.device)
    if cfg.lora.enabled:
        apply_lora(rm.backbone, cfg.lora)
        for p in rm.score_head.parameters():
            p.requires_grad_(True)
    trainable, total = count_parameters(rm)

    train_path = rlaif.preference_train_path(run_path, cfg.train_file, cfg.labels)
    eval_path = Path(cfg.eval_file) if cfg.eval_file else common.world_file(run_path, "prefs_eval.jsonl")
    raw_train = load_preferences_jsonl(train_path, cfg.max_train_pairs or None)
    raw_train += world_extra_pairs(run_path, cfg.pii_pairs, cfg.fact_pairs, cfg.idk_pairs)
    raw_train += mismatched_pairs(mismatch_pool(raw_train, run_path, cfg.mismatched_from), cfg.mismatched_pairs,
                                  seed=ctx.seed)
    train_pairs, dropped = tokenize_pairs(raw_train, tokenizer, max_len, ctx.log, train_path.name)
    eval_raw = load_preferences_jsonl(eval_path)
    eval_pairs, eval_dropped = tokenize_pairs(eval_raw if not cfg.eval_pairs else eval_raw[: cfg.eval_pairs], tokenizer, max_len, ctx.log, eval_path.name)

    c0, r0 = score_pairs(rm, eval_pairs, tokenizer.pad_id, ctx.device)
    acc_before = float((c0 > r0).float().mean())

    optimizer = common.build_optimizer_for(rm, cfg.optim)
    stream = length_grouped_batches(train_pairs, [max(len(p.chosen_ids), len(p.rejected_ids)) for p in train_pairs],
                                    cfg.batch_size, seed=ctx.seed)
    history, accs = [], []
    timer = common.Timer()
    rm.train()
    for step in common.progress(range(cfg.steps), cfg.steps, "reward"):
        part = next(stream)
        b = collate_pairs(part, tokenizer.pad_id)
        scores = rm(b["input_ids"].to(ctx.device), b["lengths"].to(ctx.device))
        chosen, rejected = scores.chunk(2)
        margins = torch.tensor([float(p.meta.get("margin", cfg.margin)) for p in part], device=ctx.device)
        loss = reward_loss(chosen, rejected, margins if bool(margins.any()) else None, cfg.center_coef)
        loss.backward()
        grad_norm = common.optimizer_step(rm, optimizer, step, cfg.steps, cfg.schedule, cfg.grad_clip)
        history.append(float(loss.detach()))
        accs.append(float((chosen > rejected).float().mean()))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            ctx.run.append_metrics({"stage": "reward", "step": step, "loss": float(loss.detach()), "train_acc": accs[-1],
                                    "grad_norm": grad_norm})
    seconds = timer.seconds

    c1, r1 = score_pairs(rm, eval_pairs, tokenizer.pad_id, ctx.device)
    correct = (c1 > r1)
    per_cat: dict[str, list[bool]] = defaultdict(list)
    for p, ok in zip(eval_pairs, correct.tolist()):
        per_cat[str(p.meta.get("category", "all"))].append(ok)

    out_dir = common.checkpoint_dir(run_path, "reward")
    save_reward_model(rm, out_dir)
    common.atomic_write_json(out_dir / "trainer_state.json", {"stage": "reward", "steps": cfg.steps, "init_from": cfg.init_from})

    xs = list(range(len(history)))
    plot = "plots/reward_loss.png"
    save_line_plot(run_path / plot, {"BT loss": (xs, history)}, "reward model training", "step", "loss",
                   secondary={"train pair accuracy": (xs, accs)}, secondary_label="accuracy")
    acc = float(correct.float().mean())
    metrics = {"eval_accuracy": acc, "eval_accuracy_before": acc_before, "eval_margin": float((c1 - r1).mean()),
               "final_loss": history[-1], "train_pairs": len(train_pairs), "dropped_pairs": dropped + eval_dropped,
               "trainable_params": trainable, "train_seconds": round(seconds, 1)}
    rows = [(cat, len(v), common.rate(v)) for cat, v in sorted(per_cat.items())] + [("**all**", len(eval_pairs), acc)]
    report = (
        f"Bradley-Terry reward model from `checkpoints/{cfg.init_from}` (scalar head on the last real token),"
        f" {len(train_pairs)} training pairs, {cfg.steps} steps x {cfg.batch_size} pairs"
        f"{', LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else ''}, margin {cfg.margin:g}."
        f" Held-out pairwise accuracy **{acc:.3f}** (untrained head: {acc_before:.3f});"
        f" mean held-out margin r_chosen - r_rejected = {metrics['eval_margin']:.2f}.\n\n"
        + markdown_table(["category", "pairs", "held-out accuracy"], rows)
        + f"\n\n![reward model training]({plot})\n"
    )
    return StageResult(metrics=metrics, artifacts={"checkpoint": str(out_dir.relative_to(run_path)), "loss_plot": plot},
                       report=report)
