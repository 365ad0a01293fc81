"""Stage ``compress``: quantize and/or prune a checkpoint of the run, and measure what it costs.

Reads ``checkpoints/<init_from>/`` (default: the latest of ppo, dpo, sft, pretrain that exists, or
any checkpoint directory path), ``shards/train.bin`` (calibration windows), ``shards/val.bin`` and
``shards/meta.json`` (perplexity, bits/byte). Writes ``checkpoints/compress/`` (packed weights,
loadable with ``lmstack.compress.load_compressed``) and a report table: the uncompressed model, the
configured method, and every ``compare`` variant, plus a quality-vs-size plot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .api import CompressConfig, save_compressed

STAGE = "compress"
_CHECKPOINT_STAGES = ("ppo", "dpo", "sft", "pretrain")


@dataclass
class Config(CompressConfig):
    """The ``[compress]`` table: the CompressConfig fields plus inputs and evaluation."""

    init_from: str = ""            # a checkpoint stage of this run, or a checkpoint directory; "" = latest
    compare: list[str] = field(default_factory=list)  # extra variants for the table, e.g. ["quantize=gptq,bits=4"]
    eval_windows: int = 32         # validation windows of calib_seq_len tokens for ppl / KL
    text_file: str = ""            # outside a run: calibrate (first 90%) and evaluate (last 10%) on this UTF-8 text
    tokenizer: str = ""            # tokenizer.json for text_file ("" = the run's)
    facts: int = 0                 # fact-QA questions per row (0 = skip; generation is slow)
    speed_tokens: int = 0          # tokens decoded at batch 1 per row for tok/s (0 = skip)


def resolve_checkpoint(run_path: Path, init_from: str) -> Path:
    if init_from:
        as_stage = run_path / "checkpoints" / init_from
        for cand in (as_stage, Path(init_from)):
            if (cand / "config.json").exists():
                return cand
        raise FileNotFoundError(f"[compress] init_from={init_from!r}: neither {as_stage} nor {init_from} holds a "
                                "checkpoint (config.json + model.safetensors)")
    for stage in _CHECKPOINT_STAGES:
        d = run_path / "checkpoints" / stage
        if (d / "config.json").exists():
            return d
    raise FileNotFoundError(f"{run_path}/checkpoints: none of {list(_CHECKPOINT_STAGES)} exists; run pretrain first")


def run(ctx, cfg: Config):
    import dataclasses

    import torch

    from lmstack.data.shards import read_tokens
    from lmstack.eval.bpb import bytes_per_token_from_meta
    from lmstack.model import load_pretrained
    from lmstack.pipeline import StageResult

    from .calibrate import calibration_batch
    from .compare import compare_variants, quality_size_plot, rows_markdown
    from .evaluate import evaluation_windows

    root = ctx.run.path
    torch.manual_seed(ctx.seed)
    ckpt = resolve_checkpoint(root, cfg.init_from)
    reference = load_pretrained(ckpt, device=ctx.device).eval()
    seq_len = cfg.calib_seq_len or reference.config.max_seq_len
    tokenizer = facts = None
    if cfg.facts or cfg.speed_tokens or cfg.text_file:
        tokenizer = _load_tokenizer(root, cfg.tokenizer)
    if cfg.text_file:
        train_tokens, val_tokens, bytes_per_token = _text_tokens(Path(cfg.text_file), tokenizer)
    else:
        shards = root / "shards"
        if not (shards / "train.bin").exists():
            raise FileNotFoundError(f"{shards}/train.bin: no token shards in this run dir; run the tokenizer stage, "
                                    "or set compress.text_file (and compress.tokenizer) to compress a checkpoint alone")
        train_tokens, val_tokens = read_tokens(shards / "train.bin"), read_tokens(shards / "val.bin")
        bytes_per_token = bytes_per_token_from_meta(shards / "meta.json", "val")
    calib = calibration_batch(train_tokens, cfg.calib_samples, seq_len, seed=ctx.seed)
    windows = evaluation_windows(val_tokens, seq_len, cfg.eval_windows)
    facts_path = root / "data" / "world" / "facts_eval.jsonl"
    if cfg.facts and facts_path.exists():
        from lmstack.eval.facts import read_facts
        facts = read_facts(facts_path)
        facts = random.Random(ctx.seed).sample(facts, min(cfg.facts, len(facts)))

    base = CompressConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(CompressConfig)})
    ctx.log(f"compressing {ckpt} ({base.label()}); {len(cfg.compare)} comparison variants")
    rows, models = compare_variants(reference, base, [base, *cfg.compare], calib.to(ctx.device), windows,
                                    bytes_per_token, tokenizer=tokenizer, facts=facts, speed_tokens=cfg.speed_tokens,
                                    log=ctx.log, keep_models=True)
    model = models[0]
    details = [n for n, m in model.named_modules() if n.startswith("layers.") and hasattr(m, "in_features")
               and hasattr(m, "out_features")]
    out_dir = root / "checkpoints" / STAGE
    save_compressed(model, out_dir)
    plot = quality_size_plot(rows, root / "plots" / "compress_quality_vs_size.png",
                             f"compression of {ckpt.name}: perplexity vs checkpoint size")
    main = rows[1]
    metrics = {"method": main.label, "bits_per_weight": round(main.bits_per_weight, 3), "file_bytes": main.file_bytes,
               "fp32_file_bytes": rows[0].file_bytes, "val_ppl": round(main.ppl, 4), "fp32_val_ppl": round(rows[0].ppl, 4),
               "val_bpb": round(main.bpb, 4), "kl_to_fp32": round(main.kl, 5), "compress_seconds": round(main.seconds, 2),
               "layers": len(details)}
    report = "\n".join([
        f"Compressed `{ckpt.relative_to(root) if ckpt.is_relative_to(root) else ckpt}` with **{main.label}** "
        f"({len(details)} linears in the blocks; embeddings, norms and the head stay fp32). Calibration: "
        f"{cfg.calib_samples} training windows of {seq_len} tokens; evaluation: {windows.shape[0]} validation windows. "
        "KL is KL(fp32 || compressed) per token; bits/weight counts codes, scales and zero points of the block linears.",
        "", rows_markdown(rows), "", f"![quality vs size](plots/{plot.name})", ""])
    return StageResult(metrics=metrics, artifacts={"checkpoint": str(out_dir.relative_to(root)),
                                                   "plot": f"plots/{plot.name}"}, report=report)


def _load_tokenizer(root: Path, path: str):
    from lmstack.tokenizer import Tokenizer

    p = Path(path) if path else root / "tokenizer" / "tokenizer.json"
    if not p.exists():
        raise FileNotFoundError(f"{p}: tokenizer missing; set compress.tokenizer to a tokenizer.json")
    return Tokenizer.load(p)


def _text_tokens(path: Path, tokenizer):
    """(calibration tokens, validation tokens, validation bytes per token) from one text file."""
    import numpy as np

    if not path.exists():
        raise FileNotFoundError(f"compress.text_file={str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = text[:cut], text[cut:]
    train_ids = np.array(tokenizer.encode(train), dtype=np.int64)
    val_ids = np.array(tokenizer.encode(val), dtype=np.int64)
    return train_ids, val_ids, len(val.encode("utf-8")) / max(len(val_ids), 1)


__all__ = ["Config", "run", "resolve_checkpoint"]
