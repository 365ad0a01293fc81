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

Not built: the dedup reduce still runs on the driver (the MinHash signatures are gathered there),
and sources are read by the driver (local paths; no fsspec/object-store URLs yet).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterator

MAX_RETRIES = 3
FAULT_ENV = "LMSTACK_RAY_FAULT_DIR"   # tests: the first attempt of shard 1 kills its worker process


def _map_shard_task(index: int, docs: list[dict], setup, fault_dir: str | None) -> tuple[dict, bytes]:
    from lmstack.data import stage

    cfg, references, token = setup
    if stage._W.get("token") != token:      # one worker process serves many tasks: set up once per run
        stage._init_worker(cfg, references)
        stage._W["token"] = token
    if fault_dir and index == 1:
        marker = Path(fault_dir) / "killed_shard_1"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)                       # a worker dying mid-task, as a preempted node would
    with tempfile.TemporaryDirectory(prefix="lmstack_map_") as tmp:
        result = stage.map_shard(index, docs, tmp)
        payload = Path(result["path"]).read_bytes()
    return result, payload


def run_map_ray(cfg, doc_iter: Iterator[dict], references: list[str], work_dir: Path, chunks, progress=None
                ) -> list[dict]:
    """Map every shard on the Ray cluster; at most two shards per cluster CPU are in flight, so the
    driver's memory stays bounded however large the corpus."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("data.executor = \"ray\" needs Ray: pip install 'lmstack[ray]' (or pip install ray)") from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_map_shard_task)
    setup = ray.put((cfg, references, os.urandom(8).hex()))
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
