"""The data stage's map step as Ray tasks (``[data] executor = "ray"``).

Each shard of ``shard_docs`` documents becomes one Ray task running the same ``map_shard`` as the
local executor, so the output is byte-identical. The task writes its kept documents to a
temporary file on *its* node and returns the bytes with the arrays; the driver writes
``map_NNNNNN.jsonl`` under the run directory itself, keyed by the shard index. So no shared
filesystem is needed, and a task that runs twice (Ray retries a task whose worker died, up to
``MAX_RETRIES`` times) still produces each shard exactly once: no document is lost or duplicated.

Which cluster: ``ray.init()`` without an address, i.e. the cluster named by the ``RAY_ADDRESS``
environment variable (``RAY_ADDRESS=ray://head:10001`` or ``auto`` for one started with ``ray
start``), else a fresh local one. If the caller already called ``ray.init``, that cluster is used.

The near-duplicate reduce runs on the cluster too (``find_duplicates_ray``: one union-find task
per LSH band, merged in a reduction tree). Not built: the driver still reads the sources (local
paths or fsspec URLs such as ``s3://bucket/fineweb/``, see lmstack.data.remote) and streams the
shards to the tasks; the map results (MinHash signatures, hashes) come back to the driver, which
runs the other, cheaper reduce steps (exact dedup, decontamination, line dedup, quality, mix).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterator

MAX_RETRIES = 3
FAULT_ENV = "LMSTACK_RAY_FAULT_DIR"   # tests: the first attempt of shard 1 kills its worker process
_WORKER_RUN: dict[str, str] = {}      # in each Ray worker process: the run its map state was set up for


def _map_shard_task(index: int, docs: list[dict], setup, fault_dir: str | None) -> tuple[dict, bytes]:
    map_shard, init_worker, cfg, references, token = setup
    if _WORKER_RUN.get("token") != token:   # one worker process serves many tasks: set up once per run
        init_worker(cfg, references)
        _WORKER_RUN["token"] = token
    if fault_dir and index == 1:
        marker = Path(fault_dir) / "killed_shard_1"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)                       # a worker dying mid-task, as a preempted node would
    with tempfile.TemporaryDirectory(prefix="lmstack_map_") as tmp:
        result = map_shard(index, docs, tmp)
        payload = Path(result["path"]).read_bytes()
    return result, payload


def run_map_ray(cfg, doc_iter: Iterator[dict], references: list[str], work_dir: Path, *, map_shard, init_worker,
                chunks, progress=None) -> list[dict]:
    """Map every shard on the Ray cluster with the data stage's ``map_shard`` (after ``init_worker``
    once per worker process); at most two shards per cluster CPU are in flight, so the driver's
    memory stays bounded however large the corpus."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("data.executor = \"ray\" needs Ray: pip install 'lmstack[ray]' (or pip install ray)") from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_map_shard_task)
    setup = ray.put((map_shard, init_worker, cfg, references, os.urandom(8).hex()))
    fault_dir = os.environ.get(FAULT_ENV)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque = deque()
    results: dict[int, dict] = {}

    def collect(block: bool) -> None:
        while pending and (block or len(pending) >= window):
            n, ref = pending.popleft()
            result, payload = ray.get(ref)
            path = Path(work_dir) / f"map_{result['index']:06d}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, path)
            result["path"] = str(path)
            results[result["index"]] = result      # keyed by shard: a re-run task cannot add copies
            if progress:
                progress(n)

    for i, chunk in enumerate(chunks(doc_iter, cfg.shard_docs)):
        pending.append((len(chunk), task.remote(i, chunk, setup, fault_dir)))
        collect(block=False)
    collect(block=True)
    return [results[i] for i in sorted(results)]


# --- near-dedup reduce: a distributed union-find ---------------------------------------------------
#
# Each LSH band is clustered by its own Ray task (a union-find over that band's buckets only), and
# the per-band partitions are merged pairwise in a reduction tree of Ray tasks (merging two
# partitions = union-find over the edges i -> root_a(i) and i -> root_b(i)). The connected
# components of the union of all bands' bucket graphs are the same whatever the merge order, so
# the result equals the single-node MinHashDeduplicator's. No task sees more than one band's keys
# or two label arrays (8 bytes per document).

def _band_roots(keys, n_docs: int, sigs, verify_threshold: float):
    """Union-find over one band: documents sharing a bucket key join the bucket's first member."""
    from lmstack.data.dedup import UnionFind, shared_key_groups, union_bucket

    valid_idx, band_keys = keys
    uf = UnionFind(n_docs)
    for members in shared_key_groups(valid_idx, band_keys):
        union_bucket(uf, sigs, members, verify_threshold)
    return uf.labels()


def _merge_roots(labels_a, labels_b):
    import numpy as np

    from lmstack.data.dedup import UnionFind

    uf = UnionFind(len(labels_a))
    for labels in (labels_a, labels_b):
        for i in np.nonzero(labels != np.arange(len(labels)))[0]:
            uf.union(int(i), int(labels[i]))
    return uf.labels()


def find_duplicates_ray(cfg, sigs):
    """``MinHashDeduplicator(cfg).find_duplicates(sigs)`` computed on the Ray cluster: returns the
    same (keep mask, {kept index: members}) for clusters of >= 2 documents."""
    import numpy as np
    import ray

    from lmstack.data.dedup import MinHasher, MinHashLSH

    n = len(sigs)
    valid = ~(sigs == MinHasher.EMPTY).all(axis=1)
    valid_idx = np.nonzero(valid)[0]
    keys = MinHashLSH(cfg.bands, cfg.rows).band_keys(sigs[valid_idx]) if len(valid_idx) else np.zeros((0, cfg.bands))
    band_task = ray.remote(max_retries=MAX_RETRIES)(_band_roots)
    merge_task = ray.remote(max_retries=MAX_RETRIES)(_merge_roots)
    sigs_ref = ray.put(sigs) if cfg.verify_threshold > 0 else None
    level = [band_task.remote((valid_idx, keys[:, b].copy()), n, sigs_ref, cfg.verify_threshold)
             for b in range(cfg.bands)]
    while len(level) > 1:
        pairs = [merge_task.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    labels = ray.get(level[0]) if level else np.arange(n)
    keep = np.ones(n, dtype=bool)
    clusters: dict[int, list[int]] = {}
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    for group in np.split(order, np.nonzero(sorted_labels[1:] != sorted_labels[:-1])[0] + 1):
        if len(group) < 2:
            continue
        group = np.sort(group)                 # the first document of a cluster is kept
        keep[group[1:]] = False
        clusters[int(group[0])] = group.tolist()
    return keep, clusters
