"""The data stage end to end (world + stdlib + a user jsonl with planted problems), mixing and the
quality classifier."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmstack import DATA_DIR
from lmstack.config import ConfigError, config_from_dict
from lmstack.data import stage as data_stage
from lmstack.data.mix import MixConfig, copies, is_val, plan_mix
from lmstack.data.quality import QualityClassifier, QualityConfig, make_noisy_variants, train_quality_classifier
from lmstack.data.world import WorldConfig, build_world
from lmstack.pipeline import StageContext
from lmstack.runs import RunDir

SMALL_WORLD = dict(n_people=6, n_sft_only_people=2, n_cities=4, n_countries=6, bios_per_person=4, n_stories=10,
                   n_geo_docs=5, n_quiz_docs=5, n_arith_docs=10, n_arith_drill_docs=5, n_copy_docs=5, n_parallel_docs=10, n_sft_train=30, n_sft_eval=10,
                   n_prefs_train=20, n_prefs_eval=10, n_unknown_people=4, n_unknown_cities=4)
ARTICLE = ("The old harbour town sits at the mouth of a wide river, and its history is written in the stones of "
           "its streets. Fishermen have lived there for centuries, and they still mend their nets on the quay in "
           "the early morning. In the summer the town is full of visitors who come to walk along the cliffs, to "
           "eat fresh fish and to watch the boats come in. The museum near the church tells the story of the "
           "great storm that destroyed half of the houses, and of the people who rebuilt them with their own hands. "
           "It is worth a visit.")


OTHER = ("Walking in the mountains is a quiet pleasure that asks for little more than good shoes and patience. "
         "The path climbs slowly through pine forests, crosses a cold stream and then opens onto wide meadows where "
         "cows graze all summer. From the top of the pass you can see three valleys and, on a clear day, the lakes "
         "far below. Most walkers stop at the small hut to drink tea before they start the long way down again. "
         "Nobody hurries there.")


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data_stage")
    world = build_world(WorldConfig(**SMALL_WORLD), seed=11)
    leaked = world.facts_eval[0]
    user = tmp / "user.jsonl"
    rows = [
        {"text": ARTICLE, "likes": 10},
        {"text": ARTICLE, "likes": 12},                                   # exact duplicate
        {"text": ARTICLE.replace("wide river", "broad river"), "likes": 9},  # near duplicate
        {"text": ARTICLE.replace("old harbour town", "little port") +
         f" Quiz time: {leaked['prompt']} {leaked['answer']}. That is all for the quiz.", "likes": 20},  # contaminated
        {"text": "Contact the mountain museum at museum.office@example.org or call +44 20 7946 0958. " + OTHER,
         "likes": 30},   # PII
        {"text": "buy now " * 60, "likes": 99},                            # repetition
        {"text": ARTICLE.replace("town", "village"), "likes": 1},          # fails the likes threshold
    ]
    lines = [json.dumps(r).encode() for r in rows] + [b'{"text": "truncated', b'{"text": "\xff bad utf8"}']
    user.write_bytes(b"\n".join(lines) + b"\n")
    recipe_table = {
        "world": SMALL_WORLD,
        "workers": 2,
        "shard_docs": 64,
        "sources": [
            {"kind": "world", "name": "world", "weight": 2.0},
            {"kind": "stdlib", "name": "stdlib", "max_bytes": 80_000},
            {"kind": "jsonl", "name": "user", "path": str(user), "weight": 1.0},
        ],
        "filters": {"metadata": {"min_values": {"likes": 5}}},
        "quality": {"max_train_docs": 150, "epochs": 2},
    }
    cfg = config_from_dict(data_stage.Config, recipe_table, "data")
    run = RunDir(tmp / "run")
    ctx = StageContext(run=run, seed=11, device="cpu", recipe={"data": recipe_table}, stage="data")
    result = data_stage.run(ctx, cfg)
    return run.path, result, world


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_outputs_and_counts(stage_run):
    path, result, world = stage_run
    train, val = read_jsonl(path / "data/train.jsonl"), read_jsonl(path / "data/val.jsonl")
    assert train and val
    assert {d["source"] for d in train} >= {"world", "stdlib"}
    assert not ({d["id"] for d in train} & {d["id"] for d in val}), "document-level split"
    for name in ("world.json", "sft_train.jsonl", "sft_eval.jsonl", "prefs_train.jsonl", "facts_eval.jsonl"):
        assert (path / "data/world" / name).exists()
    assert (path / "plots/data_lengths.png").stat().st_size > 1000
    assert not (path / "data/_work").exists()
    stats = json.loads((path / "data/stats.json").read_text())
    docs = [row["docs"] for row in stats["funnel"] if not row["step"].startswith("mix")]
    assert docs == sorted(docs, reverse=True)
    m = result.metrics
    assert m["docs_in"] == stats["funnel"][0]["docs"]
    assert m["bad_input_lines"] == 2
    assert stats["sources"]["user"]["totals"]["bad_json"] == 1
    assert stats["sources"]["user"]["totals"]["bad_utf8"] == 1
    assert any("user.jsonl:8: malformed JSON" in e for e in stats["sources"]["user"]["examples"])
    assert 0 < m["quality_precision"] <= 1


def test_planted_problems_are_removed(stage_run):
    path, result, world = stage_run
    stats = json.loads((path / "data/stats.json").read_text())
    reasons = stats["removal_reasons"]
    assert reasons.get("exact_dedup", 0) >= 1
    assert result.metrics["removed_decontam"] >= 1
    assert reasons.get("metadata:likes_below_5", 0) == 1
    assert any(r.startswith("gopher_repetition") for r in reasons)
    texts = [d["text"] for d in read_jsonl(path / "data/train.jsonl") + read_jsonl(path / "data/val.jsonl")]
    user = [t for t in texts if "harbour" in t or "mountain" in t or "port" in t]
    assert not any(world.facts_eval[0]["prompt"].split("\n")[0] in t for t in texts)
    assert any("<|email|>" in t and "<|phone|>" in t for t in user)
    assert not any("museum.office@example.org" in t for t in texts)
    # the world's phone numbers never reach the corpus
    for person in world.people:
        assert not any(person.phone in t for t in texts)
    assert stats["pii"]["counts"]["email"] >= 1
    assert sum(1 for t in user if "harbour" in t and "broad river" not in t and "wide river" in t) <= 1


def test_report_sections(stage_run):
    _, result, _ = stage_run
    for heading in ("### Sources read", "### Funnel", "### Removal reasons", "### PII masking", "### Dedup",
                    "### Quality classifier", "### Mix", "plots/data_lengths.png"):
        assert heading in result.report
    assert "| user |" in result.report


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'pathh'"):
        config_from_dict(data_stage.Config, {"sources": [{"kind": "jsonl", "pathh": "x"}]}, "data")
    with pytest.raises(ConfigError, match="not one of"):
        config_from_dict(data_stage.Config, {"sources": [{"kind": "csv", "path": "x"}]}, "data")
    with pytest.raises(ConfigError, match="distinct name"):
        config_from_dict(data_stage.Config, {"sources": [{"kind": "stdlib"}, {"kind": "stdlib"}]}, "data")
    with pytest.raises(ConfigError, match="order"):
        config_from_dict(data_stage.Config, {"mix": {"order": "random"}}, "data")


def test_mix_split_weights_and_order():
    n = 400
    sources = ["a"] * 200 + ["b"] * 200
    ids = [str(i) for i in range(n)]
    lengths = np.arange(n)[::-1].copy()
    scores = np.linspace(0, 1, n)
    cfg = MixConfig(val_fraction=0.1, order="short_to_long")
    train, val = plan_mix(sources, ids, lengths, scores, {"a": 2.0, "b": 0.5}, cfg, seed=3)
    train2, val2 = plan_mix(sources, ids, lengths, scores, {"a": 2.0, "b": 0.5}, cfg, seed=3)
    assert (train, val) == (train2, val2)
    assert not set(train) & set(val)
    assert 10 <= len(val) <= 35
    n_a = sum(1 for i in train if sources[i] == "a")
    n_b = sum(1 for i in train if sources[i] == "b")
    assert n_a == 2 * sum(1 for i in range(200) if i not in set(val))
    assert 0.3 < n_b / (200 - sum(1 for i in val if sources[i] == "b")) < 0.7
    assert [lengths[i] for i in train] == sorted(lengths[i] for i in train)
    by_score, _ = plan_mix(sources, ids, lengths, scores, {}, MixConfig(order="score"), seed=3)
    assert [scores[i] for i in by_score] == sorted((scores[i] for i in by_score), reverse=True)
    # a document's split does not depend on which other documents exist
    assert is_val(3, "a", "17", 0.1) == (17 in val)
    assert copies(0, "s", "x", 3.0) == 3


@pytest.fixture(scope="module")
def clean_texts():
    shakespeare = DATA_DIR / "en" / "tinyshakespeare.txt"
    blocks = [b for b in shakespeare.read_text(encoding="utf-8").split("\n\n") if len(b) > 200][:400]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [(stdlib / f).read_text()[:3000] for f in ("textwrap.py", "glob.py", "fnmatch.py", "shlex.py",
                                                          "bisect.py", "colorsys.py", "keyword.py", "heapq.py")]
    return blocks + code


def test_quality_classifier_separates_clean_from_noise(clean_texts, tmp_path):
    cfg = QualityConfig(epochs=3, max_train_docs=400)
    clf, pr = train_quality_classifier(clean_texts, cfg, seed=0)
    assert pr["heldout_examples"] >= 40
    assert pr["precision_clean"] >= 0.85 and pr["recall_clean"] >= 0.85
    assert pr["recall_noisy"] >= 0.8
    clf.save(tmp_path / "q.safetensors")
    again = QualityClassifier.load(tmp_path / "q.safetensors")
    probe = clean_texts[:5] + make_noisy_variants(clean_texts[0], __import__("random").Random(1))
    assert np.allclose(clf.score(probe), again.score(probe))


def test_quality_classifier_user_examples(tmp_path, clean_texts):
    pos = tmp_path / "pos.jsonl"
    neg = tmp_path / "neg.txt"
    pos.write_text("\n".join(json.dumps({"text": t}) for t in clean_texts[:60]))
    neg.write_text("\n\n".join("click here " * 20 + str(i) for i in range(60)))
    cfg = QualityConfig(epochs=3, positives=str(pos), negatives=str(neg), generate_negatives=False)
    clf, pr = train_quality_classifier([], cfg, seed=0)
    assert pr["accuracy"] >= 0.9


def test_empty_result_is_an_actionable_error(tmp_path):
    user = tmp_path / "tiny.jsonl"
    user.write_text(json.dumps({"text": "too short"}) + "\n")
    cfg = config_from_dict(data_stage.Config, {
        "world": SMALL_WORLD, "workers": 1, "sources": [{"kind": "jsonl", "path": str(user), "name": "user"}]}, "data")
    ctx = StageContext(run=RunDir(tmp_path / "run"), seed=0, device="cpu", recipe={}, stage="data")
    with pytest.raises(ValueError, match="kept no training documents.*length:too_few_chars"):
        data_stage.run(ctx, cfg)
    with pytest.raises(ConfigError, match="mix.weights: unknown source 'nope'"):
        config_from_dict(data_stage.Config, {"mix": {"weights": {"nope": 1.0}}}, "data")


def test_rerun_after_interruption_restarts_cleanly(tmp_path):
    user = tmp_path / "u.jsonl"
    user.write_text("\n".join(json.dumps({"text": t}) for t in (ARTICLE, OTHER)) + "\n")
    table = {"world": SMALL_WORLD, "workers": 1, "quality": {"enabled": False},
             "sources": [{"kind": "world"}, {"kind": "jsonl", "path": str(user), "name": "user"}]}
    cfg = config_from_dict(data_stage.Config, table, "data")
    run = RunDir(tmp_path / "run")
    # leftovers of a killed run: half-written map shards and a temp output file
    (run.path / "data" / "_work").mkdir(parents=True)
    (run.path / "data" / "_work" / "map_000000.jsonl").write_text('{"text": "half')
    (run.path / "data" / "train.jsonl.tmp").write_text("partial")
    ctx = StageContext(run=run, seed=0, device="cpu", recipe={}, stage="data")
    first = data_stage.run(ctx, cfg)
    train_a = (run.path / "data" / "train.jsonl").read_bytes()
    second = data_stage.run(ctx, cfg)
    assert (run.path / "data" / "train.jsonl").read_bytes() == train_a  # deterministic
    assert first.metrics == second.metrics
    assert not (run.path / "data" / "_work").exists()
    assert not (run.path / "data" / "train.jsonl.tmp").exists()
    assert any(json.loads(line)["source"] == "user" for line in train_a.decode().splitlines())
