"""MinHash-LSH near-duplicate detection: lmstack vs datasketch on data/zh/poetry.jsonl.

Both get the same shingles (word 5-grams, CJK character = word, so Chinese poems give character
5-grams), the same number of permutations (112) and the same banding (14 bands x 8 rows).
Ground truth: the exact Jaccard similarity of every pair that either method proposes as a candidate.
A pair is a true near-duplicate when its exact Jaccard is >= 0.8. Each method reports a pair when it is
an LSH candidate and its MinHash-estimated Jaccard is >= 0.8 ("verified"); the raw LSH candidates are
scored too. Also measures the throughput of the filter chain + PII masking in MB/s (one process).

    .venv/bin/python benchmarks/dedup.py            # all 34k poems
    .venv/bin/python benchmarks/dedup.py --quick    # first 6000 poems
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


from lmstack import DATA_DIR
from lmstack.machine import run_benchmark
from lmstack.data.clean import FiltersConfig, annotate, apply_filters, build_filters, normalize_text
from lmstack.data.dedup import MinHasher, MinHashLSH, shingle_strings
from lmstack.data.pii import PIIMasker
from lmstack.data.sources import read_stdlib, ReadStats

NGRAM, NUM_PERM, BANDS, ROWS, THRESHOLD = 5, 112, 14, 8, 0.8


def load_poems(limit: int | None) -> list[str]:
    texts = []
    with open(DATA_DIR / "zh" / "poetry.jsonl", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if limit and len(texts) >= limit:
                break
    return texts


def run_lmstack(texts: list[str]):
    t0, c0 = time.perf_counter(), time.process_time()
    sigs = MinHasher(NUM_PERM, NGRAM, seed=1).signatures(texts)
    valid = ~(sigs == MinHasher.EMPTY).all(axis=1)
    pairs = MinHashLSH(BANDS, ROWS).candidate_pairs(sigs, valid)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    est = {p: float(np.mean(sigs[p[0]] == sigs[p[1]])) for p in pairs}
    return seconds, cpu, pairs, est


def run_datasketch(texts: list[str]):
    from datasketch import MinHash, MinHashLSH as DSLSH

    t0, c0 = time.perf_counter(), time.process_time()
    lsh = DSLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    mhs = []
    for i, t in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([s.encode("utf-8") for s in shingle_strings(t, NGRAM)])
        mhs.append(m)
        lsh.insert(i, m)
    pairs = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    est = {p: mhs[p[0]].jaccard(mhs[p[1]]) for p in pairs}
    return seconds, cpu, pairs, est


def pr(reported: set, truth: set) -> tuple[float, float]:
    tp = len(reported & truth)
    return tp / max(1, len(reported)), tp / max(1, len(truth))


def filter_throughput(texts: list[str]) -> tuple[float, int]:
    filters = build_filters(FiltersConfig())
    masker = PIIMasker()
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    t0 = time.process_time()
    for t in texts:
        doc = annotate({"text": normalize_text(t)})
        if apply_filters(doc, filters) is True:
            masker.mask(doc["text"])
    return nbytes / 1e6 / (time.process_time() - t0), nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="first 6000 poems only")
    args = ap.parse_args(argv)
    texts = load_poems(6000 if args.quick else None)
    print(f"{len(texts)} documents from {DATA_DIR / 'zh' / 'poetry.jsonl'}; shingles: word {NGRAM}-grams; "
          f"{NUM_PERM} permutations; {BANDS} bands x {ROWS} rows", file=sys.stderr)

    t_lm, c_lm, pairs_lm, est_lm = run_lmstack(texts)
    t_ds, c_ds, pairs_ds, est_ds = run_datasketch(texts)

    # Ground truth over all candidate pairs of either method.
    shingles: dict[int, set] = {}

    def sset(i):
        if i not in shingles:
            shingles[i] = set(shingle_strings(texts[i], NGRAM))
        return shingles[i]

    exact = {}
    for p in pairs_lm | pairs_ds:
        a, b = sset(p[0]), sset(p[1])
        exact[p] = len(a & b) / max(1, len(a | b))
    truth = {p for p, j in exact.items() if j >= THRESHOLD}

    rows = []
    for name, secs, cpu, pairs, est in (("lmstack", t_lm, c_lm, pairs_lm, est_lm),
                                        ("datasketch", t_ds, c_ds, pairs_ds, est_ds)):
        verified = {p for p in pairs if est[p] >= THRESHOLD}
        p_v, r_v = pr(verified, truth)
        p_c, r_c = pr(pairs, truth)
        err = np.mean([abs(est[p] - exact[p]) for p in pairs]) if pairs else float("nan")
        rows.append((name, len(texts) / cpu, secs, len(pairs), p_c, r_c, len(verified), p_v, r_v, err, cpu))

    print()
    print(f"| method | docs/s (CPU time) | CPU s | wall s | LSH candidate pairs | cand. precision | cand. recall | "
          f"pairs est. J>={THRESHOLD} | precision | recall | mean abs(est J - exact J) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:,.0f} | {r[10]:.2f} | {r[2]:.2f} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]} | {r[7]:.3f} | {r[8]:.3f} | {r[9]:.4f} |")
    ratio = rows[0][1] / rows[1][1]
    print()
    print("docs/s uses the process CPU time (both methods are single-threaded), so that other jobs on a shared "
          "machine do not distort the ratio; wall seconds are shown too.")
    print(f"True near-duplicate pairs (exact Jaccard >= {THRESHOLD} among all candidates): {len(truth)}; "
          f"throughput ratio lmstack / datasketch: {ratio:.2f}x")

    stdlib_texts = [d["text"] for d in read_stdlib(ReadStats(), ["test", "tests", "idlelib", "site-packages"], 0,
                                                   max_bytes=1_000_000 if args.quick else 4_000_000)]
    mbps_zh, nb_zh = filter_throughput(texts)
    mbps_code, nb_code = filter_throughput(stdlib_texts)
    print()
    print("| filter chain + PII (1 process, CPU time) | MB | MB/s |")
    print("|---|---:|---:|")
    print(f"| poetry.jsonl (Chinese prose) | {nb_zh / 1e6:.2f} | {mbps_zh:.2f} |")
    print(f"| Python stdlib (code) | {nb_code / 1e6:.2f} | {mbps_code:.2f} |")
    print()
    print(f"result: lmstack_docs_per_s={rows[0][1]:.0f}")
    print(f"result: datasketch_docs_per_s={rows[1][1]:.0f}")
    print(f"result: speedup_vs_datasketch={ratio:.2f}")
    print(f"result: lmstack_precision={rows[0][7]:.3f}")
    print(f"result: lmstack_recall={rows[0][8]:.3f}")
    print(f"result: lmstack_candidate_recall={rows[0][5]:.3f}")
    print(f"result: datasketch_precision={rows[1][7]:.3f}")
    print(f"result: datasketch_recall={rows[1][8]:.3f}")
    print(f"result: filter_mb_per_s_zh={mbps_zh:.2f}")
    print(f"result: filter_mb_per_s_code={mbps_code:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
