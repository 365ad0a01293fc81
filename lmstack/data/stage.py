"""Stage ``data``: read -> clean (filters, PII) -> dedup (exact, decontamination, MinHash, spans) ->
quality classifier -> mix, and write the world's SFT / preference / evaluation sets.

Structure: **map** (per shard of ``shard_docs`` documents, in a multiprocessing pool): normalise,
detect kind and script, filter, mask PII, hash the text, MinHash signature, decontamination check;
kept documents go to ``data/_work/map_*.jsonl``. **Reduce** (one process, over the small per-document
arrays): exact dedup, decontamination, LSH clustering, then a streaming pass for line-level dedup, the
quality classifier and the mix. The map function is a pure function of (config, shard), so a cluster
executor could run it elsewhere.

Outputs (atomic; an interrupted stage leaves the previous outputs or none, and simply restarts):
``data/train.jsonl``, ``data/val.jsonl``, ``data/stats.json``, ``data/quality_classifier.safetensors``,
``data/world/*``, ``plots/data_lengths.png``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lmstack.data.clean import (Filter, FiltersConfig, annotate, apply_filters, build_filters, normalize_text)
from lmstack.data.dedup import (DecontamConfig, Decontaminator, MinHashConfig, MinHashDeduplicator, MinHasher,
                                SpanDedupConfig, SpanDeduplicator, shingle_hashes, text_hash)
from lmstack.data.mix import MixConfig, mix_table, plan_mix
from lmstack.data.pii import PIIConfig, PIIMasker
from lmstack.data.quality import QualityConfig, train_quality_classifier
from lmstack.data.sources import ReadStats, SourceConfig, iter_source


def _default_sources() -> list[SourceConfig]:
    # The world is small but carries the facts later stages are evaluated on: 3 epochs of it.
    return [SourceConfig(kind="world", name="world", weight=3.0),
            SourceConfig(kind="stdlib", name="stdlib", weight=1.0, max_bytes=1_500_000)]


@dataclass
class Config:
    """The ``[data]`` table. Sources are ``[[data.sources]]`` entries (see SourceConfig)."""
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    world: dict[str, Any] = field(default_factory=dict)   # WorldConfig fields (lmstack.data.world), e.g. n_people
    workers: int = 2                 # processes for the per-shard map step (1 = in-process)
    executor: str = "local"          # local (a process pool of `workers`) | ray (Ray tasks: lmstack.data.ray_executor)
    shard_docs: int = 256            # documents per map shard
    strict: bool = False             # true: any bad input line in any source is fatal
    normalize: bool = True           # NFC + newline normalisation + control characters removed
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    exact_dedup: bool = True
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    span_dedup: SpanDedupConfig = field(default_factory=SpanDedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    keep_work: bool = False          # keep data/_work (the map shards) for inspection

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor={self.executor!r}: choose local or ray")
        if self.shard_docs < 1:
            raise ValueError("shard_docs must be >= 1")
        names = [s.label for s in self.sources]
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise ValueError(f"two sources are named {dup[0]!r}; give each [[data.sources]] a distinct name")
        unknown = sorted(set(self.mix.weights) - set(names))
        if unknown:
            raise ValueError(f"mix.weights: unknown source {unknown[0]!r}; sources are: {', '.join(names)}")
        if not self.sources:
            raise ValueError("no data sources: add at least one [[data.sources]] table")


# --- map ---------------------------------------------------------------------------------------

_W: dict[str, Any] = {}


def _init_worker(cfg: Config, references: list[str]) -> None:
    # An exception escaping a Pool initializer makes the pool respawn the worker forever; keep it and
    # re-raise it from map_shard, where it reaches the parent through the task result.
    try:
        _W["cfg"] = cfg
        _W["decontam"] = Decontaminator(references, cfg.decontam) if cfg.decontam.enabled else None
        _W["hasher"] = MinHasher(cfg.minhash.num_perm, cfg.minhash.ngram, cfg.minhash.seed, unit=cfg.minhash.unit)
        _W.pop("error", None)
    except Exception as e:  # noqa: BLE001
        _W["error"] = e


def map_shard(index: int, docs: list[dict], work_dir: str) -> dict:
    """Filter, mask and fingerprint one shard; write the kept documents; return their arrays and counters."""
    if "error" in _W:
        raise RuntimeError(f"data worker failed to start: {_W['error']!r}") from _W["error"]
    cfg: Config = _W["cfg"]
    filters = build_filters(cfg.filters)
    masker = PIIMasker(cfg.pii)
    decontam: Decontaminator | None = _W["decontam"]
    kept: list[dict] = []
    contam_ref, contam_frac = [], []
    n_in = bytes_in = 0
    for doc in docs:
        n_in += 1
        bytes_in += len(doc["text"].encode("utf-8"))
        if cfg.normalize:
            doc["text"] = normalize_text(doc["text"])
        annotate(doc)
        if apply_filters(doc, filters) is not True:
            continue
        doc.pop("_cache", None)
        if cfg.pii.enabled:
            doc["text"], found = masker.mask(doc["text"])
        m = decontam.match(doc["text"]) if decontam is not None else None
        contam_ref.append(-1 if m is None else m[0])
        contam_frac.append(0.0 if m is None else m[1])
        kept.append(doc)
    texts = [d["text"] for d in kept]
    sigs = _W["hasher"].signatures(texts) if cfg.minhash.enabled else np.zeros((len(kept), 0), np.uint32)
    path = Path(work_dir) / f"map_{index:06d}.jsonl"
    offsets, buf, pos = [], [], 0
    for d in kept:
        line = (json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8")
        offsets.append(pos)
        pos += len(line)
        buf.append(line)
    path.write_bytes(b"".join(buf))
    return {
        "index": index, "path": str(path), "n_in": n_in, "bytes_in": bytes_in,
        "filters": {f.name: f.stats() for f in filters},
        "pii": dict(masker.counts), "docs_with_pii": masker.docs_with_pii,
        "offsets": np.array(offsets, dtype=np.int64),
        "hashes": np.array([text_hash(t) for t in texts], dtype=np.uint64),
        "sigs": sigs,
        "contam_ref": np.array(contam_ref, dtype=np.int64), "contam_frac": np.array(contam_frac),
        "nbytes": np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64),
        "sources": [d["source"] for d in kept], "ids": [str(d.get("id", "")) for d in kept],
        "kinds": [d.get("kind", "prose") for d in kept], "langs": [d.get("lang", "other") for d in kept],
    }


def _chunks(it: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk = []
    for doc in it:
        chunk.append(doc)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_map(cfg: Config, doc_iter: Iterator[dict], references: list[str], work_dir: Path, progress=None) -> list[dict]:
    """Run map_shard over the stream, in a pool of cfg.workers processes with a bounded queue
    (at most 2 shards per worker in flight, so memory stays bounded however large the corpus)."""
    if cfg.executor == "ray":
        from lmstack.data.ray_executor import run_map_ray
        return run_map_ray(cfg, doc_iter, references, work_dir, map_shard=map_shard, init_worker=_init_worker,
                           chunks=_chunks, progress=progress)
    results = []
    if cfg.workers <= 1:
        _init_worker(cfg, references)
        for i, chunk in enumerate(_chunks(doc_iter, cfg.shard_docs)):
            results.append(map_shard(i, chunk, str(work_dir)))
            if progress:
                progress(len(chunk))
        return results
    import multiprocessing as mp

    # spawn: the parent may hold threads (torch, tqdm) that fork must not copy.
    ctx = mp.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg, references)) as pool:
        pending: deque = deque()
        for i, chunk in enumerate(_chunks(doc_iter, cfg.shard_docs)):
            pending.append((len(chunk), pool.apply_async(map_shard, (i, chunk, str(work_dir)))))
            while len(pending) >= 2 * cfg.workers:
                n, r = pending.popleft()
                results.append(r.get())
                if progress:
                    progress(n)
        while pending:
            n, r = pending.popleft()
            results.append(r.get())
            if progress:
                progress(n)
    return results


# --- reduce helpers ----------------------------------------------------------------------------------

class DocStore:
    """Random access to the JSON lines written by the map step (file, offset) -> document."""

    def __init__(self):
        self._files: dict[str, Any] = {}

    def get(self, path: str, offset: int) -> dict:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        f.seek(int(offset))
        return json.loads(f.readline())

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()


class AtomicJsonlWriter:
    """Streams lines to ``<path>.tmp`` and renames onto ``path`` only when closed successfully."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "wb")
        self.offsets: list[int] = []
        self.pos = 0

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self.offsets.append(self.pos)
        self.pos += len(line)
        self.f.write(line)

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def world_references(world) -> list[str]:
    """Texts that training data must not contain: eval questions with their answers, eval conversations,
    and eval preference prompts."""
    refs = []
    for item in getattr(world, "facts_eval", []) or []:
        refs.append(f"{item.get('prompt', '')} {item.get('answer', '')}".strip())
    for item in getattr(world, "sft_eval", []) or []:
        msgs = item.get("messages", [])
        refs.append("\n".join(m.get("content", "") for m in msgs if m.get("role") != "system"))
    for item in getattr(world, "prefs_eval", []) or []:
        p = item.get("prompt")
        if isinstance(p, list):
            p = "\n".join(m.get("content", "") for m in p)
        if isinstance(p, str):
            refs.append(p)
    return [r for r in refs if r.strip()]


def build_world_from_config(world_cfg: dict, seed: int):
    from lmstack.config import config_from_dict
    from lmstack.data.world import WorldConfig, build_world

    return build_world(config_from_dict(WorldConfig, dict(world_cfg), "data.world"), seed)


def _snippet(text: str, n: int = 160) -> str:
    return text[:n].replace("\n", " ⏎ ").replace("|", "\\|")


# --- the stage ------------------------------------------------------------------------------------

def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult

    t_start = time.time()
    data_dir = ctx.run.sub("data")
    work = data_dir / "_work"
    if work.exists():
        shutil.rmtree(work)  # leftovers of an interrupted run: restart cleanly
    work.mkdir(parents=True)
    timings: dict[str, float] = {}

    # World: built once, its SFT / preference / eval sets written for later stages.
    t = time.time()
    world = build_world_from_config(cfg.world, ctx.seed)
    world.write(data_dir / "world")
    refs = world_references(world) if cfg.decontam.enabled else []
    timings["world"] = time.time() - t
    ctx.log(f"world written to {data_dir / 'world'}; {len(refs)} decontamination references")

    # Map.
    t = time.time()
    read_stats: dict[str, ReadStats] = {}

    def docs() -> Iterator[dict]:
        for spec in cfg.sources:
            st = read_stats.setdefault(spec.label, ReadStats(strict=cfg.strict or spec.strict))
            yield from iter_source(spec, st, seed=ctx.seed, world=world)

    from tqdm import tqdm
    bar = tqdm(desc="data map", unit="doc", mininterval=1.0, disable=None)
    results = run_map(cfg, docs(), refs, work, progress=bar.update)
    bar.close()
    results.sort(key=lambda r: r["index"])
    timings["map"] = time.time() - t

    n_in = sum(r["n_in"] for r in results)
    bytes_in = sum(r["bytes_in"] for r in results)
    filter_stats: dict[str, dict] = {}
    for r in results:
        for name, st in r["filters"].items():
            filter_stats[name] = Filter.merge_stats(filter_stats[name], st) if name in filter_stats else st
    pii_counts = Counter()
    for r in results:
        pii_counts.update(r["pii"])
    docs_with_pii = sum(r["docs_with_pii"] for r in results)

    paths = [r["path"] for r in results for _ in range(len(r["offsets"]))]
    offsets = np.concatenate([r["offsets"] for r in results]) if results else np.zeros(0, np.int64)
    hashes = np.concatenate([r["hashes"] for r in results]) if results else np.zeros(0, np.uint64)
    sigs = np.concatenate([r["sigs"] for r in results]) if results else np.zeros((0, cfg.minhash.num_perm), np.uint32)
    contam_ref = np.concatenate([r["contam_ref"] for r in results]) if results else np.zeros(0, np.int64)
    contam_frac = np.concatenate([r["contam_frac"] for r in results]) if results else np.zeros(0)
    nbytes = np.concatenate([r["nbytes"] for r in results]) if results else np.zeros(0, np.int64)
    sources = [s for r in results for s in r["sources"]]
    ids = [s for r in results for s in r["ids"]]
    kinds = [s for r in results for s in r["kinds"]]
    langs = [s for r in results for s in r["langs"]]
    n_filtered = len(sources)
    store = DocStore()

    funnel = [("read", n_in, bytes_in)]
    funnel.append(("filters", n_filtered, int(nbytes.sum())))

    # Reduce 1: exact document dedup (first occurrence wins).
    alive = np.ones(n_filtered, dtype=bool)
    if cfg.exact_dedup and n_filtered:
        _, first = np.unique(hashes, return_index=True)
        exact_keep = np.zeros(n_filtered, dtype=bool)
        exact_keep[first] = True
        alive &= exact_keep
    removed_exact = int(n_filtered - alive.sum())
    funnel.append(("exact dedup", int(alive.sum()), int(nbytes[alive].sum())))

    # Reduce 2: decontamination against the eval sets.
    contaminated = alive & (contam_ref >= 0)
    decontam_examples = []
    for i in np.nonzero(contaminated)[0][:3]:
        doc = store.get(paths[i], offsets[i])
        decontam_examples.append((sources[i], ids[i], _snippet(doc["text"]), _snippet(refs[contam_ref[i]]), float(contam_frac[i])))
    alive &= ~contaminated
    removed_decontam = int(contaminated.sum())
    funnel.append(("decontamination", int(alive.sum()), int(nbytes[alive].sum())))

    # Reduce 3: MinHash-LSH near-duplicate clusters over the survivors.
    t = time.time()
    clusters_report: list[tuple[int, list[int]]] = []
    removed_near = 0
    cluster_sizes: Counter = Counter()
    if cfg.minhash.enabled and alive.any():
        survivors = np.nonzero(alive)[0]
        if cfg.executor == "ray":
            from lmstack.data.ray_executor import find_duplicates_ray
            keep_local, clusters = find_duplicates_ray(cfg.minhash, sigs[survivors])
        else:
            keep_local, clusters = MinHashDeduplicator(cfg.minhash).find_duplicates(sigs[survivors])
        for rep, members in clusters.items():
            cluster_sizes[len(members)] += 1
            clusters_report.append((int(survivors[rep]), [int(survivors[m]) for m in members]))
        removed_near = int((~keep_local).sum())
        alive[survivors[~keep_local]] = False
    clusters_report.sort(key=lambda c: -len(c[1]))
    cluster_examples = []
    for rep, members in clusters_report[:3]:
        a = store.get(paths[members[0]], offsets[members[0]])["text"]
        b = store.get(paths[members[1]], offsets[members[1]])["text"]
        sa = shingle_hashes(a, cfg.minhash.ngram, unit=cfg.minhash.unit)
        sb = shingle_hashes(b, cfg.minhash.ngram, unit=cfg.minhash.unit)
        inter = len(np.intersect1d(sa, sb))
        jac = inter / max(1, len(sa) + len(sb) - inter)
        cluster_examples.append((len(members), [f"{sources[m]}:{ids[m]}" for m in members[:4]], _snippet(a, 100), _snippet(b, 100), jac))
    timings["minhash_lsh"] = time.time() - t
    funnel.append(("near dedup (MinHash-LSH)", int(alive.sum()), int(nbytes[alive].sum())))

    # Reduce 4 (streaming): line-level dedup across the corpus, written to stage2.
    t = time.time()
    span = SpanDeduplicator(cfg.span_dedup)
    stage2 = AtomicJsonlWriter(work / "stage2.jsonl")
    s2_src, s2_ids, s2_len, s2_bytes, s2_kind = [], [], [], [], []
    emptied = 0
    for i in np.nonzero(alive)[0]:
        doc = store.get(paths[i], offsets[i])
        if cfg.span_dedup.enabled and doc.get("kind", "prose") in cfg.span_dedup.kinds:
            new_text = span.process(doc["text"])
            if len(new_text.strip()) < cfg.filters.length.min_chars:
                emptied += 1
                continue
            doc["text"] = new_text
        stage2.write(doc)
        s2_src.append(doc["source"])
        s2_ids.append(str(doc.get("id", "")))
        s2_len.append(len(doc["text"]))
        s2_bytes.append(len(doc["text"].encode("utf-8")))
        s2_kind.append(doc.get("kind", "prose"))
    stage2.commit()
    store.close()
    s2_offsets = stage2.offsets
    s2_path = str(stage2.path)
    timings["span_dedup"] = time.time() - t
    funnel.append((f"{cfg.span_dedup.unit} dedup", len(s2_src), int(sum(s2_bytes))))

    # Quality classifier: train on clean docs vs generated noise, score everything, drop low scores.
    t = time.time()
    n2 = len(s2_src)
    scores = np.ones(n2)
    quality_pr: dict[str, Any] = {}
    quality_examples = []
    if cfg.quality.enabled and n2:
        rng = random.Random(ctx.seed)
        sample = sorted(rng.sample(range(n2), min(n2, cfg.quality.max_train_docs)))
        store2 = DocStore()
        clean_texts = [store2.get(s2_path, s2_offsets[i])["text"] for i in sample]
        clf, quality_pr = train_quality_classifier(clean_texts, cfg.quality, seed=ctx.seed, log=ctx.log)
        clf.save(data_dir / "quality_classifier.safetensors")
        batch: list[str] = []
        out_scores = []
        with open(s2_path, "rb") as f:
            for line in f:
                batch.append(json.loads(line)["text"])
                if len(batch) >= 256:
                    out_scores.append(clf.score(batch))
                    batch = []
        if batch:
            out_scores.append(clf.score(batch))
        scores = np.concatenate(out_scores)
        for i in np.argsort(scores)[:3]:
            if scores[i] < cfg.quality.min_score:
                quality_examples.append((s2_src[i], s2_ids[i], float(scores[i]),
                                         _snippet(store2.get(s2_path, s2_offsets[i])["text"])))
        store2.close()
    keep_q = scores >= cfg.quality.min_score if cfg.quality.enabled else np.ones(n2, dtype=bool)
    removed_quality = int((~keep_q).sum())
    timings["quality"] = time.time() - t
    final_idx = np.nonzero(keep_q)[0]
    funnel.append(("quality classifier", len(final_idx), int(sum(s2_bytes[i] for i in final_idx))))

    # Mix and write train / val.
    t = time.time()
    f_src = [s2_src[i] for i in final_idx]
    f_ids = [s2_ids[i] for i in final_idx]
    f_len = np.array([s2_len[i] for i in final_idx])
    f_bytes = np.array([s2_bytes[i] for i in final_idx])
    f_scores = scores[final_idx]
    weights = {s.label: s.weight for s in cfg.sources}
    weights.update(cfg.mix.weights)
    train_order, val_order = plan_mix(f_src, f_ids, f_len, f_scores, weights, cfg.mix, ctx.seed)
    if not train_order:
        top = Counter()
        for st in filter_stats.values():
            top.update(st["removed"])
        raise ValueError(f"the data stage kept no training documents: {n_in} read, {n_filtered} passed the filters, "
                         f"{len(final_idx)} survived dedup and the quality classifier; top filter reasons: "
                         f"{dict(top.most_common(3))}. Relax [data.filters] / [data.quality] min_score or add sources.")
    available: dict[str, list[int]] = {s.label: [0, 0] for s in cfg.sources}
    for s, b in zip(f_src, f_bytes):
        available[s][0] += 1
        available[s][1] += int(b)
    table = mix_table(train_order, val_order, f_src, f_bytes, {k: tuple(v) for k, v in available.items()}, weights)
    store3 = DocStore()
    lengths_by_source: dict[str, list[int]] = {}
    for name, order in (("train", train_order), ("val", val_order)):
        w = AtomicJsonlWriter(data_dir / f"{name}.jsonl")
        try:
            for k in order:
                doc = store3.get(s2_path, s2_offsets[final_idx[k]])
                w.write({"text": doc["text"], "source": doc["source"], "id": doc.get("id", ""),
                         "kind": doc.get("kind", "prose"), "lang": doc.get("lang", "other")})
                if name == "train":
                    lengths_by_source.setdefault(doc["source"], []).append(len(doc["text"]))
        except BaseException:
            w.abort()
            raise
        w.commit()
    store3.close()
    timings["mix_write"] = time.time() - t
    train_bytes = sum(r["train_bytes"] for r in table)
    val_bytes = sum(r["val_bytes"] for r in table)
    funnel.append(("mix: train (weighted)", len(train_order), train_bytes))
    funnel.append(("mix: val", len(val_order), val_bytes))

    # Stats, plots, report.
    reasons: Counter = Counter()
    for st in filter_stats.values():
        reasons.update(st["removed"])
    if removed_exact:
        reasons["exact_dedup"] = removed_exact
    if removed_decontam:
        reasons["decontamination"] = removed_decontam
    if removed_near:
        reasons["near_dedup"] = removed_near
    if emptied:
        reasons[f"{cfg.span_dedup.unit}_dedup:emptied"] = emptied
    if removed_quality:
        reasons["quality_classifier"] = removed_quality
    kind_counts = Counter(kinds)
    lang_counts = Counter(langs)
    src_stats = {name: {"totals": st.totals(), "examples": st.examples} for name, st in read_stats.items()}
    stats = {
        "funnel": [{"step": s, "docs": d, "bytes": b} for s, d, b in funnel],
        "sources": src_stats,
        "filters": filter_stats,
        "removal_reasons": dict(reasons.most_common()),
        "pii": {"counts": dict(pii_counts), "docs_with_pii": docs_with_pii},
        "exact_dedup": {"removed": removed_exact},
        "decontamination": {"references": len(refs), "removed": removed_decontam},
        "near_dedup": {"removed": removed_near, "clusters": len(clusters_report),
                       "cluster_sizes": {str(k): v for k, v in sorted(cluster_sizes.items())}},
        "span_dedup": {"unit": cfg.span_dedup.unit, "removed_spans": span.removed_spans,
                       "removed_chars": span.removed_chars, "emptied_docs": emptied},
        "quality": {"removed": removed_quality, **quality_pr},
        "kinds_after_filters": dict(kind_counts), "langs_after_filters": dict(lang_counts),
        "mix": table,
        "train": {"docs": len(train_order), "bytes": train_bytes},
        "val": {"docs": len(val_order), "bytes": val_bytes},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    from lmstack.runs import atomic_write_json
    atomic_write_json(data_dir / "stats.json", stats)
    plots = _plots(ctx.run.sub("plots"), lengths_by_source, funnel)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)

    metrics = {
        "docs_in": n_in, "bytes_in": bytes_in,
        "docs_train": len(train_order), "bytes_train": train_bytes,
        "docs_val": len(val_order), "bytes_val": val_bytes,
        "removed_filters": n_in - n_filtered, "removed_exact_dup": removed_exact,
        "removed_near_dup": removed_near, "removed_decontam": removed_decontam,
        "removed_quality": removed_quality, "lines_deduped": span.removed_spans,
        "pii_masked": int(sum(pii_counts.values())),
        "bad_input_lines": int(sum(st.totals()["bad_utf8"] + st.totals()["bad_json"] + st.totals()["missing_field"]
                                   for st in read_stats.values())),
    }
    if quality_pr:
        metrics["quality_precision"] = round(quality_pr["precision_clean"], 4)
        metrics["quality_recall"] = round(quality_pr["recall_clean"], 4)
    report = _report(cfg, stats, funnel, filter_stats, reasons, pii_counts, docs_with_pii, cluster_examples,
                     cluster_sizes, span, decontam_examples, refs, quality_pr, quality_examples, table, plots,
                     read_stats, time.time() - t_start)
    artifacts = {"train": "data/train.jsonl", "val": "data/val.jsonl", "stats": "data/stats.json",
                 "world": "data/world"}
    if cfg.quality.enabled and n2:
        artifacts["quality_classifier"] = "data/quality_classifier.safetensors"
    for p in plots:
        artifacts[Path(p).stem] = p
    return StageResult(metrics=metrics, artifacts=artifacts, report=report)


def _plots(plot_dir: Path, lengths_by_source: dict[str, list[int]], funnel) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmstack.runs import atomic_write_bytes
    import io

    out = []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    all_lengths = [x for v in lengths_by_source.values() for x in v]
    if all_lengths:
        bins = np.logspace(np.log10(max(1, min(all_lengths))), np.log10(max(all_lengths) + 1), 40)
        for src, lens in sorted(lengths_by_source.items()):
            ax.hist(lens, bins=bins, alpha=0.6, label=f"{src} ({len(lens)} docs)")
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel("document length (characters, log scale)")
    ax.set_ylabel("documents (train, weighted)")
    ax.set_title("Document lengths after cleaning")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.9)  # fixed margins: tight_layout costs a full draw
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(plot_dir / "data_lengths.png", buf.getvalue())
    out.append("plots/data_lengths.png")

    return out


def _report(cfg, stats, funnel, filter_stats, reasons, pii_counts, docs_with_pii, cluster_examples, cluster_sizes,
            span, decontam_examples, refs, quality_pr, quality_examples, table, plots, read_stats, seconds) -> str:
    L = []
    L.append(f"Sources: {', '.join(f'{s.label} ({s.kind}, weight {cfg.mix.weights.get(s.label, s.weight):g})' for s in cfg.sources)}. "
             f"Map step over shards of {cfg.shard_docs} documents with {cfg.workers} worker(s); total {seconds:.1f} s.")
    L.append("")
    L.append("### Sources read")
    L.append("| source | files | docs | MB | invalid UTF-8 | malformed JSON | missing field | empty |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, st in read_stats.items():
        t = st.totals()
        L.append(f"| {name} | {t['files']} | {t['docs']} | {t['bytes'] / 1e6:.2f} | {t['bad_utf8']} | {t['bad_json']} | "
                 f"{t['missing_field']} | {t['empty']} |")
    problems = [e for st in read_stats.values() for e in st.examples]
    if problems:
        L.append("")
        L.append("First bad-input lines (skipped and counted):")
        L += [f"- `{e}`" for e in problems[:5]]
    L.append("")
    L.append("### Funnel")
    L.append("| step | docs out | MB out | removed docs |")
    L.append("|---|---:|---:|---:|")
    prev = None
    for step, d, b in funnel:
        removed = "" if prev is None or step.startswith("mix") else str(prev - d)
        L.append(f"| {step} | {d} | {b / 1e6:.2f} | {removed} |")
        if not step.startswith("mix"):
            prev = d
    L.append("")
    L.append("### Removal reasons")
    total_removed = sum(reasons.values()) or 1
    L.append("| reason | docs | share of removals |")
    L.append("|---|---:|---:|")
    for r, n in reasons.most_common():
        L.append(f"| {r} | {n} | {n / total_removed:.1%} |")
    L.append("")
    L.append("Filters (applied in order; code documents skip prose-only rules and get the code rules, "
             "see `lmstack/data/clean.py`):")
    L.append("")
    L.append("| filter | seen | kept | not applicable (other kind) | removed |")
    L.append("|---|---:|---:|---:|---:|")
    for name, st in filter_stats.items():
        L.append(f"| {name} | {st['seen']} | {st['kept']} | {st['skipped']} | {sum(st['removed'].values())} |")
    L.append("")
    L.append(f"Documents after the filters by kind: {dict(stats['kinds_after_filters'])}; by script: "
             f"{dict(stats['langs_after_filters'])}.")
    L.append("")
    examples = [(r, e) for st in filter_stats.values() for r, ex in st["examples"].items() for e in ex[:1]]
    if examples:
        L.append("Removed examples (one per reason):")
        L.append("")
        L.append("| reason | example |")
        L.append("|---|---|")
        for r, e in examples[:20]:
            L.append(f"| {r} | {_snippet(e, 140)} |")
        L.append("")
    L.append("### PII masking")
    L.append(f"{docs_with_pii} documents contained PII; placeholders inserted: "
             + (", ".join(f"`<|{k}|>` x {v}" for k, v in sorted(pii_counts.items())) or "none") + ".")
    L.append("")
    L.append("### Dedup")
    nd = stats["near_dedup"]
    L.append(f"- Exact (document hash): {stats['exact_dedup']['removed']} removed.")
    L.append(f"- Decontamination against {len(refs)} evaluation items (>= {cfg.decontam.containment_threshold:.0%} of an item's "
             f"{cfg.decontam.ngram}-gram shingles inside a training doc): {stats['decontamination']['removed']} removed.")
    for src, did, doc, ref, frac in decontam_examples:
        L.append(f"  - `{src}:{did}` contains {frac:.0%} of eval item \"{ref}\": \"{doc}\"")
    L.append(f"- Near-duplicate (MinHash-LSH, {cfg.minhash.unit} {cfg.minhash.ngram}-gram shingles, {cfg.minhash.bands} bands x "
             f"{cfg.minhash.rows} rows): {nd['clusters']} clusters, {nd['removed']} removed (one kept per cluster). "
             f"Cluster sizes: " + (", ".join(f"{k} docs x {v}" for k, v in sorted(cluster_sizes.items())) or "none") + ".")
    if cluster_examples:
        L.append("")
        L.append("| cluster size | members | first doc | second doc | exact Jaccard |")
        L.append("|---:|---|---|---|---:|")
        for size, members, a, b, jac in cluster_examples:
            L.append(f"| {size} | {', '.join(members)} | {a} | {b} | {jac:.2f} |")
    L.append("")
    L.append(f"- {cfg.span_dedup.unit.capitalize()}-level (>= {cfg.span_dedup.min_chars} chars, kinds {cfg.span_dedup.kinds}): "
             f"{span.removed_spans} repeated {cfg.span_dedup.unit}s removed ({span.removed_chars} chars); "
             f"{stats['span_dedup']['emptied_docs']} documents emptied.")
    for line, n in span.examples.most_common(3):
        L.append(f"  - repeated {n} more times: \"{_snippet(line, 100)}\"")
    L.append("")
    if quality_pr:
        L.append("### Quality classifier (fastText-style: hashed word 1-2-grams, word-shape 2-3-grams, char 3-grams)")
        L.append(f"Trained on {quality_pr['train_examples']} examples (clean documents vs generated noisy variants: "
                 f"shuffled words, random characters, boilerplate, keyword spam); held-out {quality_pr['heldout_examples']}.")
        L.append("")
        L.append("| held-out metric | value |")
        L.append("|---|---:|")
        for k in ("precision_clean", "recall_clean", "precision_noisy", "recall_noisy", "accuracy"):
            L.append(f"| {k} | {quality_pr[k]:.3f} |")
        L.append("")
        L.append(f"{stats['quality']['removed']} documents scored below P(clean) = {cfg.quality.min_score} and were removed.")
        for src, did, score, snip in quality_examples:
            L.append(f"- `{src}:{did}` P(clean)={score:.2f}: \"{snip}\"")
        L.append("")
    L.append("### Mix")
    L.append(f"Order: {cfg.mix.order}; validation: {cfg.mix.val_fraction:.0%} of documents per source (document-level split).")
    L.append("")
    L.append("| source | weight | docs available | train docs | train MB | share | epochs | val docs |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        L.append(f"| {r['source']} | {r['weight']:g} | {r['available_docs']} | {r['train_docs']} | {r['train_bytes'] / 1e6:.2f} | "
                 f"{r['share']:.1%} | {r['epochs']:.2f} | {r['val_docs']} |")
    L.append("")
    L.append(f"![Document lengths]({plots[0]})")
    return "\n".join(L) + "\n"

