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
from lmstack.data.world import WorldConfig, build_world
from lmstack.report import pyplot, save_figure


def _default_sources() -> list[SourceConfig]:
    # The world is small but carries the facts later stages are evaluated on: 3 epochs of it.
    return [SourceConfig(kind="world", name="world", weight=3.0),
            SourceConfig(kind="stdlib", name="stdlib", weight=1.0, max_bytes=1_500_000)]


@dataclass
class Config:
    """The ``[data]`` table. Sources are ``[[data.sources]]`` entries (see SourceConfig)."""
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    world: WorldConfig = field(default_factory=WorldConfig)  # sizes of the synthetic world, e.g. n_people
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
        if self.mix.copy_pages and FRESH_COPY_SOURCE in names:
            raise ValueError(f"mix.copy_pages adds a source named {FRESH_COPY_SOURCE!r}; rename the [[data.sources]] "
                             f"entry of that name")
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise ValueError(f"two sources are named {dup[0]!r}; give each [[data.sources]] a distinct name")
        unknown = sorted(set(self.mix.weights) - set(names) - ({FRESH_COPY_SOURCE} if self.mix.copy_pages else set()))
        if unknown:
            raise ValueError(f"mix.weights: unknown source {unknown[0]!r}; sources are: {', '.join(names)}")
        if not self.sources:
            raise ValueError("no data sources: add at least one [[data.sources]] table")


FRESH_COPY_SOURCE = "copy_pages"   # the source name of data.mix.copy_pages's generated pages


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


def _snippet(text: str, n: int = 160) -> str:
    return text[:n].replace("\n", " ⏎ ").replace("|", "\\|")


# --- the reduce steps ------------------------------------------------------------------------------

@dataclass
class Doc:
    """One kept document: where its JSON line is stored, and what the reduce steps use without loading it."""
    path: str
    offset: int
    source: str
    id: str
    kind: str
    nbytes: int
    chars: int = 0

    @property
    def label(self) -> str:
        return f"{self.source}:{self.id}"

    def load(self, store: DocStore) -> dict:
        return store.get(self.path, self.offset)


@dataclass
class MappedCorpus:
    """The map step's output for the whole corpus: one Doc per document that passed the filters and,
    row-aligned with them, the arrays the vectorised reduce steps work on."""
    docs: list[Doc]
    hashes: np.ndarray       # exact-dedup text hash
    sigs: np.ndarray         # MinHash signatures [n, num_perm]
    contam_ref: np.ndarray   # index of the evaluation item a document contains, -1 for none
    contam_frac: np.ndarray  # share of that item's shingles found in the document
    nbytes: np.ndarray

    @classmethod
    def gather(cls, results: list[dict], num_perm: int) -> "MappedCorpus":
        def cat(key: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([r[key] for r in results]) if results else empty

        docs = [Doc(r["path"], int(offset), source, doc_id, kind, int(nbytes))
                for r in results
                for offset, source, doc_id, kind, nbytes in zip(r["offsets"], r["sources"], r["ids"], r["kinds"], r["nbytes"])]
        return cls(docs, cat("hashes", np.zeros(0, np.uint64)), cat("sigs", np.zeros((0, num_perm), np.uint32)),
                   cat("contam_ref", np.zeros(0, np.int64)), cat("contam_frac", np.zeros(0)),
                   cat("nbytes", np.zeros(0, np.int64)))


@dataclass
class DataStats:
    """What stats.json, the metrics and the report say about one run of the stage, filled step by step."""
    read_stats: dict[str, ReadStats] = field(default_factory=dict)
    n_references: int = 0
    n_in: int = 0
    bytes_in: int = 0
    n_filtered: int = 0
    filter_stats: dict[str, dict] = field(default_factory=dict)
    pii_counts: Counter = field(default_factory=Counter)
    docs_with_pii: int = 0
    kinds: Counter = field(default_factory=Counter)
    langs: Counter = field(default_factory=Counter)
    funnel: list[tuple[str, int, int]] = field(default_factory=list)  # (step, docs out, bytes out)
    removed_exact: int = 0
    removed_decontam: int = 0
    decontam_examples: list[tuple] = field(default_factory=list)
    removed_near: int = 0
    n_clusters: int = 0
    cluster_sizes: Counter = field(default_factory=Counter)
    cluster_examples: list[tuple] = field(default_factory=list)
    removed_spans: int = 0
    removed_span_chars: int = 0
    span_examples: Counter = field(default_factory=Counter)
    emptied: int = 0
    removed_quality: int = 0
    quality_trained: bool = False
    quality_pr: dict[str, Any] = field(default_factory=dict)
    quality_examples: list[tuple] = field(default_factory=list)
    mix_table: list[dict] = field(default_factory=list)
    world_copy_pages_dropped: int = 0   # distinct world copy pages taken out of train by data.mix.copy_pages
    train_docs: int = 0
    val_docs: int = 0
    train_bytes: int = 0
    val_bytes: int = 0
    lengths_by_source: dict[str, list[int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, docs: int, nbytes: int) -> None:
        self.funnel.append((name, int(docs), int(nbytes)))

    def removal_reasons(self, cfg: Config) -> Counter:
        reasons: Counter = Counter()
        for st in self.filter_stats.values():
            reasons.update(st["removed"])
        for key, n in (("exact_dedup", self.removed_exact), ("decontamination", self.removed_decontam),
                       ("near_dedup", self.removed_near), (f"{cfg.span_dedup.unit}_dedup:emptied", self.emptied),
                       ("quality_classifier", self.removed_quality)):
            if n:
                reasons[key] = n
        return reasons

    def to_json(self, cfg: Config) -> dict:
        return {
            "funnel": [{"step": s, "docs": d, "bytes": b} for s, d, b in self.funnel],
            "sources": {name: {"totals": st.totals(), "examples": st.examples} for name, st in self.read_stats.items()},
            "filters": self.filter_stats,
            "removal_reasons": dict(self.removal_reasons(cfg).most_common()),
            "pii": {"counts": dict(self.pii_counts), "docs_with_pii": self.docs_with_pii},
            "exact_dedup": {"removed": self.removed_exact},
            "decontamination": {"references": self.n_references, "removed": self.removed_decontam},
            "near_dedup": {"removed": self.removed_near, "clusters": self.n_clusters,
                           "cluster_sizes": {str(k): v for k, v in sorted(self.cluster_sizes.items())}},
            "span_dedup": {"unit": cfg.span_dedup.unit, "removed_spans": self.removed_spans,
                           "removed_chars": self.removed_span_chars, "emptied_docs": self.emptied},
            "quality": {"removed": self.removed_quality, **self.quality_pr},
            "kinds_after_filters": dict(self.kinds), "langs_after_filters": dict(self.langs),
            "mix": self.mix_table,
            "world_copy_pages_dropped_from_train": self.world_copy_pages_dropped,
            "train": {"docs": self.train_docs, "bytes": self.train_bytes},
            "val": {"docs": self.val_docs, "bytes": self.val_bytes},
            "seconds": {k: round(v, 2) for k, v in self.timings.items()},
        }

    def metrics(self) -> dict:
        bad_lines = sum(st.totals()["bad_utf8"] + st.totals()["bad_json"] + st.totals()["missing_field"]
                        for st in self.read_stats.values())
        metrics = {
            "docs_in": self.n_in, "bytes_in": self.bytes_in,
            "docs_train": self.train_docs, "bytes_train": self.train_bytes,
            "docs_val": self.val_docs, "bytes_val": self.val_bytes,
            "removed_filters": self.n_in - self.n_filtered, "removed_exact_dup": self.removed_exact,
            "removed_near_dup": self.removed_near, "removed_decontam": self.removed_decontam,
            "removed_quality": self.removed_quality, "lines_deduped": self.removed_spans,
            "pii_masked": int(sum(self.pii_counts.values())),
            "bad_input_lines": int(bad_lines),
        }
        if self.quality_pr:
            metrics["quality_precision"] = round(self.quality_pr["precision_clean"], 4)
            metrics["quality_recall"] = round(self.quality_pr["recall_clean"], 4)
        return metrics


def build_world_step(cfg: Config, ctx, data_dir: Path, stats: DataStats):
    """Build the synthetic world, write its SFT / preference / eval sets for later stages, and return it
    with the texts training data must not contain."""
    t = time.time()
    world = build_world(cfg.world, ctx.seed)
    world.write(data_dir / "world")
    refs = world_references(world) if cfg.decontam.enabled else []
    stats.n_references = len(refs)
    stats.timings["world"] = time.time() - t
    ctx.log(f"world written to {data_dir / 'world'}; {len(refs)} decontamination references")
    return world, refs


def read_and_map(cfg: Config, ctx, world, refs: list[str], work: Path, stats: DataStats) -> MappedCorpus:
    """Read every source and run the map step (normalise, filter, mask PII, fingerprint) over it."""
    t = time.time()

    def docs() -> Iterator[dict]:
        for spec in cfg.sources:
            st = stats.read_stats.setdefault(spec.label, ReadStats(strict=cfg.strict or spec.strict))
            yield from iter_source(spec, st, seed=ctx.seed, world=world)
        if cfg.mix.copy_pages:
            yield from fresh_copy_docs(cfg.mix.copy_pages, ctx.seed, world, stats)

    from tqdm import tqdm
    bar = tqdm(desc="data map", unit="doc", mininterval=1.0, disable=None)
    results = run_map(cfg, docs(), refs, work, progress=bar.update)
    bar.close()
    results.sort(key=lambda r: r["index"])
    stats.timings["map"] = time.time() - t

    stats.n_in = sum(r["n_in"] for r in results)
    stats.bytes_in = sum(r["bytes_in"] for r in results)
    for r in results:
        for name, st in r["filters"].items():
            stats.filter_stats[name] = Filter.merge_stats(stats.filter_stats[name], st) if name in stats.filter_stats else st
        stats.pii_counts.update(r["pii"])
    stats.docs_with_pii = sum(r["docs_with_pii"] for r in results)
    stats.kinds = Counter(k for r in results for k in r["kinds"])
    stats.langs = Counter(lang for r in results for lang in r["langs"])
    corpus = MappedCorpus.gather(results, cfg.minhash.num_perm)
    stats.n_filtered = len(corpus.docs)
    stats.step("read", stats.n_in, stats.bytes_in)
    stats.step("filters", stats.n_filtered, corpus.nbytes.sum())
    return corpus


def exact_dedup(cfg: Config, corpus: MappedCorpus, alive: np.ndarray, stats: DataStats) -> None:
    """Drop documents whose text hash was seen before (the first occurrence wins)."""
    n = len(corpus.docs)
    if cfg.exact_dedup and n:
        _, first = np.unique(corpus.hashes, return_index=True)
        keep = np.zeros(n, dtype=bool)
        keep[first] = True
        alive &= keep
    stats.removed_exact = int(n - alive.sum())
    stats.step("exact dedup", alive.sum(), corpus.nbytes[alive].sum())


def decontaminate(corpus: MappedCorpus, alive: np.ndarray, refs: list[str], store: DocStore, stats: DataStats) -> None:
    """Drop documents that contain an evaluation item (found by the map step)."""
    contaminated = alive & (corpus.contam_ref >= 0)
    for i in np.nonzero(contaminated)[0][:3]:
        d = corpus.docs[i]
        stats.decontam_examples.append((d.source, d.id, _snippet(d.load(store)["text"]),
                                        _snippet(refs[corpus.contam_ref[i]]), float(corpus.contam_frac[i])))
    alive &= ~contaminated
    stats.removed_decontam = int(contaminated.sum())
    stats.step("decontamination", alive.sum(), corpus.nbytes[alive].sum())


def near_dedup(cfg: Config, corpus: MappedCorpus, alive: np.ndarray, store: DocStore, stats: DataStats) -> None:
    """MinHash-LSH near-duplicate clusters over the survivors; one document of each cluster stays."""
    t = time.time()
    clusters: list[list[int]] = []
    if cfg.minhash.enabled and alive.any():
        survivors = np.nonzero(alive)[0]
        if cfg.executor == "ray":
            from lmstack.data.ray_executor import find_duplicates_ray
            keep_local, found = find_duplicates_ray(cfg.minhash, corpus.sigs[survivors])
        else:
            keep_local, found = MinHashDeduplicator(cfg.minhash).find_duplicates(corpus.sigs[survivors])
        for members in found.values():
            stats.cluster_sizes[len(members)] += 1
            clusters.append([int(survivors[m]) for m in members])
        stats.removed_near = int((~keep_local).sum())
        alive[survivors[~keep_local]] = False
    clusters.sort(key=lambda c: -len(c))
    stats.n_clusters = len(clusters)
    stats.cluster_examples = [_cluster_example(cfg, corpus, members, store) for members in clusters[:3]]
    stats.timings["minhash_lsh"] = time.time() - t
    stats.step("near dedup (MinHash-LSH)", alive.sum(), corpus.nbytes[alive].sum())


def _cluster_example(cfg: Config, corpus: MappedCorpus, members: list[int], store: DocStore) -> tuple:
    a = corpus.docs[members[0]].load(store)["text"]
    b = corpus.docs[members[1]].load(store)["text"]
    sa = shingle_hashes(a, cfg.minhash.ngram, unit=cfg.minhash.unit)
    sb = shingle_hashes(b, cfg.minhash.ngram, unit=cfg.minhash.unit)
    inter = len(np.intersect1d(sa, sb))
    jaccard = inter / max(1, len(sa) + len(sb) - inter)
    return (len(members), [corpus.docs[m].label for m in members[:4]], _snippet(a, 100), _snippet(b, 100), jaccard)


def line_dedup(cfg: Config, corpus: MappedCorpus, alive: np.ndarray, store: DocStore, out_path: Path,
               stats: DataStats) -> list[Doc]:
    """Streaming pass over the survivors: remove lines (sentences, paragraphs) seen earlier in the corpus
    and write what is left to ``out_path``. Returns the documents written there."""
    t = time.time()
    span = SpanDeduplicator(cfg.span_dedup)
    writer = AtomicJsonlWriter(out_path)
    kept: list[Doc] = []
    for i in np.nonzero(alive)[0]:
        doc = corpus.docs[i].load(store)
        if cfg.span_dedup.enabled and doc.get("kind", "prose") in cfg.span_dedup.kinds:
            new_text = span.process(doc["text"])
            if len(new_text.strip()) < cfg.filters.length.min_chars:
                stats.emptied += 1
                continue
            doc["text"] = new_text
        writer.write(doc)
        kept.append(Doc(str(writer.path), writer.offsets[-1], doc["source"], str(doc.get("id", "")),
                        doc.get("kind", "prose"), len(doc["text"].encode("utf-8")), len(doc["text"])))
    writer.commit()
    stats.removed_spans, stats.removed_span_chars, stats.span_examples = span.removed_spans, span.removed_chars, span.examples
    stats.timings["span_dedup"] = time.time() - t
    stats.step(f"{cfg.span_dedup.unit} dedup", len(kept), sum(d.nbytes for d in kept))
    return kept


def quality_filter(cfg: Config, ctx, docs: list[Doc], data_dir: Path, stats: DataStats) -> tuple[list[Doc], np.ndarray]:
    """Train the quality classifier on clean documents vs generated noise, score every document, drop the
    low scores. Returns the kept documents and their scores (all 1 when the classifier is off)."""
    t = time.time()
    scores = np.ones(len(docs))
    if cfg.quality.enabled and docs:
        scores = _quality_scores(cfg, ctx, docs, data_dir, stats)
    keep = scores >= cfg.quality.min_score if cfg.quality.enabled else np.ones(len(docs), dtype=bool)
    stats.removed_quality = int((~keep).sum())
    stats.timings["quality"] = time.time() - t
    kept = [d for d, k in zip(docs, keep) if k]
    stats.step("quality classifier", len(kept), sum(d.nbytes for d in kept))
    return kept, scores[keep]


def _quality_scores(cfg: Config, ctx, docs: list[Doc], data_dir: Path, stats: DataStats) -> np.ndarray:
    rng = random.Random(ctx.seed)
    # Generated copy pages (data.mix.copy_pages) are not "clean text" examples: they would outnumber the real
    # sources and teach the classifier that prose and code are noise (without them, the sample is as before).
    pool = [i for i, d in enumerate(docs) if d.source != FRESH_COPY_SOURCE]
    sample = sorted(pool[j] for j in rng.sample(range(len(pool)), min(len(pool), cfg.quality.max_train_docs)))
    store = DocStore()
    clf, stats.quality_pr = train_quality_classifier([docs[i].load(store)["text"] for i in sample], cfg.quality,
                                                     seed=ctx.seed, log=ctx.log)
    clf.save(data_dir / "quality_classifier.safetensors")
    stats.quality_trained = True
    batch: list[str] = []
    out_scores = []
    with open(docs[0].path, "rb") as f:  # the line-dedup output: every document, in order
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
            stats.quality_examples.append((docs[i].source, docs[i].id, float(scores[i]), _snippet(docs[i].load(store)["text"])))
    store.close()
    return scores


def fresh_copy_docs(n: int, seed: int, world, stats: DataStats) -> Iterator[dict]:
    """The documents of ``data.mix.copy_pages``: ``n`` distinct generated copy pages, none equal to a world page."""
    from lmstack.data.world.documents import fresh_copy_pages

    fs = stats.read_stats.setdefault(FRESH_COPY_SOURCE, ReadStats()).file("<generated copy pages>")
    world_pages = {d["text"] for d in world.pretrain_docs() if d.get("kind") == "copy"}
    for i, text in enumerate(fresh_copy_pages(n, seed, exclude=world_pages)):
        fs.docs += 1
        fs.bytes += len(text.encode("utf-8"))
        yield {"text": text, "source": FRESH_COPY_SOURCE, "id": f"{FRESH_COPY_SOURCE}:{i}", "kind": "copy", "lang": "en"}


def _world_copy_page_indices(cfg: Config, docs: list[Doc]) -> set[int]:
    """Indices of the world sources' copy pages (their subkind), which data.mix.copy_pages takes out of train."""
    world_labels = {s.label for s in cfg.sources if s.kind == "world"}
    store = DocStore()
    try:
        return {i for i, d in enumerate(docs) if d.source in world_labels and d.load(store).get("subkind") == "copy"}
    finally:
        store.close()


def mix_and_write(cfg: Config, ctx, docs: list[Doc], scores: np.ndarray, data_dir: Path, stats: DataStats) -> None:
    """Plan the weighted mix of the sources and write data/train.jsonl and data/val.jsonl."""
    t = time.time()
    sources = [d.source for d in docs]
    nbytes = np.array([d.nbytes for d in docs])
    weights = {s.label: s.weight for s in cfg.sources}
    weights.update(cfg.mix.weights)
    train_only = frozenset({FRESH_COPY_SOURCE} if cfg.mix.copy_pages else ())
    train_order, val_order = plan_mix(sources, [d.id for d in docs], np.array([d.chars for d in docs]), scores,
                                      weights, cfg.mix, ctx.seed, train_only=train_only)
    dropped: set[int] = set()
    if cfg.mix.copy_pages:
        dropped = _world_copy_page_indices(cfg, docs) - set(val_order)
        train_order = [i for i in train_order if i not in dropped]
        stats.world_copy_pages_dropped = len(dropped)
    if not train_order:
        top = Counter()
        for st in stats.filter_stats.values():
            top.update(st["removed"])
        raise ValueError(f"the data stage kept no training documents: {stats.n_in} read, {stats.n_filtered} passed the "
                         f"filters, {len(docs)} survived dedup and the quality classifier; top filter reasons: "
                         f"{dict(top.most_common(3))}. Relax [data.filters] / [data.quality] min_score or add sources.")
    available: dict[str, list[int]] = {s.label: [0, 0] for s in cfg.sources}
    if cfg.mix.copy_pages:
        available[FRESH_COPY_SOURCE] = [0, 0]
    for i, d in enumerate(docs):
        if i in dropped:
            continue  # the world's train copy pages are not available to train: the world row's epochs stay right
        available[d.source][0] += 1
        available[d.source][1] += d.nbytes
    stats.mix_table = mix_table(train_order, val_order, sources, nbytes, {k: tuple(v) for k, v in available.items()}, weights)
    store = DocStore()
    _write_split(data_dir / "train.jsonl", [docs[k] for k in train_order], store, stats.lengths_by_source)
    _write_split(data_dir / "val.jsonl", [docs[k] for k in val_order], store, None)
    store.close()
    stats.timings["mix_write"] = time.time() - t
    stats.train_docs, stats.val_docs = len(train_order), len(val_order)
    stats.train_bytes = sum(r["train_bytes"] for r in stats.mix_table)
    stats.val_bytes = sum(r["val_bytes"] for r in stats.mix_table)
    stats.step("mix: train (weighted)", stats.train_docs, stats.train_bytes)
    stats.step("mix: val", stats.val_docs, stats.val_bytes)


def _write_split(path: Path, docs: list[Doc], store: DocStore, lengths_by_source: dict[str, list[int]] | None) -> None:
    w = AtomicJsonlWriter(path)
    try:
        for d in docs:
            doc = d.load(store)
            w.write({"text": doc["text"], "source": doc["source"], "id": doc.get("id", ""),
                     "kind": doc.get("kind", "prose"), "lang": doc.get("lang", "other")})
            if lengths_by_source is not None:
                lengths_by_source.setdefault(doc["source"], []).append(len(doc["text"]))
    except BaseException:
        w.abort()
        raise
    w.commit()


# --- the stage ------------------------------------------------------------------------------------

def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult
    from lmstack.runs import atomic_write_json

    t_start = time.time()
    data_dir = ctx.run.sub("data")
    work = data_dir / "_work"
    if work.exists():
        shutil.rmtree(work)  # leftovers of an interrupted run: restart cleanly
    work.mkdir(parents=True)
    stats = DataStats()

    world, refs = build_world_step(cfg, ctx, data_dir, stats)
    corpus = read_and_map(cfg, ctx, world, refs, work, stats)
    alive = np.ones(len(corpus.docs), dtype=bool)
    store = DocStore()
    exact_dedup(cfg, corpus, alive, stats)
    decontaminate(corpus, alive, refs, store, stats)
    near_dedup(cfg, corpus, alive, store, stats)
    deduped = line_dedup(cfg, corpus, alive, store, work / "stage2.jsonl", stats)
    store.close()
    final, scores = quality_filter(cfg, ctx, deduped, data_dir, stats)
    mix_and_write(cfg, ctx, final, scores, data_dir, stats)

    atomic_write_json(data_dir / "stats.json", stats.to_json(cfg))
    plots = _plots(ctx.run.sub("plots"), stats.lengths_by_source)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    artifacts = {"train": "data/train.jsonl", "val": "data/val.jsonl", "stats": "data/stats.json",
                 "world": "data/world"}
    if stats.quality_trained:
        artifacts["quality_classifier"] = "data/quality_classifier.safetensors"
    for p in plots:
        artifacts[Path(p).stem] = p
    report = _report(cfg, stats, plots, time.time() - t_start)
    return StageResult(metrics=stats.metrics(), artifacts=artifacts, report=report)


def _plots(plot_dir: Path, lengths_by_source: dict[str, list[int]]) -> list[str]:
    fig, ax = pyplot().subplots(figsize=(7, 3.6))
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
    save_figure(fig, plot_dir / "data_lengths.png")
    return ["plots/data_lengths.png"]


# --- the report -----------------------------------------------------------------------------------

def _report(cfg: Config, stats: DataStats, plots: list[str], seconds: float) -> str:
    L = [f"Sources: {', '.join(f'{s.label} ({s.kind}, weight {cfg.mix.weights.get(s.label, s.weight):g})' for s in cfg.sources)}. "
         f"Map step over shards of {cfg.shard_docs} documents with {cfg.workers} worker(s); total {seconds:.1f} s.", ""]
    L += _report_sources(stats)
    L += _report_funnel(stats, stats.removal_reasons(cfg))
    L += _report_filters(stats)
    L += _report_dedup(cfg, stats)
    L += _report_quality(cfg, stats)
    L += _report_mix(cfg, stats, plots)
    return "\n".join(L) + "\n"


def _report_sources(stats: DataStats) -> list[str]:
    L = ["### Sources read",
         "| source | files | docs | MB | invalid UTF-8 | malformed JSON | missing field | empty |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, st in stats.read_stats.items():
        t = st.totals()
        L.append(f"| {name} | {t['files']} | {t['docs']} | {t['bytes'] / 1e6:.2f} | {t['bad_utf8']} | {t['bad_json']} | "
                 f"{t['missing_field']} | {t['empty']} |")
    problems = [e for st in stats.read_stats.values() for e in st.examples]
    if problems:
        L += ["", "First bad-input lines (skipped and counted):"]
        L += [f"- `{e}`" for e in problems[:5]]
    return L + [""]


def _report_funnel(stats: DataStats, reasons: Counter) -> list[str]:
    L = ["### Funnel", "| step | docs out | MB out | removed docs |", "|---|---:|---:|---:|"]
    prev = None
    for step, d, b in stats.funnel:
        removed = "" if prev is None or step.startswith("mix") else str(prev - d)
        L.append(f"| {step} | {d} | {b / 1e6:.2f} | {removed} |")
        if not step.startswith("mix"):
            prev = d
    L += ["", "### Removal reasons"]
    total_removed = sum(reasons.values()) or 1
    L += ["| reason | docs | share of removals |", "|---|---:|---:|"]
    for r, n in reasons.most_common():
        L.append(f"| {r} | {n} | {n / total_removed:.1%} |")
    return L + [""]


def _report_filters(stats: DataStats) -> list[str]:
    L = ["Filters (applied in order; code documents skip prose-only rules and get the code rules, "
         "see `lmstack/data/clean.py`):", "",
         "| filter | seen | kept | not applicable (other kind) | removed |", "|---|---:|---:|---:|---:|"]
    for name, st in stats.filter_stats.items():
        L.append(f"| {name} | {st['seen']} | {st['kept']} | {st['skipped']} | {sum(st['removed'].values())} |")
    L += ["", f"Documents after the filters by kind: {dict(stats.kinds)}; by script: {dict(stats.langs)}.", ""]
    examples = [(r, e) for st in stats.filter_stats.values() for r, ex in st["examples"].items() for e in ex[:1]]
    if examples:
        L += ["Removed examples (one per reason):", "", "| reason | example |", "|---|---|"]
        L += [f"| {r} | {_snippet(e, 140)} |" for r, e in examples[:20]]
        L.append("")
    L.append("### PII masking")
    L.append(f"{stats.docs_with_pii} documents contained PII; placeholders inserted: "
             + (", ".join(f"`<|{k}|>` x {v}" for k, v in sorted(stats.pii_counts.items())) or "none") + ".")
    return L + [""]


def _report_dedup(cfg: Config, stats: DataStats) -> list[str]:
    mh, span = cfg.minhash, cfg.span_dedup
    L = ["### Dedup", f"- Exact (document hash): {stats.removed_exact} removed."]
    L.append(f"- Decontamination against {stats.n_references} evaluation items (>= {cfg.decontam.containment_threshold:.0%} "
             f"of an item's {cfg.decontam.ngram}-gram shingles inside a training doc): {stats.removed_decontam} removed.")
    for src, did, doc, ref, frac in stats.decontam_examples:
        L.append(f"  - `{src}:{did}` contains {frac:.0%} of eval item \"{ref}\": \"{doc}\"")
    L.append(f"- Near-duplicate (MinHash-LSH, {mh.unit} {mh.ngram}-gram shingles, {mh.bands} bands x "
             f"{mh.rows} rows): {stats.n_clusters} clusters, {stats.removed_near} removed (one kept per cluster). "
             f"Cluster sizes: " + (", ".join(f"{k} docs x {v}" for k, v in sorted(stats.cluster_sizes.items())) or "none") + ".")
    if stats.cluster_examples:
        L += ["", "| cluster size | members | first doc | second doc | exact Jaccard |", "|---:|---|---|---|---:|"]
        for size, members, a, b, jac in stats.cluster_examples:
            L.append(f"| {size} | {', '.join(members)} | {a} | {b} | {jac:.2f} |")
    L.append("")
    L.append(f"- {span.unit.capitalize()}-level (>= {span.min_chars} chars, kinds {span.kinds}): "
             f"{stats.removed_spans} repeated {span.unit}s removed ({stats.removed_span_chars} chars); "
             f"{stats.emptied} documents emptied.")
    for line, n in stats.span_examples.most_common(3):
        L.append(f"  - repeated {n} more times: \"{_snippet(line, 100)}\"")
    return L + [""]


def _report_quality(cfg: Config, stats: DataStats) -> list[str]:
    pr = stats.quality_pr
    if not pr:
        return []
    L = ["### Quality classifier (fastText-style: hashed word 1-2-grams, word-shape 2-3-grams, char 3-grams)",
         f"Trained on {pr['train_examples']} examples (clean documents vs generated noisy variants: "
         f"shuffled words, random characters, boilerplate, keyword spam); held-out {pr['heldout_examples']}.",
         "", "| held-out metric | value |", "|---|---:|"]
    for k in ("precision_clean", "recall_clean", "precision_noisy", "recall_noisy", "accuracy"):
        L.append(f"| {k} | {pr[k]:.3f} |")
    L += ["", f"{stats.removed_quality} documents scored below P(clean) = {cfg.quality.min_score} and were removed."]
    for src, did, score, snip in stats.quality_examples:
        L.append(f"- `{src}:{did}` P(clean)={score:.2f}: \"{snip}\"")
    return L + [""]


def _report_mix(cfg: Config, stats: DataStats, plots: list[str]) -> list[str]:
    L = ["### Mix",
         f"Order: {cfg.mix.order}; validation: {cfg.mix.val_fraction:.0%} of documents per source (document-level split).",
         "", "| source | weight | docs available | train docs | train MB | share | epochs | val docs |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in stats.mix_table:
        L.append(f"| {r['source']} | {r['weight']:g} | {r['available_docs']} | {r['train_docs']} | {r['train_bytes'] / 1e6:.2f} | "
                 f"{r['share']:.1%} | {r['epochs']:.2f} | {r['val_docs']} |")
    if cfg.mix.copy_pages:
        L += ["", f"Copy pages: {cfg.mix.copy_pages} generated, distinct pages (source {FRESH_COPY_SOURCE}, train only) "
              f"replace the world's {stats.world_copy_pages_dropped} train copy pages; validation keeps the world's own."]
    return L + ["", f"![Document lengths]({plots[0]})"]
