"""n-gram LMs: lmstack vs NLTK's nltk.lm.KneserNeyInterpolated, and KenLM score equality.

On tinyshakespeare (lines 0..90% train, the rest validation; every line is a sentence padded
``<s> ... </s>``), at character and word level, N = 3 and 5:

* build time and query throughput, lmstack vs NLTK, as ratios. NLTK recomputes continuation counts
  by scanning every higher-order n-gram on each query, so it is run on a documented SUBSET: the first
  ``--nltk-lines`` training lines and the first ``--nltk-queries`` validation events; the ratio compares
  both libraries on exactly that subset (lmstack query rate: vectorised batch, and one call per event).
* perplexity of each on the same validation events (NLTK is trained with its own padding, N-1 ``<s>``/``</s>``) (in-vocabulary events only: NLTK gives unknown
  words probability 0); lmstack's full-data perplexity and bits per byte too.
* KenLM equality: lmstack's modified Kneser-Ney (full data) exported to ARPA, loaded with ``kenlm.Model``;
  max |log10 P(sentence)| difference over every validation line.

    .venv/bin/python benchmarks/ngram.py            # full
    .venv/bin/python benchmarks/ngram.py --quick    # smaller NLTK subset, fewer configurations
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from lmstack import DATA_DIR
from lmstack.machine import run_benchmark
from lmstack.ngram import Vocab, count_padded, fit, write_arpa
from lmstack.ngram.counts import split_units

DATA = DATA_DIR / "en" / "tinyshakespeare.txt"


def lmstack_build(lines, unit, order, method):
    t = time.perf_counter()
    vocab = Vocab.from_lines(lines, unit)
    counts = count_padded(vocab.encode_padded(lines), vocab, order)
    model = fit(counts, method)
    return model, time.perf_counter() - t


def nltk_build(lines, unit, order):
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import pad_both_ends
    from nltk.util import everygrams

    t = time.perf_counter()
    # NLTK's own convention, N-1 pads on both sides (with a single <s> its lower-order continuation
    # counts of "<s> ..." contexts are 0 and KneserNeyInterpolated divides by zero).
    padded = [list(pad_both_ends(split_units(line, unit), n=order)) for line in lines]
    lm = KneserNeyInterpolated(order)
    lm.fit((everygrams(s, max_len=order) for s in padded), vocabulary_text=[w for s in padded for w in s])
    return lm, time.perf_counter() - t


def events(lines, unit, order, limit=None):
    """(word, context tuple) for every predicted position, contexts cut at the sentence start."""
    out = []
    for line in lines:
        padded = ["<s>"] + split_units(line, unit) + ["</s>"]
        for i in range(1, len(padded)):
            out.append((padded[i], tuple(padded[max(0, i - order + 1):i])))
            if limit and len(out) >= limit:
                return out
    return out


def lmstack_event_arrays(model, evs):
    H = model.order - 1
    idx = model.vocab.index
    hist = np.full((len(evs), H), -1, dtype=np.int64)
    words = np.array([idx.get(w, 0) for w, _ in evs], dtype=np.int64)
    for r, (_, ctx) in enumerate(evs):
        ids = [idx.get(c, 0) for c in ctx][-H:] if H else []
        if ids:
            hist[r, H - len(ids):] = ids
    return hist, words


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nltk-lines", type=int, default=None, help="training lines given to NLTK (and to lmstack for the ratio)")
    ap.add_argument("--nltk-queries", type=int, default=None, help="validation events NLTK scores")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"{DATA}: not found", file=sys.stderr)
        return 1
    nltk_lines = args.nltk_lines or (800 if args.quick else 1500)
    nltk_queries = args.nltk_queries or (100 if args.quick else 400)
    configs = [("char", 3), ("word", 3)] if args.quick else [("char", 3), ("char", 5), ("word", 3), ("word", 5)]

    lines = DATA.read_text(encoding="utf-8").split("\n")
    cut = int(len(lines) * 0.9)
    train, val = lines[:cut], lines[cut:]
    val_bytes = sum(len(v.encode()) + 1 for v in val)
    sub = train[:nltk_lines]

    rows, eq_rows, results = [], [], {}
    for unit, order in configs:
        # -- the subset both libraries get ---------------------------------------------------
        nl, nltk_build_s = nltk_build(sub, unit, order)
        ours_sub, ours_build_s = lmstack_build(sub, unit, order, "kneser_ney")
        evs = events(val, unit, order, limit=nltk_queries)
        known = [(w, c) for w, c in evs if w in ours_sub.vocab.index]
        t = time.perf_counter()
        nltk_lp = [nl.logscore(w, ("<s>",) * (order - 1 - len(c)) + c) for w, c in known]  # log2
        nltk_q_s = time.perf_counter() - t
        hist, words = lmstack_event_arrays(ours_sub, known)
        ours_lp = ours_sub.log10_probs(hist, words) * math.log2(10)
        all_evs = events(val, unit, order)
        h_all, w_all = lmstack_event_arrays(ours_sub, all_evs)
        t = time.perf_counter()
        ours_sub.log10_probs(h_all, w_all)
        ours_batch_rate = len(all_evs) / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(min(len(known), 2000)):
            ours_sub.log10_prob(words[i], hist[i][hist[i] >= 0])
        ours_call_rate = min(len(known), 2000) / (time.perf_counter() - t)
        nltk_rate = len(known) / nltk_q_s
        ppl = lambda lp: 2 ** (-float(np.mean(lp))) if np.all(np.isfinite(lp)) else float("inf")

        # -- lmstack on the full data ---------------------------------------------------------
        full_kn, full_kn_s = lmstack_build(train, unit, order, "kneser_ney")
        full_mkn, full_mkn_s = lmstack_build(train, unit, order, "modified_kneser_ney")
        val_ids = full_mkn.vocab.encode_lines(val)
        s_kn = full_kn.score_lines(val)
        s_mkn = full_mkn.score_lines(val)

        key = f"{unit}{order}"
        rows.append((unit, order, nltk_build_s, ours_build_s, nltk_rate, ours_batch_rate, ours_call_rate,
                     ppl(nltk_lp), ppl(ours_lp), len(known), full_mkn_s, s_kn, s_mkn))
        results[f"build_ratio_{key}"] = nltk_build_s / ours_build_s
        results[f"query_ratio_batch_{key}"] = ours_batch_rate / nltk_rate
        results[f"query_ratio_call_{key}"] = ours_call_rate / nltk_rate
        results[f"ppl_mkn_full_{key}"] = s_mkn.perplexity
        results[f"bpb_mkn_full_{key}"] = s_mkn.bits_per_byte(val_bytes)

        # -- KenLM equality ------------------------------------------------------------------
        try:
            import kenlm
        except ImportError:
            eq_rows.append((unit, order, "kenlm not installed", "", ""))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.arpa"
            t = time.perf_counter()
            write_arpa(full_mkn, path)
            arpa_s = time.perf_counter() - t
            km = kenlm.Model(str(path))
            ours = np.array([full_mkn.sentence_log10(s) for s in val_ids])
            theirs = np.array([km.score(" ".join(split_units(v, unit)), bos=True, eos=True) for v in val])
        diff = float(np.abs(ours - theirs).max())
        eq_rows.append((unit, order, len(val), f"{diff:.2e}", f"{arpa_s:.2f}"))
        results[f"kenlm_max_abs_diff_{key}"] = diff

    print(f"\n## lmstack vs NLTK KneserNeyInterpolated (subset: first {nltk_lines} train lines, "
          f"first {nltk_queries} val events, in-vocabulary ones scored)\n")
    print("| unit | N | NLTK build s | lmstack build s | build ratio | NLTK queries/s | lmstack batch q/s | "
          "lmstack 1-call q/s | query ratio (batch / 1-call) | NLTK ppl | lmstack KN ppl | events |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (unit, order, nb, ob, nr, obr, ocr, nppl, oppl, n, *_rest) in rows:
        print(f"| {unit} | {order} | {nb:.3f} | {ob:.3f} | {nb / ob:.1f}x | {nr:,.0f} | {obr:,.0f} | {ocr:,.0f} | "
              f"{obr / nr:,.0f}x / {ocr / nr:,.1f}x | {nppl:.2f} | {oppl:.2f} | {n} |")
    print("\nNLTK uses a fixed discount 0.1 and no uniform floor; lmstack KN estimates D = n1/(n1+2 n2) per order, "
          "so the perplexities differ by method, not by bug.\n")
    print("## lmstack on the full data (train 90% of lines, all validation lines)\n")
    print("| unit | N | MKN build s | KN ppl | MKN ppl | MKN bits/byte | OOV events |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (unit, order, *_x, mkn_s, s_kn, s_mkn) in rows:
        print(f"| {unit} | {order} | {mkn_s:.2f} | {s_kn.perplexity:.3f} | {s_mkn.perplexity:.3f} | "
              f"{s_mkn.bits_per_byte(val_bytes):.4f} | {s_mkn.n_oov} |")
    print("\n## KenLM equality (lmstack modified KN -> ARPA -> kenlm.Model)\n")
    print("| unit | N | sentences | max abs diff log10 P(sentence) | ARPA write s |")
    print("|---|---:|---:|---:|---:|")
    for r in eq_rows:
        print("| " + " | ".join(map(str, r)) + " |")
    print()
    for k, v in results.items():
        print(f"result: {k}={v:.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
