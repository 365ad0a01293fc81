"""Compress one model several ways and measure each result the same way: the compression table.

A variant is written ``key=value,key=value`` over :class:`CompressConfig` fields, e.g.
``quantize=gptq,bits=4`` or ``quantize=,prune=wanda,sparsity=0.5``; fields it does not name keep the
base config's values. Each row reports stored bits per weight of the block linears, checkpoint
file size, validation perplexity and bits/byte, KL divergence to the uncompressed model, and
optionally fact-QA accuracy and batch-1 decode tokens/s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .api import CompressConfig, compress, linear_bits_per_weight, save_compressed
from .evaluate import compare_models, reference_logits
from .measure import decode_tokens_per_second


def parse_variant(text: str, base: CompressConfig) -> CompressConfig:
    """``"quantize=gptq,bits=4"`` -> a copy of ``base`` with those fields changed."""
    fields = {f.name: f for f in dataclasses.fields(CompressConfig)}
    changes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"variant {text!r}: {part!r} is not key=value (e.g. 'quantize=gptq,bits=4')")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in fields:
            raise ValueError(f"variant {text!r}: unknown field {key!r}; valid: {', '.join(fields)}")
        kind = type(getattr(base, key))
        if kind is bool:
            changes[key] = value.lower() in ("1", "true", "yes")
        elif kind in (int, float):
            changes[key] = kind(value)
        elif kind is list:
            changes[key] = [v for v in value.split("|") if v]
        else:
            changes[key] = value
    merged = {**dataclasses.asdict(base), **changes}
    # a variant that names only a pruning method means "prune only" unless it also names quantize
    if ("prune" in changes or "structured" in changes) and "quantize" not in changes:
        merged["quantize"] = ""
    return CompressConfig(**merged)


@dataclass
class Row:
    label: str
    bits_per_weight: float
    file_bytes: int
    ppl: float
    bpb: float
    kl: float
    facts: float | None = None
    tok_per_s: float | None = None
    seconds: float = 0.0
    sparsity: float = 0.0


def measure(model: nn.Module, reference: nn.Module | list, windows: torch.Tensor, bytes_per_token: float, label: str, *,
            tokenizer=None, facts: list | None = None, speed_tokens: int = 0, seconds: float = 0.0) -> Row:
    stats = compare_models(model, reference, windows)
    with tempfile.TemporaryDirectory() as tmp:
        save_compressed(model, tmp)
        size = (Path(tmp) / "model.safetensors").stat().st_size
    facts_acc = None
    if facts and tokenizer is not None:
        from lmstack.eval.facts import fact_accuracy
        facts_acc = fact_accuracy(model, tokenizer, facts)["accuracy"]["all"]
    tok_s = None
    if speed_tokens and tokenizer is not None:
        tok_s = decode_tokens_per_second(model, tokenizer, windows[0, :16].tolist(), speed_tokens)
    return Row(label, linear_bits_per_weight(model), size, stats["ppl"], stats["loss"] / math.log(2) / bytes_per_token,
               stats.get("kl", 0.0), facts_acc, tok_s, seconds, block_linear_sparsity(model))


def block_linear_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the linears inside the blocks."""
    zeros = total = 0
    for name, m in model.named_modules():
        if not name.startswith("layers."):
            continue
        if getattr(m, "is_quantized_linear", False):
            w = m.dense_weight()
        elif type(m) is nn.Linear:
            w = m.weight
        else:
            continue
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


def compare_variants(reference: nn.Module, base: CompressConfig, variants: list, calib: torch.Tensor,
                     windows: torch.Tensor, bytes_per_token: float, *, tokenizer=None, facts: list | None = None,
                     speed_tokens: int = 0, log: Callable[[str], None] = print,
                     keep_models: bool = False) -> list[Row] | tuple[list[Row], list[nn.Module]]:
    """The uncompressed model first, then one row per variant (a ``CompressConfig`` or a
    ``key=value,...`` string over ``base``), each compressed from a fresh copy of ``reference``.
    With ``keep_models`` the compressed models are returned too."""
    import time

    reference = reference.eval()
    cached = reference_logits(reference, windows)
    rows = [measure(reference, cached, windows, bytes_per_token, "fp32", tokenizer=tokenizer, facts=facts,
                    speed_tokens=speed_tokens)]
    models = []
    for variant in variants:
        cfg = variant if isinstance(variant, CompressConfig) else parse_variant(variant, base)
        model = copy.deepcopy(reference)
        t0 = time.time()
        model, _ = compress(model, cfg, calib=calib if cfg.needs_calibration else None, log=log)
        seconds = time.time() - t0
        rows.append(measure(model, cached, windows, bytes_per_token, cfg.label(), tokenizer=tokenizer, facts=facts,
                            speed_tokens=speed_tokens, seconds=seconds))
        log(f"{rows[-1].label}: ppl {rows[-1].ppl:.3f} kl {rows[-1].kl:.4f} bits/weight {rows[-1].bits_per_weight:.2f}")
        if keep_models:
            models.append(model)
    return (rows, models) if keep_models else rows


def rows_markdown(rows: list[Row]) -> str:
    has_facts = any(r.facts is not None for r in rows)
    has_speed = any(r.tok_per_s is not None for r in rows)
    head = ["method", "bits/weight (block linears)", "zero weights", "file size", "val ppl", "Δppl", "bits/byte",
            "KL to fp32 (nats)"]
    head += ["fact acc"] if has_facts else []
    head += ["decode tok/s"] if has_speed else []
    head += ["compress s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0].ppl
    for r in rows:
        cells = [r.label, f"{r.bits_per_weight:.2f}", f"{r.sparsity:.1%}", f"{r.file_bytes / 1024:.0f} KiB", f"{r.ppl:.3f}",
                 f"{r.ppl - base:+.3f}", f"{r.bpb:.4f}", f"{r.kl:.4f}"]
        if has_facts:
            cells.append("" if r.facts is None else f"{r.facts:.2f}")
        if has_speed:
            cells.append("" if r.tok_per_s is None else f"{r.tok_per_s:.0f}")
        cells.append(f"{r.seconds:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality_size_plot(rows: list[Row], path: str | Path, title: str = "quality vs size") -> Path:
    from lmstack.report import pyplot

    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r.file_bytes / 1024, r.ppl)
        ax.annotate(r.label, (r.file_bytes / 1024, r.ppl), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("checkpoint size (KiB)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["parse_variant", "Row", "measure", "compare_variants", "rows_markdown", "quality_size_plot"]
