"""data.mix.copy_pages: distinct generated copy pages replace the world's (repeated) copy pages in train;
the rest of the corpus and the validation split stay as they were."""

import json
import re
from collections import Counter

import pytest

from lmstack.config import ConfigError, config_from_dict
from lmstack.data import stage as data_stage
from lmstack.data.world import WorldConfig, build_world
from lmstack.data.world.documents import fresh_copy_pages
from lmstack.pipeline import StageContext
from lmstack.runs import RunDir

WORLD = dict(n_people=6, n_sft_only_people=2, n_cities=4, n_countries=6, bios_per_person=3, n_stories=6,
             n_geo_docs=4, n_quiz_docs=4, n_arith_docs=6, n_arith_drill_docs=3, n_copy_docs=60, n_parallel_docs=6,
             n_sft_train=20, n_sft_eval=10, n_prefs_train=10, n_prefs_eval=6, n_unknown_people=4, n_unknown_cities=4)
SEED = 5
N_FRESH = 40


def test_fresh_pages_are_distinct_deterministic_and_restate_their_codes():
    pages = list(fresh_copy_pages(300, seed=1))
    assert len(pages) == 300 and len(set(pages)) == 300
    assert pages == list(fresh_copy_pages(300, seed=1))
    assert not set(pages) & set(fresh_copy_pages(300, seed=2))
    for page in pages[:50]:
        codes = Counter(re.findall(r"\b\d{3,5}\b", page))
        assert codes and max(codes.values()) >= 2, page   # every page states a code and repeats it


def test_fresh_pages_skip_excluded_texts():
    first = list(fresh_copy_pages(5, seed=3))
    again = list(fresh_copy_pages(5, seed=3, exclude={first[0], first[2]}))
    assert first[0] not in again and first[2] not in again and len(set(again)) == 5
    assert again[:3] == [first[1], first[3], first[4]]


def _data_run(tmp_path, name: str, copy_pages: int) -> tuple:
    table = {"world": WORLD, "workers": 1, "shard_docs": 64,
             "sources": [{"kind": "world", "name": "world", "weight": 3.0},
                         {"kind": "stdlib", "name": "stdlib", "max_bytes": 40_000}],
             "quality": {"max_train_docs": 100, "epochs": 1},
             "mix": {"copy_pages": copy_pages, "val_fraction": 0.2}}
    cfg = config_from_dict(data_stage.Config, table, "data")
    run = RunDir(tmp_path / name)
    ctx = StageContext(run=run, seed=SEED, device="cpu", recipe={"data": table}, stage="data")
    result = data_stage.run(ctx, cfg)
    rows = {split: [json.loads(line) for line in (run.path / "data" / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "val")}
    stats = json.loads((run.path / "data" / "stats.json").read_text())
    return rows, stats, result


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("copy_pages")
    return _data_run(tmp, "base", 0), _data_run(tmp, "fresh", N_FRESH)


def test_train_copy_pages_are_fresh_distinct_and_counted(both_runs):
    (_, _, _), (rows, stats, result) = both_runs
    world_pages = {d["text"] for d in build_world(WorldConfig(**WORLD), SEED).pretrain_docs() if d["kind"] == "copy"}
    fresh = [r["text"] for r in rows["train"] if r["source"] == "copy_pages"]
    assert len(fresh) == N_FRESH and len(set(fresh)) == N_FRESH        # each page once: never upsampled
    assert fresh_copy_pages(N_FRESH, SEED, exclude=world_pages).__next__() in fresh
    assert not world_pages & {r["text"] for r in rows["train"]}       # the world's pages left train...
    assert world_pages & {r["text"] for r in rows["val"]}             # ...and validation still has its own
    assert not {r["source"] for r in rows["val"]} & {"copy_pages"}
    row = next(r for r in stats["mix"] if r["source"] == "copy_pages")
    assert row["train_docs"] == N_FRESH and row["val_docs"] == 0 and row["epochs"] == 1.0
    total = sum(len(r["text"].encode()) for r in rows["train"])
    assert row["share"] == pytest.approx(sum(len(t.encode()) for t in fresh) / total, rel=1e-6)
    assert stats["world_copy_pages_dropped_from_train"] == len(world_pages) - sum(
        r["text"] in world_pages for r in rows["val"])
    world_row = next(r for r in stats["mix"] if r["source"] == "world")
    assert world_row["epochs"] == pytest.approx(3.0)                  # weight 3: dropped pages not counted
    assert "copy_pages" in result.report and "generated, distinct pages" in result.report


def test_everything_else_is_unchanged(both_runs):
    (base, base_stats, _), (fresh, fresh_stats, _) = both_runs
    world_pages = {d["text"] for d in build_world(WorldConfig(**WORLD), SEED).pretrain_docs() if d["kind"] == "copy"}
    assert fresh["val"] == base["val"]
    keep = [r for r in base["train"] if r["text"] not in world_pages]
    assert [r for r in fresh["train"] if r["source"] != "copy_pages"] == keep   # same documents, same order
    # The quality classifier learns from the real sources only, so it is the same classifier.
    assert fresh_stats["quality"]["precision_clean"] == base_stats["quality"]["precision_clean"]


def test_is_deterministic(tmp_path, both_runs):
    (_, _, _), (rows, _, _) = both_runs
    again, _, _ = _data_run(tmp_path, "again", N_FRESH)
    assert again == rows


def test_config_errors():
    with pytest.raises((ConfigError, ValueError), match="copy_pages"):
        config_from_dict(data_stage.Config, {"mix": {"copy_pages": -1}}, "data")
    with pytest.raises((ConfigError, ValueError), match="copy_pages"):
        config_from_dict(data_stage.Config, {"mix": {"weights": {"copy_pages": 2.0}}}, "data")
    cfg = config_from_dict(data_stage.Config, {"mix": {"copy_pages": 3, "weights": {"copy_pages": 2.0}}}, "data")
    assert cfg.mix.copy_pages == 3
