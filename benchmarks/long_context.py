"""Long context: cost against sequence length for full attention (SDPA), sliding-window attention
and the gated-linear-attention block (lmstack.model.gla), all at the same width and depth.

Measures (1) forward+backward time per token and memory against sequence length (256 up to
--max-len, or until memory runs out), (2) decode time per token at a growing context (KV cache for
the attention models, the O(1) recurrent state for GLA), (3) the crossover lengths where GLA gets
cheaper, and (4) with --recall, quality at equal compute on a long-range task (associative recall:
key-value pairs, then a key whose value must be recalled from anywhere in the context).
Memory is CUDA's peak allocation, or on CPU the bytes autograd saves for the backward pass.

    .venv/bin/python benchmarks/long_context.py [--quick] [--device cuda] [--max-len 16384] [--recall]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lmstack.machine import run_benchmark
from lmstack.model import ModelConfig, build_model

OUT = Path(__file__).resolve().parent / "out"
KINDS = ("full", "sliding", "gla")


def make_model(kind: str, args, max_len: int):
    common = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                  n_kv_heads=0, max_seq_len=max_len)
    if kind == "gla":
        cfg = ModelConfig.preset("gla", **common, gla_chunk=args.chunk)
    else:
        cfg = ModelConfig.preset("llama-style", **common, attention_pattern=[kind],
                                 sliding_window=args.window)
    torch.manual_seed(0)
    return build_model(cfg).to(args.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_cost(model, length: int, args) -> tuple[float, float]:
    """(best seconds per forward+backward, memory in MB) at batch args.batch and this length."""
    x = torch.randint(0, args.vocab, (args.batch, length), device=args.device)
    y = torch.randint(0, args.vocab, (args.batch, length), device=args.device)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    def step():
        out = model(x, targets=y)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        memory = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        memory = saved / 2**20
    best = math.inf
    for _ in range(args.reps):
        _sync(args.device)
        t0 = time.perf_counter()
        step()
        _sync(args.device)
        best = min(best, time.perf_counter() - t0)
    return best, memory


@torch.inference_mode()
def decode_cost(model, context: int, args) -> float:
    """Best seconds per generated token after a prompt of `context` tokens (batch 1)."""
    steps = args.decode_steps
    ids = torch.randint(0, args.vocab, (1, context), device=args.device)
    tok = ids[:, -1:]
    best = math.inf
    for _ in range(args.reps):
        cache = model.new_kv_cache(1, context + steps, device=args.device)
        model(ids, kv_cache=cache)
        _sync(args.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(tok, kv_cache=cache)
        _sync(args.device)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _out_of_memory(e: Exception) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower() or \
        isinstance(e, MemoryError)


def sweep(args, lengths: list[int]) -> tuple[dict, dict]:
    train: dict[str, dict[int, tuple[float, float]]] = {k: {} for k in KINDS}
    decode: dict[str, dict[int, float]] = {k: {} for k in KINDS}
    for kind in KINDS:
        model = make_model(kind, args, max(lengths) + args.decode_steps).train()
        for length in tqdm(lengths, desc=f"{kind} fwd+bwd", file=sys.stderr, leave=False):
            try:
                train[kind][length] = train_cost(model, length, args)
            except (RuntimeError, MemoryError) as e:
                if not _out_of_memory(e):
                    raise
                print(f"{kind}: out of memory at length {length}; stopping its sweep there", file=sys.stderr)
                break
            finally:
                model.zero_grad(set_to_none=True)
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
        model.eval()
        for length in tqdm(lengths, desc=f"{kind} decode", file=sys.stderr, leave=False):
            try:
                decode[kind][length] = decode_cost(model, length, args)
            except (RuntimeError, MemoryError) as e:
                if not _out_of_memory(e):
                    raise
                break
        del model
    return train, decode


def crossover(cheap: dict[int, float], costly: dict[int, float]) -> int | None:
    """The first length from which `cheap` stays at or below `costly` for every longer length."""
    common = sorted(set(cheap) & set(costly))
    for i, length in enumerate(common):
        if all(cheap[m] <= costly[m] for m in common[i:]):
            return length
    return None


# ------------------------------------------------------------------ associative recall

def recall_batch(batch: int, pairs: int, n_keys: int, gen: torch.Generator):
    """k1 v1 ... kn vn q -> v(q): keys in [0, n_keys), values in [n_keys, 2 n_keys); one target."""
    keys = torch.stack([torch.randperm(n_keys, generator=gen)[:pairs] for _ in range(batch)])
    values = torch.randint(n_keys, 2 * n_keys, (batch, pairs), generator=gen)
    seq = torch.stack([keys, values], dim=2).reshape(batch, 2 * pairs)
    pick = torch.randint(0, pairs, (batch,), generator=gen)
    query = keys[torch.arange(batch), pick]
    ids = torch.cat([seq, query[:, None]], dim=1)
    targets = torch.full_like(ids, -100)
    targets[:, -1] = values[torch.arange(batch), pick]
    return ids, targets


def recall_quality(args) -> dict[str, float]:
    pairs, n_keys = args.recall_pairs, max(args.recall_pairs, 64)
    vocab = 2 * n_keys
    out = {}
    for kind in ("full", "gla"):
        common = dict(vocab_size=vocab, d_model=args.d_model, n_layers=2, n_heads=args.heads, n_kv_heads=0,
                      max_seq_len=2 * pairs + 1)
        cfg = (ModelConfig.preset("gla", **common, gla_chunk=args.chunk) if kind == "gla"
               else ModelConfig.preset("llama-style", **common))
        torch.manual_seed(0)
        model = build_model(cfg).to(args.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(1)
        for _ in tqdm(range(args.recall_steps), desc=f"recall {kind}", file=sys.stderr, leave=False):
            ids, targets = recall_batch(32, pairs, n_keys, gen)
            loss = model(ids.to(args.device), targets=targets.to(args.device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        ids, targets = recall_batch(512, pairs, n_keys, torch.Generator().manual_seed(2))
        with torch.no_grad():
            pred = model(ids.to(args.device)).logits[:, -1].argmax(-1).cpu()
        out[kind] = float((pred == targets[:, -1]).float().mean())
    return out


# ------------------------------------------------------------------ report

def plot(train, decode, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for kind in KINDS:
        lens = sorted(train[kind])
        if lens:
            axes[0].plot(lens, [train[kind][n][0] / n * 1e6 for n in lens], "o-", label=kind)
            axes[1].plot(lens, [train[kind][n][1] for n in lens], "o-", label=kind)
        lens = sorted(decode[kind])
        if lens:
            axes[2].plot(lens, [decode[kind][n] * 1e3 for n in lens], "o-", label=kind)
    titles = ("forward+backward, microseconds per token", "memory (MB)", "decode ms per token vs context")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("sequence length / context")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="lengths 256 and 512, tiny model, one rep (a smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-len", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=256, help="small, so the LM head does not hide the mixer's cost")
    ap.add_argument("--window", type=int, default=256, help="sliding-window size")
    ap.add_argument("--chunk", type=int, default=64, help="GLA chunk length")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--recall", action="store_true", help="also train full attention and GLA on associative recall")
    ap.add_argument("--recall-pairs", type=int, default=64)
    ap.add_argument("--recall-steps", type=int, default=1500)
    ap.add_argument("--out", type=Path, default=OUT / "long_context.png")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_len, args.reps, args.decode_steps = 512, 1, 4
        args.d_model, args.layers, args.heads = 64, 2, 2
        args.recall_pairs, args.recall_steps = 8, 20
    lengths = [256 * 2**i for i in range(int(math.log2(max(args.max_len, 256) // 256)) + 1)]
    train, decode = sweep(args, lengths)

    mem_kind = "CUDA peak MB" if args.device.startswith("cuda") else "saved-for-backward MB"
    print(f"config: d_model={args.d_model} layers={args.layers} heads={args.heads} vocab={args.vocab} "
          f"batch={args.batch} window={args.window} gla_chunk={args.chunk} device={args.device} "
          f"threads={torch.get_num_threads()}\n")
    print(f"| length | " + " | ".join(f"{k} us/token | {k} {mem_kind}" for k in KINDS) + " |")
    print("|---:|" + "---:|---:|" * len(KINDS))
    for n in lengths:
        cells = []
        for k in KINDS:
            sec, mem = train[k].get(n, (None, None))
            cells += ["OOM", "OOM"] if sec is None else [f"{sec / n * 1e6:.1f}", f"{mem:.1f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\n| context | " + " | ".join(f"{k} decode ms/token" for k in KINDS) + " |")
    print("|---:|" + "---:|" * len(KINDS))
    for n in lengths:
        print(f"| {n} | " + " | ".join(f"{decode[k][n] * 1e3:.2f}" if n in decode[k] else "OOM" for k in KINDS) + " |")
    plot(train, decode, args.out)
    print(f"\nplot: {args.out}")

    per_token = {k: {n: v[0] / n for n, v in train[k].items()} for k in KINDS}
    cross_train = crossover(per_token["gla"], per_token["full"])
    cross_decode = crossover(decode["gla"], decode["full"])
    longest = max(per_token["gla"])
    growth = {k: per_token[k][max(per_token[k])] / per_token[k][min(per_token[k])] for k in KINDS if per_token[k]}
    print(f"result: crossover_train_len={cross_train if cross_train is not None else 'none'}")
    print(f"result: crossover_decode_len={cross_decode if cross_decode is not None else 'none'}")
    print(f"result: gla_longest_len={longest}")
    for k in KINDS:
        if k in growth:
            print(f"result: {k}_train_cost_per_token_growth={growth[k]:.2f}")
    if args.recall:
        acc = recall_quality(args)
        print(f"\nassociative recall ({args.recall_pairs} pairs; each model {args.recall_steps} steps x 32 sequences, "
              f"same width and depth, so about equal training FLOPs):")
        print("| model | accuracy |\n|---|---:|")
        for k, v in acc.items():
            print(f"| {k} | {v:.3f} |")
        for k, v in acc.items():
            print(f"result: recall_acc_{k}={v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
