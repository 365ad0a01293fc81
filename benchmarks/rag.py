"""Retrieval, RAG and agents: lmstack's BM25 vs rank-bm25 / bm25s on the same tokens; and, on a run that has
been through the ``apps`` stage, dense vs BM25 vs hybrid recall, closed-book vs RAG QA, the "cannot find"
rate, and the model alone vs the ReAct agent with tools.

Part 1 (no model): the corpus is the world's pretraining documents chunked by sentences plus one passage per
entity; questions are the world's held-out facts_eval phrasings; the gold chunk is the asked entity's passage
in the question's language. Scores must equal the peers' within 1e-6 (same tokens, same formula).
Part 2 (``--run``): the measurements of ``lmstack.apps.stage.measure`` on the run's checkpoints/apps.

    .venv/bin/python benchmarks/rag.py --quick                      # part 1 on a small world
    .venv/bin/lmstack apps --run runs/speedrun                      # once, after `make run`
    .venv/bin/python benchmarks/rag.py --run runs/speedrun          # both parts, full size
    .venv/bin/python benchmarks/rag.py --compare-init [--run runs/speedrun]   # part 3: MLM vs decoder init

Part 3 (``--compare-init``, issue 20): the dense retriever initialised from a masked LM vs from the decoder,
both pretrained from scratch with equal compute on the same tokens, fine-tuned with the same budget, scored
by recall@1/@5 on the same held-out paraphrased questions (``lmstack.apps.dense_init``). With ``--run`` the
run's tokenizer, world and training text are used, and the run's own pretrained decoder is a fourth row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lmstack.machine import run_benchmark
from lmstack.apps.bm25 import BM25, search_tokens
from lmstack.apps.chunking import chunk_by_sentences
from lmstack.apps.evaluate import facts_eval_questions, gold_doc
from lmstack.apps.kg import kg_from_world
from lmstack.apps.worldqa import entity_passages
from lmstack.data.world import WorldConfig, build_world


def corpus_config(quick: bool) -> WorldConfig:
    return WorldConfig(n_people=12, n_sft_only_people=4, n_cities=6, n_countries=8, bios_per_person=2,
                       n_stories=20, n_geo_docs=6, n_quiz_docs=6, n_arith_docs=4, n_parallel_docs=6,
                       n_sft_train=20, n_sft_eval=10, n_prefs_train=6, n_prefs_eval=4) if quick else WorldConfig()


def corpus(quick: bool):
    w = build_world(corpus_config(quick), seed=1337)
    kg = kg_from_world(w)
    ids, texts = [], []
    for p in entity_passages(kg):
        ids.append(p["id"])
        texts.append(p["text"])
    for n, doc in enumerate(w.pretrain_docs()):
        for m, chunk in enumerate(chunk_by_sentences(doc["text"], 300, 0)):
            ids.append(f"doc{n}:{m}")
            texts.append(chunk)
    return ids, texts, facts_eval_questions(w.facts_eval)


def ranked(scores: np.ndarray, k: int) -> np.ndarray:
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def bm25_part(quick: bool) -> tuple[list, dict]:
    ids, texts, questions = corpus(quick)
    tokens = [search_tokens(t) for t in texts]
    queries = [search_tokens(q["question"]) for q in questions]
    rows, results = [], {}
    peers = []
    try:
        import rank_bm25
        peers.append(("okapi", "rank-bm25 BM25Okapi", lambda: rank_bm25.BM25Okapi(tokens, k1=1.5, b=0.75, epsilon=0.25),
                      lambda m, q: m.get_scores(q)))
    except ImportError:
        print("rank-bm25 not installed: skipped (pip install rank-bm25)")
    try:
        import bm25s

        def build_bm25s():
            m = bm25s.BM25(k1=1.5, b=0.75, method="lucene", dtype="float64")
            m.index(tokens, show_progress=False)
            return m
        vocab = {t for d in tokens for t in d}
        # bm25s scores each distinct query token once and only knows indexed tokens
        peers.append(("lucene", "bm25s (lucene)", build_bm25s,
                      lambda m, q: m.get_scores(list(dict.fromkeys(t for t in q if t in vocab))) if any(t in vocab for t in q)
                      else np.zeros(len(tokens))))
    except ImportError:
        print("bm25s not installed: skipped (pip install bm25s)")
    for variant, peer_name, build_peer, peer_scores in peers:
        t0 = time.perf_counter()
        ours = BM25(k1=1.5, b=0.75, variant=variant)
        ours.add(tokens)
        ours.scores(queries[0])  # statistics are built lazily: count them in the build
        t_ours_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        peer = build_peer()
        t_peer_build = time.perf_counter() - t0
        qs = queries if variant == "okapi" else [list(dict.fromkeys(q)) for q in queries]
        t0 = time.perf_counter()
        s_ours = [ours.scores(q) for q in qs]
        t_ours_q = time.perf_counter() - t0
        t0 = time.perf_counter()
        s_peer = [np.asarray(peer_scores(peer, q), dtype=np.float64) for q in qs]
        t_peer_q = time.perf_counter() - t0
        max_diff = max(float(np.abs(a - b).max()) for a, b in zip(s_ours, s_peer))
        recall = {}
        for who, scores in (("ours", s_ours), ("peer", s_peer)):
            for k in (1, 5):
                hits = [gold_doc(q) in {ids[i] for i in ranked(s, k)} for q, s in zip(questions, scores)]
                recall[(who, k)] = float(np.mean(hits))
        rows.append((f"BM25 {variant}", peer_name, len(texts), len(questions), f"{max_diff:.2e}",
                     f"{recall[('ours', 1)]:.3f} / {recall[('peer', 1)]:.3f}",
                     f"{recall[('ours', 5)]:.3f} / {recall[('peer', 5)]:.3f}",
                     f"{t_peer_build / t_ours_build:.2f}", f"{t_peer_q / t_ours_q:.2f}"))
        results[f"bm25_{variant}_max_abs_diff"] = f"{max_diff:.2e}"
        results[f"bm25_{variant}_recall@1"] = f"{recall[('ours', 1)]:.3f}"
        results[f"bm25_{variant}_recall@5"] = f"{recall[('ours', 5)]:.3f}"
    return rows, results


def init_part(run: Path | None, quick: bool) -> tuple[list, dict]:
    from lmstack.apps.dense import DenseConfig
    from lmstack.apps.dense_init import InitCompareConfig, compare_inits, world_retrieval_task

    cfg = InitCompareConfig()
    if quick:
        cfg = InitCompareConfig(d_model=64, n_layers=2, pretrain_steps=60, dense=DenseConfig(steps=40, batch_size=16))
    extra = {}
    if run is not None:
        import json

        from lmstack.align import common
        from lmstack.apps.kg import kg_from_world_json

        tok = common.load_tokenizer(run)
        kg = kg_from_world_json(run / "data" / "world" / "world.json")
        with open(run / "data" / "train.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        facts = common.read_jsonl(run / "data" / "world" / "facts_eval.jsonl")
        if not quick:
            extra["run's pretrained decoder"] = common.load_model(run, "pretrain", "cpu", needed_by="benchmarks/rag.py")
    else:
        from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

        w = build_world(corpus_config(quick), seed=1337)
        kg = kg_from_world(w)
        texts = [d["text"] for d in w.pretrain_docs()]
        tok = train_tokenizer(texts, 1024 if quick else 4096, special_tokens=list(SPECIAL_TOKENS), progress=False)
        facts = w.facts_eval
    pairs, passages, eval_sets = world_retrieval_task(kg, facts)
    rows = compare_inits(texts, tok, pairs, passages, eval_sets, cfg, extra, progress=True)
    results = {}
    table = []
    for r in rows:
        key = r["init"].replace(" ", "_").replace("'", "")
        cells = [r["init"], r["family"], f"{r['params'] / 1e6:.2f}M",
                 "-" if r["pretrain_loss"] is None else f"{r['pretrain_loss']:.3f}",
                 "-" if r["cosine_before"] is None else f"{r['cosine_before']:.3f}", f"{r['dense_loss']:.3f}"]
        for name in eval_sets:
            cells.append(f"{r[f'{name} recall@1']:.3f} / {r[f'{name} recall@5']:.3f}")
            results[f"init_{key}_{name}_recall@1"] = f"{r[f'{name} recall@1']:.3f}"
            results[f"init_{key}_{name}_recall@5"] = f"{r[f'{name} recall@5']:.3f}"
        table.append(tuple(cells))
    header = ["init", "family", "params", "pretrain loss", "cosine before fine-tuning", "dense loss"] + [f"{n} r@1 / r@5" for n in eval_sets]
    return [header] + table, results


def run_part(run: Path, quick: bool) -> tuple[str, dict]:
    from lmstack.align import common
    from lmstack.apps.dense import DenseEncoder
    from lmstack.apps.kg import KnowledgeGraph
    from lmstack.apps.cli import apps_stage_config
    from lmstack.apps.stage import Config, measure
    from lmstack.apps.store import DocumentStore

    recipe = run / "recipe.json"

    class Ctx:  # the run's seed: it picks the measured questions and the invented people
        seed = json.loads(recipe.read_text()).get("run", {}).get("seed", 1337) if recipe.exists() else 1337
        device = "cpu"

    tok = common.load_tokenizer(run)
    dense_dir = run / "checkpoints" / "dense"
    encoder = DenseEncoder.load(dense_dir, tok) if (dense_dir / "dense.json").exists() else None
    store = DocumentStore.load(run / "apps" / "index", encoder=encoder)
    kg = KnowledgeGraph.load(run / "apps" / "kg.json")
    model = common.load_model(run, "apps", "cpu", needed_by="benchmarks/rag.py")
    rerank_dir = run / "checkpoints" / "rerank"
    reranker = None
    if (rerank_dir / "rerank.json").exists():
        from lmstack.apps.rerank import CrossEncoder
        reranker = CrossEncoder.load(rerank_dir, tok)
    # measure with the settings the run's apps stage trained with (prompt style, k, answer format, seed's people)
    fields = {k: v for k, v in apps_stage_config(run).items() if k in Config.__dataclass_fields__ and not isinstance(v, dict)}
    cfg = Config(**{**fields, "eval_examples": 8 if quick else 0,
                    "retrieval_mode": "hybrid" if encoder else "bm25"})
    metrics, report = measure(Ctx(), cfg, kg, store, model, tok, run, reranker)
    return report, metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small world; 8 questions per measurement with --run")
    p.add_argument("--run", type=Path, help="a run directory after the apps stage (adds part 2)")
    p.add_argument("--compare-init", action="store_true", help="part 3 instead of part 2: the dense retriever "
                   "from a masked LM vs from the decoder (with --run: on that run's tokenizer, world and text)")
    args = p.parse_args()
    rows, results = bm25_part(args.quick)
    print("## BM25: lmstack vs peers on the same tokens\n")
    print("| index | peer | chunks | questions | max abs score diff | recall@1 ours / peer | recall@5 ours / peer "
          "| build time peer/ours | query time peer/ours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    if args.compare_init:
        table, init_results = init_part(args.run, args.quick)
        print("\n## Dense retriever initialisation: masked LM vs decoder (equal pretraining compute, same "
              "fine-tuning)\n")
        print("| " + " | ".join(table[0]) + " |")
        print("|" + "---|" * len(table[0]))
        for r in table[1:]:
            print("| " + " | ".join(r) + " |")
        results.update(init_results)
    elif args.run:
        report, metrics = run_part(args.run, args.quick)
        print(f"\n## {args.run}: retrieval, RAG and agents\n")
        print(report)
        for key in ("world_paraphrases_bm25_recall@5", "world_paraphrases_dense_recall@5",
                    "world_paraphrases_hybrid_recall@5", "world_paraphrases_rerank_recall@5", "closed_book", "rag", "cannot_find",
                    "fictional_closed_book", "fictional_rag", "fictional_cannot_find", "arith_model_alone",
                    "arith_agent", "multihop_heldout_model_alone", "multihop_heldout_agent", "extraction_precision",
                    "extraction_recall"):
            if key in metrics:
                results[key] = metrics[key]
    print()
    for k, v in results.items():
        print(f"result: {k}={v}")


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
