"""Stage ``tokenizer``: train BPE on data/train.jsonl, then encode train/val into token shards.

Reads:  data/train.jsonl, data/val.jsonl ({"text": ...} per line)
Writes: tokenizer/tokenizer.json (lmstack format), tokenizer/hf/tokenizer.json (HF export),
        tokenizer/ranks.tiktoken (byte mode), shards/{train,val}.bin (each document is
        <|bos|> + its tokens), shards/meta.json, plots/tokenizer_merges.png

Re-running is safe: every file is written atomically, and a tokenizer.json trained with the
same config on the same training file is reused instead of retrained.
"""

from __future__ import annotations

import json
import random
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from lmstack import DATA_DIR
from lmstack.report import pyplot, save_figure
from lmstack.runs import iter_jsonl
from lmstack.tokenizer.core import Tokenizer
from lmstack.tokenizer.pretokenize import PATTERN_NAMES, build_pattern


@dataclass
class Config:
    vocab_size: int = 4096             # total, including 256 byte tokens and the special tokens
    mode: Literal["byte", "char"] = "byte"
    pattern: str = "lmstack"           # "lmstack" | "lmstack_hanchar" | "gpt4" | "gpt2" | a custom regex
    max_digits: int = 2                # numbers split into groups of at most this many digits (0 = no limit)
    char_coverage: float = 0.9995      # char mode: share of character occurrences covered by the alphabet
    max_train_bytes: int = 4_000_000   # training sample cap (documents sampled uniformly when train.jsonl is larger)
    num_workers: int = 2               # processes for chunk counting / threads for encoding
    eval_chars: int = 100_000          # size of each held-out sample (English, Chinese, code) in the report
    eval_data_dir: str = ""            # held-out corpora dir; "" = the repository's data/
    export_hf: bool = True             # also write tokenizer/hf/tokenizer.json


def iter_jsonl_texts(path: Path) -> Iterator[str]:
    """Texts of a jsonl file, with errors that name the file and line."""
    for lineno, record in iter_jsonl(path):
        if not isinstance(record, dict) or "text" not in record:
            raise ValueError(f"{path} line {lineno}: field 'text' missing")
        if not isinstance(record["text"], str):
            raise ValueError(f"{path} line {lineno}: field 'text' must be a string, got {type(record['text']).__name__}")
        yield record["text"]


def training_sample(path: Path, max_bytes: int, seed: int) -> Iterator[str]:
    """Documents of ``path`` up to ``max_bytes`` UTF-8 bytes, drawn uniformly (not the file's
    prefix, which may be sorted by source) when the file is larger than the cap."""
    keep = 1.0 if max_bytes <= 0 else min(1.0, max_bytes / max(1, path.stat().st_size))
    rng = random.Random(seed)
    taken = 0
    for text in iter_jsonl_texts(path):
        if keep < 1.0 and rng.random() >= keep:
            continue
        n = len(text.encode("utf-8"))
        if max_bytes > 0 and taken + n > max_bytes and taken > 0:
            break
        taken += n
        yield text


def encode_file(tok: Tokenizer, path: Path, num_workers: int, batch_docs: int = 512) -> tuple[np.ndarray, dict]:
    """All documents of ``path`` as one id array, each prefixed with <|bos|>."""
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    parts: list[np.ndarray] = []
    docs = nbytes = nchars = empty = 0
    batch: list[str] = []

    def flush():
        nonlocal batch
        for ids in tok.encode_batch(batch, num_workers=num_workers):
            parts.append(np.array([tok.bos_id] + ids, dtype=dtype))
        batch = []

    for text in iter_jsonl_texts(path):
        if not text:
            empty += 1  # nothing to learn from; counted in meta.json rather than dropped silently
            continue
        docs += 1
        nbytes += len(text.encode("utf-8"))
        nchars += len(text)
        batch.append(text)
        if len(batch) >= batch_docs:
            flush()
    if batch:
        flush()
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return tokens, {"tokens": int(tokens.size), "bytes": nbytes, "chars": nchars, "docs": docs,
                    "empty_docs_skipped": empty}


# ---------------------------------------------------------------- held-out evaluation samples

def _eval_data_dir(cfg: Config) -> Path:
    return Path(cfg.eval_data_dir) if cfg.eval_data_dir else DATA_DIR


def heldout_samples(cfg: Config) -> tuple[dict[str, str], list[str]]:
    """English (end of tinyshakespeare), Chinese (last poems of poetry.jsonl) and code
    (idlelib, a stdlib package the default data recipe excludes)."""
    samples: dict[str, str] = {}
    notes: list[str] = []
    n = cfg.eval_chars
    root = _eval_data_dir(cfg)
    en = root / "en" / "tinyshakespeare.txt"
    if en.exists():
        samples["en"] = en.read_text(encoding="utf-8")[-n:]
    else:
        notes.append(f"English sample skipped: {en} not found")
    zh = root / "zh" / "poetry.jsonl"
    if zh.exists():
        # Only the tail is needed: read the last few bytes per wanted character, not the whole file.
        with zh.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 4 * n - 65536))
            tail = f.read().decode("utf-8", errors="ignore").splitlines()[1:]
        texts, size = [], 0
        for line in reversed(tail):
            if not line.strip():
                continue
            t = json.loads(line).get("text", "")
            texts.append(t)
            size += len(t)
            if size >= n:
                break
        samples["zh"] = "\n".join(reversed(texts))[:n]
    else:
        notes.append(f"Chinese sample skipped: {zh} not found")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code_files = sorted((stdlib / "idlelib").glob("*.py")) or sorted(stdlib.glob("*.py"))
    code, size = [], 0
    for p in code_files:
        try:
            t = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        code.append(t)
        size += len(t)
        if size >= n:
            break
    if code:
        samples["code"] = "".join(code)[:n]
    else:
        notes.append(f"code sample skipped: no readable .py files under {stdlib}")
    return samples, notes


def compression(tok: Tokenizer, text: str) -> dict[str, float]:
    ids = tok.encode_ordinary(text)
    return {"bytes_per_token": len(text.encode("utf-8")) / max(1, len(ids)),
            "tokens_per_char": len(ids) / max(1, len(text)), "tokens": len(ids)}


def _plot_merges(tok: Tokenizer, path: Path) -> bool:
    counts = tok.metadata.get("merge_counts")
    if not counts:
        return False
    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    ax1.loglog(np.arange(1, len(counts) + 1), counts)
    ax1.set_xlabel("merge rank")
    ax1.set_ylabel("pair frequency when merged")
    ax1.set_title("BPE merge frequencies")
    lengths = np.bincount(np.minimum([len(tok.token_bytes(i)) for i in range(tok.n_regular)], 24))
    ax2.bar(np.arange(len(lengths))[1:], lengths[1:])
    ax2.set_xlabel("token length (bytes, 24 = 24 or more)")
    ax2.set_ylabel("tokens")
    ax2.set_title("vocabulary token lengths")
    fig.tight_layout()
    save_figure(fig, path)
    return True


# ---------------------------------------------------------------- the stage

def _train_signature(cfg: Config, train_path: Path, seed: int) -> dict:
    st = train_path.stat()
    return {"config": {k: v for k, v in asdict(cfg).items() if k not in ("eval_chars", "eval_data_dir", "export_hf", "num_workers")},
            "pattern_regex": build_pattern(cfg.pattern, cfg.max_digits),
            "train_file_bytes": st.st_size, "train_file_mtime_ns": st.st_mtime_ns, "seed": seed}


def _load_or_train(cfg: Config, ctx, train_path: Path, tok_path: Path) -> tuple[Tokenizer, bool]:
    """The tokenizer of an earlier run with the same config and training file, else a new one.
    Returns (tokenizer, trained now)."""
    from lmstack.tokenizer.train import train_tokenizer

    signature = _train_signature(cfg, train_path, ctx.seed)
    if tok_path.exists():
        try:
            previous = Tokenizer.load(tok_path)
            if previous.metadata.get("signature") == signature:
                ctx.log(f"reusing {tok_path} (same config and training file)")
                return previous, False
        except ValueError:
            pass
    ctx.log(f"training {cfg.mode}-level BPE, vocab {cfg.vocab_size}, on up to {cfg.max_train_bytes:,} bytes of {train_path.name}")
    tok = train_tokenizer(training_sample(train_path, cfg.max_train_bytes, ctx.seed), cfg.vocab_size,
                          mode=cfg.mode, pattern=cfg.pattern, max_digits=cfg.max_digits,
                          char_coverage=cfg.char_coverage, processes=max(1, cfg.num_workers))
    if not tok.metadata.get("train_chars"):
        raise ValueError(f"{train_path}: no text to train the tokenizer on (every document is empty)")
    if tok.vocab_size < cfg.vocab_size:
        ctx.log(f"warning: the training sample ran out of pairs to merge; vocabulary is {tok.vocab_size}, "
                f"not the requested {cfg.vocab_size} (shards/meta.json records the real size)")
    tok.metadata["signature"] = signature
    tok.save(tok_path)
    return tok, True


def _export(cfg: Config, tok: Tokenizer, tok_dir: Path, artifacts: dict) -> None:
    from lmstack.tokenizer.interop import export_hf, export_tiktoken

    if cfg.export_hf:
        export_hf(tok, tok_dir / "hf")
        artifacts["tokenizer_hf"] = "tokenizer/hf/tokenizer.json"
    if tok.tiktoken_compatible():
        export_tiktoken(tok, tok_dir / "ranks.tiktoken")
        artifacts["tokenizer_tiktoken"] = "tokenizer/ranks.tiktoken"


def _write_shards(cfg: Config, ctx, tok: Tokenizer, splits: dict[str, Path], artifacts: dict) -> tuple[dict, float]:
    """Encode each split into ``shards/<split>.bin`` and write ``shards/meta.json``.
    Returns (the meta, seconds spent encoding)."""
    from lmstack.data.shards import write_tokens
    from lmstack.runs import atomic_write_json

    t0 = time.perf_counter()
    shards_dir = ctx.run.sub("shards")
    shard_meta: dict = {}
    for split, path in splits.items():
        tokens, stats = encode_file(tok, path, cfg.num_workers)
        write_tokens(shards_dir / f"{split}.bin", tokens)
        shard_meta[split] = stats
        artifacts[f"shard_{split}"] = f"shards/{split}.bin"
    encode_seconds = time.perf_counter() - t0
    shard_meta.update(vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                      tokenizer="tokenizer/tokenizer.json")
    atomic_write_json(shards_dir / "meta.json", shard_meta)
    artifacts["shard_meta"] = "shards/meta.json"
    ctx.log(f"shards: train {shard_meta['train']['tokens']:,} tokens, val {shard_meta['val']['tokens']:,} tokens "
            f"({encode_seconds:.1f}s, backend {tok.backend})")
    return shard_meta, encode_seconds


def _compression_rows(cfg: Config, tok: Tokenizer, shard_meta: dict, metrics: dict) -> tuple[list[tuple], list[str]]:
    """Bytes per token and tokens per character on the validation split and the held-out samples
    (added to ``metrics``). Returns the report rows and the notes on missing samples."""
    rows = []
    val_tokens_no_bos = shard_meta["val"]["tokens"] - shard_meta["val"]["docs"]
    if val_tokens_no_bos > 0:
        metrics["bytes_per_token_val"] = round(shard_meta["val"]["bytes"] / val_tokens_no_bos, 4)
        metrics["tokens_per_char_val"] = round(val_tokens_no_bos / max(1, shard_meta["val"]["chars"]), 4)
        rows.append(("val (in-domain, data/val.jsonl)", shard_meta["val"]["bytes"], val_tokens_no_bos,
                     metrics["bytes_per_token_val"], metrics["tokens_per_char_val"]))
    samples, notes = heldout_samples(cfg)
    for name, text in samples.items():
        c = compression(tok, text)
        metrics[f"bytes_per_token_{name}"] = round(c["bytes_per_token"], 4)
        metrics[f"tokens_per_char_{name}"] = round(c["tokens_per_char"], 4)
        label = {"en": "English (end of tinyshakespeare)", "zh": "Chinese (last poems of poetry.jsonl)",
                 "code": "code (stdlib idlelib)"}[name]
        rows.append((label, len(text.encode("utf-8")), c["tokens"], c["bytes_per_token"], c["tokens_per_char"]))
    return rows, notes


def _longest_tokens_table(tok: Tokenizer) -> list[str]:
    # Whitespace runs (code indentation) are usually the longest tokens; list the others.
    visible = [i for i in range(tok.n_regular) if tok.token_bytes(i).strip()]
    longest = sorted(visible, key=lambda i: (-len(tok.token_bytes(i)), i))[:15]
    longest_ws = max((len(tok.token_bytes(i)) for i in range(tok.n_regular) if not tok.token_bytes(i).strip()), default=0)
    lines = [f"Longest tokens learned (the longest whitespace-only token is {longest_ws} bytes; spaces shown as ␣):", "",
             "| id | bytes | token |", "|---:|---:|---|"]
    for i in longest:
        shown = tok.id_to_token(i).replace(" ", "␣").replace("|", "\\|").replace("\n", "\\n").replace("\t", "\\t")
        code = f"`` {shown} ``" if "`" in shown else f"`{shown}`"
        lines.append(f"| {i} | {len(tok.token_bytes(i))} | {code} |")
    return lines


def _report(tok: Tokenizer, trained_now: bool, shard_meta: dict, encode_seconds: float, rows: list[tuple],
            notes: list[str], plot_ok: bool) -> str:
    meta = tok.metadata
    lines = [
        f"{tok.mode}-level BPE, vocabulary {tok.vocab_size} ({len(tok.merges)} merges + base symbols + "
        f"{len(tok.special_tokens)} special tokens), pattern `{meta.get('pattern_name', 'custom')}` "
        f"(digit groups <= {meta.get('max_digits', '?')}), encoder backend `{tok.backend}`.",
        "",
        f"Training: {meta.get('train_chars', 0):,} characters, {meta.get('unique_chunks', 0):,} unique chunks, "
        f"{meta.get('train_seconds', 0):.2f} s ({meta.get('merges_per_second', 0):,.0f} merges/s)"
        + ("" if trained_now else " (reused from an earlier run)") + ".",
        f"Encoding the shards took {encode_seconds:.2f} s: train {shard_meta['train']['tokens']:,} tokens / "
        f"{shard_meta['train']['docs']:,} docs, val {shard_meta['val']['tokens']:,} tokens / {shard_meta['val']['docs']:,} docs.",
        "",
        "| sample | bytes | tokens | bytes/token | tokens/char |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, nb, nt, bpt, tpc in rows:
        lines.append(f"| {name} | {nb:,} | {nt:,} | {bpt:.3f} | {tpc:.3f} |")
    lines += ["", *[f"_{n}_" for n in notes], "", *_longest_tokens_table(tok)]
    if plot_ok:
        lines += ["", "![BPE merges](plots/tokenizer_merges.png)"]
    return "\n".join(lines) + "\n"


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult

    if cfg.pattern not in PATTERN_NAMES and len(cfg.pattern) < 8:
        raise ValueError(f"[tokenizer] pattern: {cfg.pattern!r} is not one of {', '.join(PATTERN_NAMES)} (or a regex)")
    data_dir = ctx.run.path / "data"
    splits = {"train": data_dir / "train.jsonl", "val": data_dir / "val.jsonl"}
    for p in splits.values():
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: run the data stage first (lmstack data)")
    tok_dir = ctx.run.sub("tokenizer")
    tok, trained_now = _load_or_train(cfg, ctx, splits["train"], tok_dir / "tokenizer.json")
    ctx.log(f"tokenizer: {tok!r}")
    artifacts = {"tokenizer": "tokenizer/tokenizer.json"}
    _export(cfg, tok, tok_dir, artifacts)
    shard_meta, encode_seconds = _write_shards(cfg, ctx, tok, splits, artifacts)
    meta = tok.metadata
    metrics: dict = {
        "vocab_size": tok.vocab_size, "mode": tok.mode, "merges": len(tok.merges),
        "train_seconds": meta.get("train_seconds", 0.0), "train_chars": meta.get("train_chars", 0),
        "merges_per_second": meta.get("merges_per_second", 0.0), "encode_seconds": round(encode_seconds, 3),
        "train_tokens": shard_meta["train"]["tokens"], "val_tokens": shard_meta["val"]["tokens"],
        "backend": tok.backend,
    }
    rows, notes = _compression_rows(cfg, tok, shard_meta, metrics)
    plot_ok = _plot_merges(tok, ctx.run.sub("plots") / "tokenizer_merges.png")
    if plot_ok:
        artifacts["plot_merges"] = "plots/tokenizer_merges.png"
    report = _report(tok, trained_now, shard_meta, encode_seconds, rows, notes, plot_ok)
    return StageResult(metrics=metrics, artifacts=artifacts, report=report)
