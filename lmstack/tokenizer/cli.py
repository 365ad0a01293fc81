"""``lmstack tokenize``: train, inspect, encode and export tokenizers outside a pipeline run.

    python -m lmstack.tokenizer train corpus.txt docs.jsonl --vocab-size 8192 --out tok.json
    python -m lmstack.tokenizer encode tok.json "床前明月光 hello"
    python -m lmstack.tokenizer export tok.json --hf hf_dir --tiktoken ranks.tiktoken
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator


def _read_texts(paths: list[str]) -> Iterator[str]:
    from lmstack.tokenizer.stage import iter_jsonl_texts

    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: input file not found")
        if p.suffix == ".jsonl":
            yield from iter_jsonl_texts(p)
        else:
            yield p.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from lmstack.tokenizer import PATTERN_NAMES, Tokenizer, export_hf, export_tiktoken, train_tokenizer

    ap = argparse.ArgumentParser(prog="lmstack tokenize", description="train / encode / export BPE tokenizers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a tokenizer on .txt / .jsonl ({'text': ...}) files")
    t.add_argument("inputs", nargs="+")
    t.add_argument("--vocab-size", type=int, default=4096)
    t.add_argument("--mode", choices=["byte", "char"], default="byte")
    t.add_argument("--pattern", default="lmstack", help=f"one of {', '.join(PATTERN_NAMES)} or a regex")
    t.add_argument("--max-digits", type=int, default=2)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--out", required=True)
    e = sub.add_parser("encode", help="show the tokens of a text")
    e.add_argument("tokenizer")
    e.add_argument("text")
    e.add_argument("--allow-special", action="store_true", help="turn special-token strings into special ids")
    x = sub.add_parser("export", help="write HF tokenizer.json and/or a tiktoken rank file")
    x.add_argument("tokenizer")
    x.add_argument("--hf", help="output directory (or .json file) for HF tokenizers")
    x.add_argument("--tiktoken", help="output rank file (byte-level tokenizers only)")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "train":
            tok = train_tokenizer(_read_texts(args.inputs), args.vocab_size, mode=args.mode, pattern=args.pattern,
                                  max_digits=args.max_digits, processes=args.workers)
            tok.save(args.out)
            print(f"saved {tok!r} to {args.out} ({tok.metadata['train_seconds']:.1f}s)")
        elif args.cmd == "encode":
            tok = Tokenizer.load(args.tokenizer)
            ids = tok.encode(args.text, allowed_special="all" if args.allow_special else ())
            print(json.dumps(ids))
            print(" | ".join(tok.id_to_token(i) for i in ids))
            print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(1, len(ids)):.2f} bytes/token")
        elif args.cmd == "export":
            tok = Tokenizer.load(args.tokenizer)
            if not args.hf and not args.tiktoken:
                ap.error("export needs --hf and/or --tiktoken")
            if args.hf:
                print(f"wrote {export_hf(tok, args.hf)}")
            if args.tiktoken:
                export_tiktoken(tok, args.tiktoken)
                print(f"wrote {args.tiktoken}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
