"""Tokenizer benchmark: lmstack BPE vs HF tokenizers (BpeTrainer + ByteLevel) and SentencePiece BPE.

Same corpus (shared English + Chinese + a Python-stdlib sample, >= 10 MB in the full run),
same vocabulary size (8192) and, for lmstack and HF, the same split pattern (lmstack's
default). SentencePiece has no regex pre-tokenizer; it gets byte fallback, digit splitting and
the same vocabulary size, trains on lines (so a newline costs it a byte-fallback token at
encode time) and needs a lower character_coverage when thousands of Han characters do not fit. Compression is measured on held-out text of each language (the end of
tinyshakespeare, the last poems of poetry.jsonl, and idlelib, which the training sample skips).
Encoding throughput compares lmstack (tiktoken core and the pure-Python reference), HF
tokenizers and tiktoken built from our ranks, single-threaded and batched.

    .venv/bin/python benchmarks/tokenizer.py           # full: ~11 MB, vocab 8192
    .venv/bin/python benchmarks/tokenizer.py --quick   # ~2 MB, vocab 4096
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from lmstack import DATA_DIR
from lmstack.machine import run_benchmark
from lmstack.tokenizer import SPECIAL_TOKENS, build_pattern, export_hf, train_tokenizer


def load_corpus(total_bytes: int) -> tuple[list[str], dict[str, str]]:
    """Training documents (about total_bytes) and held-out samples per language."""
    train: list[str] = []
    heldout: dict[str, str] = {}
    en_path, zh_path = DATA_DIR / "en" / "tinyshakespeare.txt", DATA_DIR / "zh" / "poetry.jsonl"
    if not en_path.exists() or not zh_path.exists():
        sys.exit(f"benchmark needs the shared corpora under {DATA_DIR}")
    en = en_path.read_text(encoding="utf-8")
    heldout["en"] = en[-100_000:]
    en_train = en[:-100_000]
    en_share = min(len(en_train.encode()), total_bytes // 10)
    train += [en_train[i:i + 4000] for i in range(0, en_share, 4000)]

    zh_lines = zh_path.read_text(encoding="utf-8").splitlines()
    held_zh = [json.loads(line)["text"] for line in zh_lines[-1000:]]
    heldout["zh"] = "\n".join(held_zh)
    zh_budget, used = total_bytes * 55 // 100, 0
    for line in zh_lines[:-1000]:
        t = json.loads(line)["text"]
        train.append(t)
        used += len(t.encode())
        if used >= zh_budget:
            break

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code_budget = total_bytes - sum(len(t.encode()) for t in train)
    used = 0
    skip = {"idlelib", "test", "tests", "site-packages", "__pycache__"}
    for p in sorted(stdlib.rglob("*.py")):
        if skip & set(p.relative_to(stdlib).parts):
            continue
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        train.append(t)
        used += len(t.encode())
        if used >= code_budget:
            break
    idle = "".join(p.read_text(encoding="utf-8") for p in sorted((stdlib / "idlelib").glob("*.py")))
    heldout["code"] = idle[:300_000]
    return train, heldout


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def hf_train(texts: list[str], vocab_size: int, pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def sp_train(texts: list[str], vocab_size: int, workdir: Path):
    import sentencepiece as spm
    path = workdir / "sp_corpus.txt"
    with path.open("w", encoding="utf-8") as f:
        for t in texts:
            for line in t.splitlines():
                if line.strip():
                    f.write(line + "\n")
    prefix = workdir / "sp"
    # Chinese needs thousands of characters; SentencePiece refuses when the alphabet that covers
    # character_coverage does not fit in the vocabulary, so back off until it fits (the rest
    # falls back to bytes, as in lmstack's char mode).
    for coverage in (0.9995, 0.995, 0.99, 0.98, 0.95):
        try:
            spm.SentencePieceTrainer.train(
                input=str(path), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
                character_coverage=coverage, split_digits=True, num_threads=os.cpu_count() or 1,
                max_sentence_length=1 << 16, minloglevel=2, user_defined_symbols=list(SPECIAL_TOKENS),
                remove_extra_whitespaces=False, normalization_rule_name="identity")
            break
        except RuntimeError as e:
            if "character_coverage" not in str(e):
                raise
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    sp.coverage = coverage
    return sp


def throughput(encode_one, encode_batch, texts: list[str]) -> tuple[float, float]:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    _, t_single = timed(lambda: [encode_one(t) for t in texts])
    _, t_batch = timed(lambda: encode_batch(texts))
    return mb / t_single, mb / t_batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 MB corpus, vocab 4096")
    ap.add_argument("--no-sentencepiece", action="store_true")
    args = ap.parse_args(argv)
    total = 2_000_000 if args.quick else 11_000_000
    vocab = 4096 if args.quick else 8192
    pattern = build_pattern("lmstack")
    workers = os.cpu_count() or 1

    train, heldout = load_corpus(total)
    corpus_mb = sum(len(t.encode()) for t in train) / 1e6
    print(f"corpus: {corpus_mb:.1f} MB in {len(train)} documents; vocab {vocab}; pattern lmstack; {workers} CPU cores\n",
          flush=True)

    ours, t_ours = timed(train_tokenizer, train, vocab, processes=workers, progress=False)
    hf, t_hf = timed(hf_train, train, vocab, pattern)
    sp, t_sp = None, float("nan")
    tmp = Path(tempfile.mkdtemp(prefix="tokbench-"))
    if not args.no_sentencepiece:
        sp, t_sp = timed(sp_train, train, vocab, tmp)

    def bpt(encode, text):
        return len(text.encode()) / len(encode(text))

    rows = [("lmstack (byte BPE)", t_ours, lambda s: ours.encode(s)),
            ("HF tokenizers (BpeTrainer+ByteLevel)", t_hf, lambda s: hf.encode(s).ids)]
    if sp is not None:
        rows.append((f"SentencePiece BPE (coverage {sp.coverage})", t_sp, lambda s: sp.encode(s)))
    print("| tokenizer | train s | vs HF | " + " | ".join(f"{k} bytes/token" for k in heldout) + " |")
    print("|---|---:|---:|" + "---:|" * len(heldout))
    comp: dict[str, dict[str, float]] = {}
    for name, secs, enc in rows:
        comp[name] = {k: bpt(enc, v) for k, v in heldout.items()}
        print(f"| {name} | {secs:.2f} | {secs / t_hf:.2f}x | " + " | ".join(f"{comp[name][k]:.3f}" for k in heldout) + " |")
    print(f"\nlmstack training: {ours.metadata['count_seconds']:.2f} s counting chunks + "
          f"{ours.metadata['train_seconds'] - ours.metadata['count_seconds']:.2f} s merging "
          f"({ours.metadata['merges_per_second']:.0f} merges/s, {ours.metadata['unique_chunks']:,} unique chunks)")

    # Encoding throughput on the held-out text cut into ~4 KB documents.
    import tiktoken
    ranks = {ours.token_bytes(i): i for i in range(ours.n_regular)}
    tk = tiktoken.Encoding("lmstack-ranks", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    export_hf(ours, tmp / "hf")
    from tokenizers import Tokenizer as HFTokenizer
    hf_ours = HFTokenizer.from_file(str(tmp / "hf" / "tokenizer.json"))
    all_text = "".join(heldout.values())
    docs = [all_text[i:i + 4000] for i in range(0, len(all_text), 4000)]
    assert [hf_ours.encode(d).ids for d in docs[:50]] == [ours.encode(d) for d in docs[:50]]
    enc_rows = [
        ("lmstack (tiktoken core)", ours.encode, lambda ds: ours.encode_batch(ds, num_workers=workers)),
        ("lmstack (pure-Python reference; batched = second pass, warm chunk cache)", ours.encode_ordinary_python,
         lambda ds: [ours.encode_ordinary_python(d) for d in ds]),
        ("HF tokenizers (our vocab exported)", lambda d: hf_ours.encode(d).ids, lambda ds: hf_ours.encode_batch(ds)),
        ("tiktoken (our ranks)", tk.encode_ordinary, lambda ds: tk.encode_ordinary_batch(ds, num_threads=workers)),
    ]
    print("\n| encoder | single-thread MB/s | batched MB/s |\n|---|---:|---:|")
    tput = {}
    for name, one, batch in enc_rows:
        if "pure-Python" in name:
            ours._cache.clear()  # measure a cold cache: the first pass fills it
        tput[name] = throughput(one, batch, docs)
        print(f"| {name} | {tput[name][0]:.1f} | {tput[name][1]:.1f} |")

    hf_name, ours_name = rows[1][0], rows[0][0]
    print()
    print(f"result: corpus_mb={corpus_mb:.1f}")
    print(f"result: train_seconds_lmstack={t_ours:.2f}")
    print(f"result: train_seconds_hf={t_hf:.2f}")
    print(f"result: train_ratio_vs_hf={t_ours / t_hf:.2f}")
    if sp is not None:
        print(f"result: train_seconds_sentencepiece={t_sp:.2f}")
    for k in heldout:
        diff = comp[ours_name][k] / comp[hf_name][k] - 1
        print(f"result: bytes_per_token_{k}={comp[ours_name][k]:.3f}")
        print(f"result: compression_vs_hf_{k}_pct={100 * diff:+.2f}")
    print(f"result: encode_mb_s_single={tput['lmstack (tiktoken core)'][0]:.1f}")
    print(f"result: encode_mb_s_batched={tput['lmstack (tiktoken core)'][1]:.1f}")
    print(f"result: encode_vs_hf_single={tput['lmstack (tiktoken core)'][0] / tput['HF tokenizers (our vocab exported)'][0]:.2f}")
    print(f"result: encode_vs_hf_batched={tput['lmstack (tiktoken core)'][1] / tput['HF tokenizers (our vocab exported)'][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
