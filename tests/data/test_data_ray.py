"""The data stage's map step on a local Ray cluster with 2 worker nodes: byte-identical output to the
local executor, also when a worker dies mid-task (the task is retried, nothing lost or duplicated)."""

import json

import pytest

from lmstack.config import config_from_dict
from lmstack.data import stage as data_stage
from lmstack.pipeline import StageContext
from lmstack.runs import RunDir

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

SMALL_WORLD = dict(n_people=6, n_sft_only_people=2, n_cities=4, n_countries=6, bios_per_person=4, n_stories=10,
                   n_geo_docs=5, n_quiz_docs=5, n_arith_docs=10, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=10, n_sft_train=30, n_sft_eval=10,
                   n_prefs_train=20, n_prefs_eval=10, n_unknown_people=4, n_unknown_cities=4)


def run_stage(tmp_path, name: str, executor: str):
    table = {"world": SMALL_WORLD, "workers": 1, "executor": executor, "shard_docs": 16,
             "quality": {"max_train_docs": 100, "epochs": 1},
             "sources": [{"kind": "world", "name": "world", "weight": 2.0},
                         {"kind": "stdlib", "name": "stdlib", "max_bytes": 60_000}]}
    cfg = config_from_dict(data_stage.Config, table, "data")
    run = RunDir(tmp_path / name)
    ctx = StageContext(run=run, seed=5, device="cpu", recipe={"data": table}, stage="data")
    result = data_stage.run(ctx, cfg)
    return run.path / "data", result


def output_files(data_dir):
    """Every file the stage wrote, except the report and stats (they hold timings)."""
    return {p.relative_to(data_dir).as_posix(): p.read_bytes() for p in sorted(data_dir.rglob("*"))
            if p.is_file() and p.suffix in (".jsonl", ".bin", ".json") and p.name not in ("stats.json",)}


def planted_signatures():
    """Random signatures with near-duplicate chains that connect only through *different* bands."""
    import numpy as np

    from lmstack.data.dedup import MinHasher
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32 - 1, size=(80, 112), dtype=np.uint64).astype(np.uint32)
    for chain in range(6):
        docs = rng.choice(80, size=4, replace=False)
        for a, b in zip(docs, docs[1:]):
            band = int(rng.integers(0, 14))
            sigs[b, band * 8:(band + 1) * 8] = sigs[a, band * 8:(band + 1) * 8]
    sigs[[3, 7]] = MinHasher.EMPTY          # documents without shingles are never clustered
    return sigs


def check_distributed_union_find():
    from lmstack.data.dedup import MinHashConfig, MinHashDeduplicator
    from lmstack.data.ray_executor import find_duplicates_ray

    sigs = planted_signatures()
    for threshold in (0.0, 0.1):   # 0.1: one shared band (8/112) fails the check
        cfg = MinHashConfig(verify_threshold=threshold)
        want_keep, want_clusters = MinHashDeduplicator(cfg).find_duplicates(sigs)
        got_keep, got_clusters = find_duplicates_ray(cfg, sigs)
        assert (got_keep == want_keep).all() and got_clusters == want_clusters
        if threshold == 0:
            assert max(len(m) for m in want_clusters.values()) >= 4     # chains joined through several bands
        else:
            assert not want_clusters


@pytest.mark.slow  # starting a 3-node Ray cluster takes ~10-30 s
def test_ray_executor_matches_local_with_a_killed_worker(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    local_dir, local = run_stage(tmp_path, "local", "local")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})   # the driver's node runs no tasks
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        fault_dir = tmp_path / "faults"
        fault_dir.mkdir()
        monkeypatch.setenv("LMSTACK_RAY_FAULT_DIR", str(fault_dir))
        ray_dir, remote = run_stage(tmp_path, "ray", "ray")
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}
        check_distributed_union_find()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert (fault_dir / "killed_shard_1").exists()          # a worker really died mid-task
    assert len(nodes) == 2
    want, got = output_files(local_dir), output_files(ray_dir)
    assert "train.jsonl" in want and len(want) >= 3
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name
    stats_local = json.loads((local_dir / "stats.json").read_text())
    stats_ray = json.loads((ray_dir / "stats.json").read_text())
    stats_local.pop("seconds"), stats_ray.pop("seconds")
    assert stats_ray == stats_local
    assert remote.metrics == local.metrics and local.metrics["docs_in"] > 3 * 16   # several shards


def test_executor_is_validated():
    from lmstack.config import ConfigError
    with pytest.raises(ConfigError, match="executor='spark'"):
        config_from_dict(data_stage.Config, {"executor": "spark"}, "data")
