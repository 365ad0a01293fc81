"""Stage ``distill``: train a smaller student from a checkpoint of the run (the teacher).

Reads ``checkpoints/<teacher>/`` (default: pretrain), ``shards/train.bin``, ``shards/val.bin`` and
``shards/meta.json``. Trains two students of the same shape on the same number of tokens, one with
the teacher (logit KD, or sequence-level KD on the teacher's samples) and one without, writes the
distilled one to ``checkpoints/distill/`` (a plain checkpoint, usable as
``lmstack chat RUN --strategy speculative --draft RUN/checkpoints/distill``), and reports both students'
perplexity, bits/byte, KL to the teacher, and their acceptance rate and speed-up as
speculative-decoding drafts of the teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STAGE = "distill"


@dataclass
class Config:
    teacher: str = "pretrain"      # checkpoint stage (or directory) of the teacher
    d_model: int = 0               # student width; 0 = half the teacher's
    n_layers: int = 0              # student depth; 0 = half the teacher's
    method: str = "logit"          # logit | sequence
    kind: str = "forward"          # logit KD: forward | reverse KL
    temperature: float = 2.0
    alpha: float = 0.5             # logit KD weight (the rest is cross-entropy on the data)
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 0               # 0 = min(teacher max_seq_len, 128)
    lr: float = 3e-3
    sequences: int = 256           # sequence-level KD: teacher samples generated
    eval_windows: int = 32
    draft_prompts: int = 8         # prompts for the speculative-decoding report (0 = skip)
    draft_tokens: int = 48

    def __post_init__(self) -> None:
        if self.method not in ("logit", "sequence"):
            raise ValueError(f"distill.method={self.method!r}: choose 'logit' or 'sequence'")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError("distill.steps and distill.batch_size must be positive")


def student_config(teacher_cfg, cfg: Config):
    d = cfg.d_model or max(teacher_cfg.d_model // 2, 32)
    heads = max(1, min(teacher_cfg.n_heads, d // 16))
    kv = max(1, min(teacher_cfg.n_kv_heads, heads))
    while heads % kv:
        kv -= 1
    return teacher_cfg.replace(d_model=d, n_layers=cfg.n_layers or max(teacher_cfg.n_layers // 2, 1), n_heads=heads,
                               n_kv_heads=kv, head_dim=0, ffn_hidden=0, moe_expert_hidden=0)


def run(ctx, cfg: Config):
    import numpy as np
    import torch

    from lmstack.align.common import load_tokenizer
    from lmstack.data.shards import read_tokens
    from lmstack.eval.bpb import bytes_per_token_from_meta
    from lmstack.model import Transformer, load_pretrained, save_pretrained
    from lmstack.pipeline import StageResult

    from .distill import DistillConfig, distill, speculative_report, teacher_sequences
    from .evaluate import compare_models, evaluation_windows
    from .stage import resolve_checkpoint

    root = ctx.run.path
    teacher_dir = resolve_checkpoint(root, cfg.teacher)
    teacher = load_pretrained(teacher_dir, device=ctx.device).eval()
    tok = load_tokenizer(root)
    train = read_tokens(root / "shards" / "train.bin")
    seq = cfg.seq_len or min(teacher.config.max_seq_len, 128)
    windows = evaluation_windows(read_tokens(root / "shards" / "val.bin"), seq, cfg.eval_windows)
    bpt = bytes_per_token_from_meta(root / "shards" / "meta.json", "val")
    data = train
    if cfg.method == "sequence":
        rng = np.random.default_rng(ctx.seed)
        prompts = [[int(t) for t in train[s:s + 16]] for s in rng.integers(0, len(train) - 16, size=cfg.sequences)]
        data = teacher_sequences(teacher, tok, prompts, max_new_tokens=seq - 15, seq_len=seq, seed=ctx.seed)
    students, rows = {}, []
    for label, with_teacher in (("no teacher", False), (f"{cfg.method} KD", True)):
        torch.manual_seed(ctx.seed)
        student = Transformer(student_config(teacher.config, cfg)).to(ctx.device)
        alpha = cfg.alpha if (with_teacher and cfg.method == "logit") else 0.0
        summary = distill(student, teacher if alpha else None, data if with_teacher else train,
                          DistillConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=seq, lr=cfg.lr, alpha=alpha,
                                        temperature=cfg.temperature, kind=cfg.kind, seed=ctx.seed),
                          log=ctx.log, pad_id=tok.pad_id)
        stats = compare_models(student, teacher, windows)
        row = {"student": label, "params": student.num_params(), "tokens": summary["tokens"], "ppl": stats["ppl"],
               "bpb": stats["loss"] / math.log(2) / bpt, "kl": stats["kl"]}
        if cfg.draft_prompts:
            prompts = [[tok.bos_id] + [int(t) for t in windows[i % len(windows), :24]] for i in range(cfg.draft_prompts)]
            rep = speculative_report(teacher, student, tok, prompts, max_new_tokens=cfg.draft_tokens)
            row.update(acceptance=rep["acceptance_rate"], speedup=rep["speedup"])
        rows.append(row)
        students[label] = student
    out_dir = root / "checkpoints" / STAGE
    save_pretrained(students[f"{cfg.method} KD"], out_dir)
    teacher_ppl = compare_models(teacher, None, windows)["ppl"]
    lines = [f"Teacher `{teacher_dir.name}` ({teacher.num_params():,} parameters, val ppl {teacher_ppl:.3f}); students "
             f"d_model {students['no teacher'].config.d_model}, {students['no teacher'].config.n_layers} layers, each "
             f"trained on {rows[0]['tokens']:,} tokens"
             + (f" (logit KD: {cfg.kind} KL, T={cfg.temperature}, alpha={cfg.alpha})" if cfg.method == "logit" else
                f" (sequence-level KD: {cfg.sequences} teacher samples)") + ". The distilled student is saved to "
             f"`checkpoints/{STAGE}` for use as a speculative-decoding draft.", "",
             "| student | params | val ppl | bits/byte | KL to teacher | draft acceptance | draft speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['student']} | {r['params']:,} | {r['ppl']:.3f} | {r['bpb']:.4f} | {r['kl']:.4f} | "
                     f"{r.get('acceptance', float('nan')):.3f} | {r.get('speedup', float('nan')):.2f}x |")
    kd, base = rows[1], rows[0]
    metrics = {"student_ppl": round(kd["ppl"], 4), "baseline_ppl": round(base["ppl"], 4),
               "student_kl": round(kd["kl"], 5), "baseline_kl": round(base["kl"], 5), "teacher_ppl": round(teacher_ppl, 4)}
    if "acceptance" in kd:
        metrics.update(draft_acceptance=round(kd["acceptance"], 4), baseline_draft_acceptance=round(base["acceptance"], 4))
    return StageResult(metrics=metrics, artifacts={"checkpoint": str(out_dir.relative_to(root))}, report="\n".join(lines) + "\n")


__all__ = ["Config", "run", "student_config"]
