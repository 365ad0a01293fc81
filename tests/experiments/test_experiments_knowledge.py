"""The knowledge experiment (lmstack.experiments.knowledge) at toy size: its data conditions and one run."""

import json

import pytest

from lmstack.experiments.cli import main
from lmstack.experiments.knowledge import CONDITIONS, KnowledgeConfig, person_qa, world_config
from lmstack.data.world import build_world

TOY = dict(seeds=[0], n_people=8, n_control_people=2, n_cities=4, bios_per_person=2, n_quiz_docs=4,
           pretrain_steps=12, sft_steps=6, d_model=32, n_layers=1, n_heads=2, vocab_size=400, seq_len=64,
           batch_size=4, threads=1)


@pytest.fixture(scope="module")
def worlds():
    cfg = KnowledgeConfig(**TOY)
    return {c: build_world(world_config(cfg, c), 0) for c in CONDITIONS}


def test_conditions_differ_only_in_how_the_facts_are_written(worlds):
    single, multi, bilingual, mixed = (worlds[c] for c in CONDITIONS)
    # same people and facts in every condition: only the text changes
    assert [p.name_en for p in single.people] == [p.name_en for p in mixed.people]
    kinds = {c: sorted({d["kind"] for d in w.pretrain_docs()}) for c, w in worlds.items()}
    assert kinds == {"single": ["bio"], "multi": ["bio"], "bilingual": ["bio"], "qa_mixed": ["bio", "quiz"]}
    langs = {c: sorted({d["lang"] for d in w.pretrain_docs()}) for c, w in worlds.items()}
    assert langs["single"] == langs["multi"] == ["en"] and langs["bilingual"] == ["en", "zh"]
    for p in single.people_in("pretrain+sft", "pretrain_only"):
        assert single.pretrain_mentions[f"person:{p.id}:hobby"]["en"] == 1
        assert multi.pretrain_mentions[f"person:{p.id}:hobby"]["en"] == 2
        assert bilingual.pretrain_mentions[f"person:{p.id}:hobby"] == {"en": 2, "zh": 2}


def test_fixed_template_bios_are_identical_up_to_the_values(worlds):
    import re
    single = worlds["single"]
    shapes = set()
    for doc in single.pretrain_docs():
        for para in doc["text"].split("\n\n")[1:]:
            p = next(p for p in single.people if para.startswith(p.name_en))
            shape = para
            for value in (p.name_en, str(p.birth_year), single.city(p.birthplace).name_en, p.occupation_en, p.hobby_en):
                shape = shape.replace(value, "#")
            shapes.add(re.sub(r"\b(an?) #", "A #", shape))
    assert len(shapes) == 1, shapes


def test_quizzes_ask_only_the_fine_tuned_half_and_control_people_never_appear(worlds):
    mixed = worlds["qa_mixed"]
    text = "\n".join(d["text"] for d in mixed.pretrain_docs())
    quiz = "\n".join(d["text"] for d in mixed.pretrain_docs() if d["kind"] == "quiz")
    for p in mixed.people_in("pretrain_only"):
        assert p.name_en in text and p.name_en not in quiz
    for p in mixed.people_in("sft_only"):
        assert p.name_en not in text and p.name_zh not in text
    qa = person_qa(mixed, "sft_only", __import__("random").Random(0), 1)
    assert len(qa) == 4 * len(mixed.people_in("sft_only")) and all(q["prompt"].endswith("Answer:") for q in qa)


def test_toy_run_writes_table_plot_and_results(tmp_path, capsys):
    args = [f"--set={k}={json.dumps(v)}" for k, v in TOY.items()]
    assert main(["knowledge", "--out", str(tmp_path), *args]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["condition"] for r in result["runs"]] == list(CONDITIONS)
    for r in result["runs"]:
        assert r["n_test"] == 4 * 4 and r["n_control"] == 4 * 2
        assert 0.0 <= r["qa_test"] <= 1.0 and r["pretrain_tokens"] > 0
    report = (tmp_path / "report.md").read_text()
    assert report.count("| single |") >= 1 and "never-seen" in report and "paper" in report
    assert (tmp_path / "knowledge.png").stat().st_size > 1000
    assert "result: qa_mixed_extraction=" in capsys.readouterr().out


def test_bad_condition_is_an_error():
    with pytest.raises(ValueError, match="not one of"):
        KnowledgeConfig(conditions=["bioS"])
    assert main(["knowledge", "--set", "n_peple=3"]) == 2


def test_toy_sft_retention_compares_four_fine_tunes_from_one_model(tmp_path, capsys):
    args = [f"--set={k}={json.dumps(v)}" for k, v in TOY.items()]
    assert main(["sft-retention", "--out", str(tmp_path), *args]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["short", "long", "long+replay", "lora"]
    assert [r["steps"] for r in result["rows"]] == [6, 24, 24, 24]
    assert "| lora |" in (tmp_path / "report.md").read_text()
    assert "result: long_replay_seed0_heldout=" in capsys.readouterr().out
