"""The baseline table: language models from the n-gram to the sub-quadratic decoder, trained with
equal compute on the same tokens and scored in bits per byte on the same validation tokens.

    from lmstack.eval.baselines import baseline_table, format_table
    rows = baseline_table(train_ids, val_ids, vocab_size=V, bos_id=bos, bytes_per_token=bpt)
    print(format_table(rows))

Equal compute: the budget is the training FLOPs of the transformer row run for ``reference_steps``
(``lmstack.model.flops_per_token``, the one FLOP count); every neural family gets as many steps of
the same batch shape as that budget buys it (capped at ``max_steps_factor`` x reference_steps).
The n-gram (modified Kneser-Ney) counts the whole training stream once. Bits per byte: total
negative log-likelihood of the validation tokens (the first ``max_val_tokens``), in windows of
``seq_len`` for the neural models and as one stream for the n-gram, divided by their UTF-8 bytes.
Timings are only meaningful on an idle machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

DEFAULT_FAMILIES = ("ngram", "ffnn", "lstm", "transformer", "gla")

# CPU-sized models of similar width; override any field per family with ``configs``.
DEFAULT_CONFIGS: dict[str, dict] = {
    "ffnn": dict(preset="ffnn", d_model=64, ffn_hidden=512, ffnn_context=8, ffnn_direct=True),
    "lstm": dict(preset="lstm", d_model=256, n_layers=2),
    "transformer": dict(preset="llama-style", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2),
    "gla": dict(preset="gla", d_model=128, n_layers=4, n_heads=4),
}


@dataclass
class BaselineRow:
    name: str
    params: int
    train_tokens: int
    train_flops: float
    val_bpb: float
    train_tok_per_s: float | None
    decode_tok_per_s: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def _model_config(family: str, overrides: dict, vocab_size: int, seq_len: int):
    from lmstack.model import ModelConfig

    d = dict(overrides)
    preset = d.pop("preset")
    d["vocab_size"] = vocab_size
    d.setdefault("max_seq_len", seq_len)
    return ModelConfig.preset(preset, **d)


@torch.no_grad()
def neural_bits_per_byte(model, val: np.ndarray, seq_len: int, bytes_per_token: float, device: str) -> float:
    """Total NLL of ``val`` in consecutive windows of ``seq_len`` (each from a fresh context) / bytes."""
    model.eval()
    total, count = 0.0, 0
    ids = torch.as_tensor(val.astype(np.int64))
    windows = (len(ids) - 1) // seq_len
    for start in range(0, windows * seq_len, seq_len * 16):
        rows = [ids[s:s + seq_len + 1] for s in range(start, min(windows * seq_len, start + seq_len * 16), seq_len)]
        chunk = torch.stack(rows).to(device)
        out = model(chunk[:, :-1], targets=chunk[:, 1:])
        n = chunk[:, 1:].numel()
        total += float(out.loss) * n
        count += n
    return total / math.log(2) / (count * bytes_per_token)


@torch.inference_mode()
def decode_tokens_per_second(model, vocab_size: int, tokens: int, device: str) -> float:
    """Greedy single-sequence decode speed through the model's cache/state (after a 16-token prompt)."""
    model.eval()
    prompt = torch.randint(0, vocab_size, (1, 16), device=device)
    cache = model.new_kv_cache(1, 16 + tokens + 1, device=device)
    logits = model(prompt, kv_cache=cache).logits[:, -1]
    t0 = time.perf_counter()
    for _ in range(tokens):
        nxt = logits.argmax(-1, keepdim=True)
        logits = model(nxt, kv_cache=cache).logits[:, -1]
    return tokens / (time.perf_counter() - t0)


def ngram_row(train: np.ndarray, val: np.ndarray, vocab_size: int, bos_id: int, bytes_per_token: float,
              order: int) -> BaselineRow:
    from lmstack.ngram import Vocab, count_token_stream, fit, token_stream_to_padded

    vocab = Vocab.for_token_ids(vocab_size)
    t0 = time.perf_counter()
    counts = count_token_stream(train, bos_id, vocab, order)
    model = fit(counts, "modified_kneser_ney", order)
    seconds = time.perf_counter() - t0
    score, _ = model.score_padded(token_stream_to_padded(np.asarray(val), bos_id))
    n_grams = sum(counts.num_grams(k) for k in range(1, order + 1))
    return BaselineRow(name=f"{order}-gram MKN", params=int(n_grams), train_tokens=int(len(train)), train_flops=0.0,
                       val_bpb=score.bits_per_byte(int(round(len(val) * bytes_per_token))),
                       train_tok_per_s=len(train) / seconds, decode_tok_per_s=None)


def baseline_table(train_tokens: np.ndarray, val_tokens: np.ndarray, *, vocab_size: int, bos_id: int,
                   bytes_per_token: float, families: tuple[str, ...] = DEFAULT_FAMILIES,
                   configs: dict[str, dict] | None = None, reference_steps: int = 300, batch_size: int = 16,
                   seq_len: int = 128, max_steps_factor: float = 20.0, ngram_order: int = 5,
                   max_val_tokens: int = 200_000, decode_tokens: int = 64, lr: float = 3e-3,
                   device: str = "cpu", seed: int = 0, log: Callable[[str], None] = print) -> list[BaselineRow]:
    """One row per family (see the module docstring); ``configs`` overrides DEFAULT_CONFIGS entries."""
    from lmstack.model import build_model, flops_per_token
    from lmstack.train.optim import OptimConfig
    from lmstack.train.schedule import ScheduleConfig
    from lmstack.train.trainer import TrainConfig, Trainer

    unknown = sorted(set(families) - set(DEFAULT_FAMILIES))
    if unknown:
        raise ValueError(f"baseline_table: unknown family {unknown[0]!r}; choose from {DEFAULT_FAMILIES}")
    cfgs = {**DEFAULT_CONFIGS, **(configs or {})}
    val = np.asarray(val_tokens)[:max_val_tokens]
    tokens_per_step = batch_size * seq_len
    reference = build_model(_model_config("transformer", cfgs["transformer"], vocab_size, seq_len))
    budget = flops_per_token(reference, seq_len) * tokens_per_step * reference_steps
    log(f"compute budget: {budget / 1e12:.3f} TFLOP (the transformer row for {reference_steps} steps)")
    rows = []
    for family in families:
        if family == "ngram":
            rows.append(ngram_row(np.asarray(train_tokens), val, vocab_size, bos_id, bytes_per_token, ngram_order))
            log(f"{rows[-1].name}: {rows[-1].val_bpb:.3f} bits/byte")
            continue
        torch.manual_seed(seed)
        model = build_model(_model_config(family, cfgs[family], vocab_size, seq_len))
        per_token = flops_per_token(model, seq_len)
        steps = int(min(max_steps_factor * reference_steps, max(1, budget // (per_token * tokens_per_step))))
        train_cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, loader="random", eval_every=0,
                                ckpt_every=0, log_every=max(1, steps // 10), dtype="fp32", grad_clip=1.0,
                                optim=OptimConfig(lr=lr, weight_decay=0.0),
                                schedule=ScheduleConfig(kind="cosine", warmup_steps=max(1, steps // 20)))
        summary = Trainer(model, train_cfg, train_tokens=np.asarray(train_tokens), bos_id=bos_id, seed=seed,
                          device=device, log=lambda m: None, progress=True).train()
        bpb = neural_bits_per_byte(model, val, seq_len, bytes_per_token, device)
        decode = decode_tokens_per_second(model, vocab_size, decode_tokens, device) if decode_tokens else None
        rows.append(BaselineRow(name=family, params=model.num_params(), train_tokens=steps * tokens_per_step,
                                train_flops=per_token * steps * tokens_per_step, val_bpb=bpb,
                                train_tok_per_s=summary.tok_per_s, decode_tok_per_s=decode))
        log(f"{family}: {steps} steps, {bpb:.3f} bits/byte")
    return rows


def format_table(rows: list[BaselineRow]) -> str:
    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    out = ["| model | params | train tokens | train TFLOP | val bits/byte | train tok/s | decode tok/s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = f"{r.params:,}" + (" n-grams" if "gram" in r.name else "")
        out.append(f"| {r.name} | {params} | {r.train_tokens:,} | {r.train_flops / 1e12:.3g} | {r.val_bpb:.3f} | "
                   f"{num(r.train_tok_per_s, ',.0f')} | {num(r.decode_tok_per_s, ',.0f')} |")
    return "\n".join(out)
