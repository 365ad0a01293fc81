"""Which fine-tuning keeps what pretraining stored? One pretrained model, several ways to fine-tune it on QA
about half of the people; after each, the QA accuracy on the fine-tuned half and on the held-out half
(facts read only in pretraining). A fine-tune that overwrites pretraining shows as a high first number and
a falling second one.

Variants: ``short`` (the knowledge experiment's fine-tune), ``long`` (4x the steps at 2x the LR, like a
multi-epoch SFT), ``long+replay`` (the same, plus an LM loss on pretraining windows every step), and
``lora`` (the long schedule through rank-8 LoRA adapters on every linear layer, base weights frozen).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from lmstack.experiments.knowledge import (KnowledgeConfig, finetune_and_evaluate, pretrain_condition,
                                           shared_tokenizer, window_batches)

VARIANTS = ("short", "long", "long+replay", "lora")


def run_sft_retention(cfg: KnowledgeConfig, out_dir: str | Path, condition: str = "qa_mixed", log=print) -> dict:
    from lmstack.align.lora import LoRAAdapterConfig, apply_lora
    from lmstack.runs import atomic_write_json, atomic_write_text

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for seed in cfg.seeds:
        tokenizer = shared_tokenizer(KnowledgeConfig(**{**cfg.__dict__, "conditions": [condition]}), seed)
        world, base, stream, _ = pretrain_condition(cfg, condition, seed, tokenizer)
        for variant in VARIANTS:
            model = copy.deepcopy(base)
            steps, lr, replay = cfg.sft_steps, cfg.sft_lr, None
            if variant != "short":
                steps, lr = 4 * cfg.sft_steps, 2 * cfg.sft_lr
            if variant == "long+replay":
                replay = window_batches(stream, cfg.seq_len, max(1, cfg.batch_size // 2),
                                        torch.Generator().manual_seed(seed + 1))
            if variant == "lora":
                apply_lora(model, LoRAAdapterConfig(r=8, alpha=16.0))
                lr = 10 * cfg.sft_lr  # adapters start at zero and want a higher rate
            scores = finetune_and_evaluate(cfg, world, model, tokenizer, seed, steps=steps, lr=lr, replay=replay,
                                           desc=f"{variant}/{seed}")
            rows.append({"variant": variant, "seed": seed, "steps": steps, "lr": lr, **scores})
            log(f"[sft-retention] {variant} seed {seed}: fine-tuned half {scores['qa_train']:.3f}  "
                f"held-out half {scores['qa_test']:.3f}  control {scores['qa_control']:.3f}")
    result = {"config": cfg.__dict__, "condition": condition, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "report.md", report(result))
    return result


def report(result: dict) -> str:
    lines = ["# Fine-tuning that keeps pretrained knowledge", "",
             f"One model pretrained on the `{result['condition']}` condition per seed, then each fine-tune from the "
             f"same weights ({result['seconds'] / 60:.1f} min).", "",
             "| fine-tune | steps | peak LR | QA, fine-tuned half | QA, held-out half (pretraining only) | n | control |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for variant in VARIANTS:
        rs = [r for r in result["rows"] if r["variant"] == variant]
        if not rs:
            continue
        mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        lines.append(f"| {variant} | {rs[0]['steps']} | {rs[0]['lr']:g} | {mean('qa_train'):.3f} | "
                     f"**{mean('qa_test'):.3f}** | {rs[0]['n_test']} | {mean('qa_control'):.3f} |")
    return "\n".join(lines) + "\n"


def experiment_main(overrides: list[str], out: Path) -> int:
    """``lmstack experiment sft-retention``: run, print the report and each variant's held-out accuracy."""
    from lmstack.experiments.cli import parse_config

    result = run_sft_retention(parse_config(KnowledgeConfig, overrides, "experiment sft-retention"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    for row in result["rows"]:
        print(f"result: {row['variant'].replace('+', '_')}_seed{row['seed']}_heldout={row['qa_test']:.3f}")
    return 0
