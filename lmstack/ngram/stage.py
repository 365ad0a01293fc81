"""The ``ngram`` stage: n-gram baselines on the token shards, scored in bits per byte.

Reads ``shards/train.bin``, ``shards/val.bin``, ``shards/meta.json`` (and ``tokenizer/tokenizer.json`` to
decode samples). Counts once at the highest order, fits every (order, method), scores the validation
split, writes ``ngram/results.json``, the best normalised backoff model as ``ngram/model.arpa``,
``plots/ngram_bpb.png`` and the report table. Bits per byte = -log2 P(val) / UTF-8 bytes of val,
the same unit as the transformer's validation metric, so the table is the baseline it must beat.
Everything is recomputed on a re-run (it takes seconds); outputs are written atomically.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from lmstack.ngram.counts import Vocab, count_token_stream, token_stream_to_padded
from lmstack.ngram.models import METHODS, fit
from lmstack.report import pyplot, save_figure

EXPORTABLE = ("modified_kneser_ney", "kneser_ney", "katz")


@dataclass
class Config:
    orders: list[int] = field(default_factory=lambda: [2, 3, 4, 5])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    add_k: float = 0.01                 # k of add-k smoothing (1.0 = Laplace)
    stupid_backoff_alpha: float = 0.4   # Brants et al. (2007)
    max_train_tokens: int = 0           # 0 = the whole train shard
    max_val_tokens: int = 0             # 0 = the whole val shard
    write_arpa: bool = True             # export the best normalised backoff model as ngram/model.arpa
    arpa_max_ngrams: int = 5_000_000    # export the best model with at most this many n-grams (0 = no cap)
    num_samples: int = 3
    sample_max_tokens: int = 60
    chunk_tokens: int = 4_000_000       # counting streams the shard in chunks of this many tokens
    # > 0: also train the neural baselines (lmstack.eval.baselines: FFNN, LSTM, transformer, GLA) with the
    # compute of this many transformer steps and add the equal-compute baseline table to the report
    baselines_reference_steps: int = 0

    def __post_init__(self):
        if not self.orders or any(o < 1 or o > 10 for o in self.orders):
            raise ValueError(f"orders must be a non-empty list of integers in 1..10, got {self.orders}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods: unknown method {bad[0] if bad else '(none given)'!r}; "
                             f"valid methods are: {', '.join(METHODS)}")
        if self.add_k <= 0:
            raise ValueError(f"add_k must be > 0, got {self.add_k}")
        if not 0 < self.stupid_backoff_alpha <= 1:
            raise ValueError(f"stupid_backoff_alpha must be in (0, 1], got {self.stupid_backoff_alpha}")


def _read_meta(path) -> dict:
    from lmstack.runs import read_json

    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (run the tokenizer stage first)")
    meta = read_json(path)
    for key in ("vocab_size", "val"):
        if key not in meta:
            raise ValueError(f"{path}: field {key!r} missing")
    if "bytes" not in meta["val"]:
        raise ValueError(f"{path}: field 'val.bytes' missing (needed for bits per byte)")
    return meta


def _load_tokenizer(run_path, log):
    path = run_path / "tokenizer" / "tokenizer.json"
    if not path.exists():
        return None, f"no {path.relative_to(run_path)}: samples are shown as token ids"
    try:
        from lmstack.tokenizer import Tokenizer
        return Tokenizer.load(path), ""
    except Exception as e:  # the sample is a nicety; the metrics do not depend on it
        log(f"could not load the tokenizer ({type(e).__name__}: {e}); samples are shown as token ids")
        return None, f"tokenizer could not be loaded ({type(e).__name__}): samples are shown as token ids"


def _fmt(x: float, digits: int = 3) -> str:
    return "inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.{digits}f}")


def run(ctx, cfg: Config):
    from lmstack.data.shards import read_tokens
    from lmstack.pipeline import StageResult
    from lmstack.runs import atomic_write_json

    run_path = ctx.run.path
    meta = _read_meta(run_path / "shards" / "meta.json")
    train = read_tokens(run_path / "shards" / "train.bin")
    val = read_tokens(run_path / "shards" / "val.bin")
    if train.size == 0 or val.size == 0:
        raise ValueError(f"{run_path / 'shards'}: empty train or val shard")
    if cfg.max_train_tokens:
        train = train[: cfg.max_train_tokens]
    val_bytes = int(meta["val"]["bytes"])
    if cfg.max_val_tokens and cfg.max_val_tokens < val.size:
        # Bytes of a prefix are not recorded: scale by the token fraction (documented in the report).
        val_bytes = int(round(val_bytes * cfg.max_val_tokens / val.size))
        val = val[: cfg.max_val_tokens]
    tokenizer, tok_note = _load_tokenizer(run_path, ctx.log)
    bos = getattr(tokenizer, "bos_id", None)
    if bos is None:
        bos = int(train[0])  # shards are BOS-prefixed documents
    vocab = Vocab.for_token_ids(int(meta["vocab_size"]))
    if int(np.max(val)) >= int(meta["vocab_size"]):
        raise ValueError(f"{run_path / 'shards' / 'val.bin'}: token id {int(np.max(val))} >= vocab_size "
                         f"{meta['vocab_size']} of shards/meta.json (shards and meta do not match)")
    max_order = max(cfg.orders)

    t0 = time.time()
    counts = count_token_stream(train, bos, vocab, max_order, chunk_tokens=cfg.chunk_tokens, progress=True)
    count_s = time.time() - t0
    ctx.log(f"counted {counts.n_events:,} train events, {[counts.num_grams(k) for k in range(2, max_order + 1)]} "
            f"distinct 2..{max_order}-grams in {count_s:.1f}s")
    val_padded = token_stream_to_padded(np.asarray(val), bos)

    rows, models = [], {}
    for order in sorted(set(cfg.orders)):
        for method in cfg.methods:
            t = time.time()
            opts = {"k": cfg.add_k} if method == "add_k" else {"alpha": cfg.stupid_backoff_alpha}
            model = fit(counts, method, order, **opts)
            build_s = time.time() - t
            t = time.time()
            score, _ = model.score_padded(val_padded)
            rows.append({"order": order, "method": method, "val_ppl": score.perplexity,
                         "val_bpb": score.bits_per_byte(val_bytes), "zero_prob_events": score.n_zero_prob,
                         "val_events": score.n_events, "normalised": model.normalised,
                         "build_s": round(build_s, 4), "score_s": round(time.time() - t, 4)})
            models[(order, method)] = model
    normalised = [r for r in rows if r["normalised"] and math.isfinite(r["val_bpb"])]
    best = min(normalised, key=lambda r: r["val_bpb"]) if normalised else None

    ngram_dir = ctx.run.sub("ngram")
    artifacts = {"results": "ngram/results.json"}
    arpa_note = "ARPA export disabled (write_arpa = false)."
    exportable = [r for r in normalised if r["method"] in EXPORTABLE]
    if cfg.write_arpa and exportable:
        from lmstack.ngram.arpa import write_arpa

        def size(r):
            m = models[(r["order"], r["method"])]
            return sum(m.num_grams(k) for k in range(1, m.order + 1))

        fits = [r for r in exportable if not cfg.arpa_max_ngrams or size(r) <= cfg.arpa_max_ngrams]
        best_exp = min(fits or exportable, key=lambda r: (size(r) if not fits else 0, r["val_bpb"]))
        t = time.time()
        write_arpa(models[(best_exp["order"], best_exp["method"])], ngram_dir / "model.arpa")
        artifacts["arpa"] = "ngram/model.arpa"
        arpa_note = (f"`ngram/model.arpa`: {best_exp['method']} order {best_exp['order']} "
                     f"({(ngram_dir / 'model.arpa').stat().st_size / 1e6:.1f} MB, written in {time.time() - t:.1f}s; "
                     "load it with `kenlm.Model`; words are token ids)" +
                     ("." if best_exp is min(exportable, key=lambda r: r["val_bpb"]) else
                      f"; the best exportable model has more than arpa_max_ngrams = {cfg.arpa_max_ngrams:,} n-grams."))
    elif cfg.write_arpa:
        arpa_note = "No ARPA written: none of katz / kneser_ney / modified_kneser_ney was fitted."

    samples = []
    if best is not None and cfg.num_samples > 0:
        rng = np.random.default_rng(ctx.seed)
        model = models[(best["order"], best["method"])]
        for _ in range(cfg.num_samples):
            ids = [i - 3 for i in model.sample(rng, cfg.sample_max_tokens) if i >= 3]
            samples.append(tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids)))

    per_source = _per_source_bpb(run_path, tokenizer, models[(best["order"], best["method"])], bos, ctx.log) \
        if best is not None and tokenizer is not None else {}
    atomic_write_json(ngram_dir / "results.json", {
        "rows": rows, "best": best, "per_source": per_source, "count_seconds": round(count_s, 3), "train_events": counts.n_events,
        "train_docs": counts.n_sentences, "val_bytes": val_bytes, "samples": samples,
        "distinct_ngrams": {k: counts.num_grams(k) for k in range(2, max_order + 1)}})
    plot = _plot(ctx, rows, cfg)
    if plot:
        artifacts["plot"] = plot

    metrics = {"count_s": round(count_s, 3), "train_events": counts.n_events, "val_events": rows[0]["val_events"]}
    if best is not None:
        metrics.update(val_bpb_best=round(best["val_bpb"], 5), val_ppl_best=round(best["val_ppl"], 4),
                       best_model=f"{best['method']}/{best['order']}")
        for name, v in per_source.items():
            metrics[f"val_bpb_{_metric_key(name)}"] = round(v["bpb"], 4)
    mle = [r for r in rows if r["method"] == "mle"]
    if mle:
        top = max(mle, key=lambda r: r["order"])
        metrics[f"mle{top['order']}_zero_prob_events"] = top["zero_prob_events"]
    report = _report(rows, best, counts, count_s, val_bytes, arpa_note, samples, tok_note, plot, cfg)
    if per_source:
        report += ("\nThe best model per validation source (the pretrain stage's report puts the transformer beside it):\n\n"
                   "| source | docs | tokens | bytes | bits/byte |\n|---|---:|---:|---:|---:|\n" +
                   "".join(f"| {k} | {v['docs']} | {v['tokens']:,} | {v['bytes']:,} | {v['bpb']:.4f} |\n"
                           for k, v in per_source.items()))
    if cfg.baselines_reference_steps > 0:
        report += _baseline_section(ctx, cfg, train, val, val_bytes, bos, int(meta["vocab_size"]), rows, metrics)
    return StageResult(metrics=metrics, artifacts=artifacts, report=report)


def _baseline_section(ctx, cfg, train, val, val_bytes, bos, vocab_size, rows, metrics) -> str:
    """The equal-compute baseline table: this stage's best modified Kneser-Ney row, then the neural families
    trained on the same train shard and scored on the same validation tokens."""
    from lmstack.eval.baselines import BaselineRow, baseline_table, format_table

    mkn = [r for r in rows if r["method"] == "modified_kneser_ney" and math.isfinite(r["val_bpb"])]
    table = []
    if mkn:
        b = min(mkn, key=lambda r: r["val_bpb"])
        table.append(BaselineRow(f"{b['order']}-gram MKN", 0, int(len(train)), 0.0, b["val_bpb"], None, None))
    table += baseline_table(np.asarray(train), np.asarray(val), vocab_size=vocab_size, bos_id=bos,
                            bytes_per_token=val_bytes / len(val), families=("ffnn", "lstm", "transformer", "gla"),
                            reference_steps=cfg.baselines_reference_steps, max_val_tokens=len(val),
                            seed=ctx.seed, log=ctx.log)
    for r in table:
        metrics[f"baseline_bpb_{r.name.split()[0].replace('-', '_')}"] = round(r.val_bpb, 4)
    return ("\n**Baselines at equal compute** (issue 20; every neural row trains for the FLOPs of "
            f"{cfg.baselines_reference_steps} transformer steps of 16x128 tokens on this train shard, scored on the "
            "same validation tokens; the n-gram row is this stage's best modified Kneser-Ney, its n-gram count "
            "is not reported here; timings are only comparable on an idle machine):\n\n" + format_table(table) + "\n")


def _plot(ctx, rows, cfg) -> str | None:
    try:
        plt = pyplot()
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in cfg.methods:
        pts = [(r["order"], r["val_bpb"]) for r in rows if r["method"] == method and math.isfinite(r["val_bpb"])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=method + ("" if method != "stupid_backoff" else " (unnormalised)"))
    if any(r["method"] == "mle" and not math.isfinite(r["val_bpb"]) for r in rows):
        ax.text(0.98, 0.98, "mle: infinite (zero-probability events)", transform=ax.transAxes,
                ha="right", va="top", fontsize=7)
    ax.set_xticks(sorted(set(cfg.orders)))
    ax.set_xlabel("order N")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("n-gram baselines")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, ctx.run.sub("plots") / "ngram_bpb.png")
    return "plots/ngram_bpb.png"


def _metric_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_").replace("__", "_")


def _per_source_bpb(run_path, tokenizer, model, bos: int, log) -> dict:
    """Bits per byte of ``model`` on each validation source (world prose, world QA, code ...)."""
    from lmstack.eval.bpb import PER_SOURCE_MAX_TOKENS, encode_group, validation_groups

    if not (run_path / "data" / "val.jsonl").exists():
        log("no data/val.jsonl: skipping the per-source validation")
        return {}
    out = {}
    for name, texts in validation_groups(run_path).items():
        ids, n_bytes = encode_group(tokenizer, texts, PER_SOURCE_MAX_TOKENS)
        if len(ids) < 2 or n_bytes == 0:
            continue
        score, _ = model.score_padded(token_stream_to_padded(np.asarray(ids), bos))
        out[name] = {"docs": len(texts), "tokens": len(ids), "bytes": n_bytes, "bpb": score.bits_per_byte(n_bytes)}
    return out


def _report(rows, best, counts, count_s, val_bytes, arpa_note, samples, tok_note, plot, cfg) -> str:
    lines = [f"Statistical n-gram baselines over the tokenizer's ids: {counts.n_events:,} training events "
             f"({counts.n_sentences:,} documents) counted in {count_s:.1f}s; validation {rows[0]['val_events']:,} events, "
             f"{val_bytes:,} bytes. Bits per byte (bpb) = -log2 P(val) / bytes, the transformer's unit.", ""]
    lines += ["| order | method | val ppl (per token) | val bits/byte | zero-prob events | build s |",
              "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        name = r["method"] + ("" if r["normalised"] else " (unnormalised)")
        if best is not None and r is best:
            name = f"**{name}**"
        lines.append(f"| {r['order']} | {name} | {_fmt(r['val_ppl'], 2)} | {_fmt(r['val_bpb'], 4)} | "
                     f"{r['zero_prob_events']:,} | {r['build_s']:.2f} |")
    lines.append("")
    mle = [r for r in rows if r["method"] == "mle" and r["zero_prob_events"]]
    if mle:
        r = max(mle, key=lambda r: r["order"])
        lines.append(f"The zero-probability problem: the order-{r['order']} MLE gives probability 0 to "
                     f"{r['zero_prob_events']:,} of {r['val_events']:,} validation events (n-grams never seen in "
                     "training), so its perplexity is infinite; every smoothing method fixes that.")
    lines.append("Stupid backoff scores are not probabilities (they do not sum to 1), so its 'perplexity' is not one; "
                 "it is excluded from the best-model choice.")
    if cfg.max_val_tokens:
        lines.append("Validation was truncated to max_val_tokens; its byte count is scaled by the token fraction.")
    if best is not None:
        lines.append(f"Best normalised model: {best['method']}, order {best['order']}: "
                     f"{best['val_bpb']:.4f} bits/byte (ppl {best['val_ppl']:.2f}).")
    lines += ["", arpa_note]
    if plot:
        lines += ["", f"![n-gram validation bits per byte]({plot})"]
    if samples:
        lines += ["", "Samples from the best model" + (f" ({tok_note})" if tok_note else "") + ":", ""]
        lines += [f"{i + 1}. `{json.dumps(s, ensure_ascii=False)[1:-1][:300]}`" for i, s in enumerate(samples)]
    return "\n".join(lines) + "\n"
