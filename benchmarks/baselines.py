"""The baseline table: n-gram (MKN), feed-forward LM, LSTM, transformer and gated linear attention,
trained with equal compute on the same tokens (lmstack.eval.baselines).

Two sources: ``--run DIR`` uses a pipeline run's tokenizer shards (e.g. the world corpus after
``lmstack run``); ``--text PATH`` (default: tinyshakespeare) uses the file's UTF-8 bytes as tokens,
so bits per byte is the loss itself.

    .venv/bin/python benchmarks/baselines.py [--quick] [--run runs/default] [--text data/en/tinyshakespeare.txt]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lmstack import DATA_DIR
from lmstack.eval.baselines import DEFAULT_FAMILIES, baseline_table, format_table
from lmstack.machine import run_benchmark


def tokens_from_run(run: Path):
    from lmstack.data.shards import read_tokens
    from lmstack.eval.bpb import bytes_per_token_from_meta
    from lmstack.tokenizer import Tokenizer

    meta = json.loads((run / "shards" / "meta.json").read_text(encoding="utf-8"))
    tok = Tokenizer.load(run / "tokenizer" / "tokenizer.json")
    return (np.asarray(read_tokens(run / "shards" / "train.bin")), np.asarray(read_tokens(run / "shards" / "val.bin")),
            int(meta["vocab_size"]), tok.bos_id, bytes_per_token_from_meta(run / "shards" / "meta.json", "val"))


def tokens_from_text(path: Path):
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64)
    split = int(0.9 * len(data))
    bos = 256  # one extra id marks the start of the stream
    train = np.concatenate([[bos], data[:split]])
    val = np.concatenate([[bos], data[split:]])
    return train, val, 257, bos, 1.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny budget: proves the pipeline runs (minutes)")
    ap.add_argument("--run", type=Path, help="a run directory with tokenizer/ and shards/")
    ap.add_argument("--text", type=Path, default=DATA_DIR / "en" / "tinyshakespeare.txt")
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    ap.add_argument("--reference-steps", type=int, default=600, help="the transformer's steps; sets the budget")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    train, val, vocab, bos, bpt = tokens_from_run(args.run) if args.run else tokens_from_text(args.text)
    kw = {}
    if args.quick:
        args.reference_steps, args.batch, args.seq = 5, 4, 64
        kw = dict(max_val_tokens=4096, decode_tokens=8, ngram_order=3)
        train = train[:50_000]
    rows = baseline_table(train, val, vocab_size=vocab, bos_id=bos, bytes_per_token=bpt,
                          families=tuple(args.families.split(",")), reference_steps=args.reference_steps,
                          batch_size=args.batch, seq_len=args.seq, device=args.device, **kw)
    source = args.run or args.text
    print(f"\nsource: {source} ({len(train):,} train / {min(len(val), kw.get('max_val_tokens', 200_000)):,} "
          f"val tokens, vocab {vocab}); equal compute = the transformer's {args.reference_steps} steps of "
          f"{args.batch}x{args.seq} tokens\n")
    print(format_table(rows))
    for r in rows:
        key = r.name.split()[0].replace("-", "_")
        print(f"result: bpb_{key}={r.val_bpb:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
