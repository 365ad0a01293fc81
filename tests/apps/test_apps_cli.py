"""`lmstack rag`, `lmstack agent` and `lmstack kg` end to end on small inputs."""

import json

import pytest

from lmstack.cli import main
from lmstack.data.world import WorldConfig, build_world


def test_rag_build_search_add_delete(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Valmora is a city in France.", encoding="utf-8")
    (docs / "b.md").write_text("李伟是一名木匠。", encoding="utf-8")
    index = tmp_path / "index"
    assert main(["rag", "build", str(docs), "--out", str(index)]) == 0
    assert main(["rag", "search", str(index), "木匠", "--k", "1"]) == 0
    assert "李伟是一名木匠" in capsys.readouterr().out
    (docs / "c.jsonl").write_text(json.dumps({"id": "tokyo", "text": "Tokyo is the capital of Japan."}) + "\n",
                                  encoding="utf-8")
    assert main(["rag", "add", str(index), str(docs)]) == 0
    assert "added 1, updated 0, unchanged 2" in capsys.readouterr().out
    assert main(["rag", "delete", str(index), "tokyo"]) == 0
    assert main(["rag", "search", str(index), "capital of Japan"]) == 0
    assert "Tokyo" not in capsys.readouterr().out
    assert main(["rag", "delete", str(index), "nope"]) == 2
    assert main(["rag", "search", str(tmp_path / "missing"), "x"]) == 2


def test_kg_build_query_ask(tmp_path, capsys):
    run = tmp_path / "run"
    w = build_world(WorldConfig(n_people=12, n_sft_only_people=2, n_cities=4, n_countries=4, n_sft_train=10,
                                n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2, n_stories=2, n_geo_docs=2,
                                n_quiz_docs=2, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=2, bios_per_person=1), seed=4)
    w.write(run / "data" / "world")
    assert main(["kg", "build", "--run", str(run)]) == 0
    assert (run / "apps" / "kg.json").exists()
    capsys.readouterr()
    assert main(["kg", "examples", "--run", str(run), "--n", "2"]) == 0
    question, answer = capsys.readouterr().out.splitlines()[0].split("  ->  ")
    assert main(["kg", "ask", question, "--run", str(run)]) == 0
    assert capsys.readouterr().out.strip() == answer
    p = w.people[0]
    assert main(["kg", "query", f"{p.id} birthplace ?c ; ?c country ?k", "--run", str(run)]) == 0
    assert f"?k={w.city(p.birthplace).country}" in capsys.readouterr().out
    assert main(["kg", "query", "?x only_two", "--run", str(run)]) == 2
    assert main(["kg", "ask", "What is love?", "--run", str(run)]) == 2


def test_agent_script_prints_trace_and_tools_json(tmp_path, capsys):
    script = tmp_path / "turns.txt"
    script.write_text('Thought: use it\nAction: {"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}'
                      '\n---\nThought: plain arithmetic\nAction: {"name": "calculator", "arguments": {"expression": "12*13"}}'
                      "\n---\nThought: done\nFinal Answer: 156", encoding="utf-8")
    assert main(["agent", "What is 12*13?", "--script", str(script)]) == 0
    out = capsys.readouterr().out
    assert "Observation: Error: only numbers" in out and "Observation: 156" in out
    assert "final_answer after 3 step(s)" in out and "answer = '156'" in out
    loop = tmp_path / "loop.txt"
    loop.write_text("Thought: thinking forever", encoding="utf-8")
    assert main(["agent", "q", "--script", str(loop), "--max-steps", "2"]) == 1
    assert "step_limit after 2 step(s)" in capsys.readouterr().out
    assert main(["agent", "q", "--tools-json"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    assert {s["function"]["name"] for s in schemas} == {"calculator", "current_date"}
    assert main(["agent", "q"]) == 2


def test_rag_ask_uses_the_k_the_apps_stage_trained_with(tmp_path):
    from lmstack.apps.cli import trained_k

    assert trained_k(str(tmp_path)) == 3
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"apps": {"config": {"k": 1}}}}))
    assert trained_k(str(tmp_path)) == 1
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"sft": {}}}))
    assert trained_k(str(tmp_path), default=5) == 5


def test_rag_ask_uses_the_prompt_layout_the_apps_stage_trained_with(tmp_path):
    from lmstack.apps.cli import trained_layout

    assert trained_layout(str(tmp_path)) == "passages_first"
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"apps": {"config": {"rag_prompt": "question_first"}}}}))
    assert trained_layout(str(tmp_path)) == "question_first"


def test_rag_ask_uses_the_score_cutoff_the_apps_stage_fitted(tmp_path):
    from lmstack.apps.cli import trained_min_score

    assert trained_min_score(str(tmp_path)) is None  # no apps stage: no cut-off
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"apps": {"metrics": {"rag_min_score": 0.71}}}}))
    assert trained_min_score(str(tmp_path)) == 0.71
    assert trained_min_score(str(tmp_path), "off") is None and trained_min_score(str(tmp_path), "0.5") == 0.5
    with pytest.raises(ValueError, match="--min-score"):
        trained_min_score(str(tmp_path), "high")
