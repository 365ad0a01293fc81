"""The `apps` stage on a hand-made miniature run directory (random tiny model): it builds its artifacts,
trains, and reports every measurement."""

import pytest

from lmstack.apps.dense import DenseEncoder
from lmstack.apps.kg import KnowledgeGraph
from lmstack.apps.rag import CANNOT_FIND
from lmstack.apps.store import DocumentStore
from lmstack.data.world import WorldConfig, build_world
from lmstack.model import save_pretrained
from lmstack.pipeline import Recipe, run_stage
from lmstack.runs import RunDir, read_json
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("apps-run")
    w = build_world(WorldConfig(n_people=8, n_sft_only_people=2, n_cities=4, n_countries=4, n_sft_train=20,
                                n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2, n_stories=2, n_geo_docs=2,
                                n_quiz_docs=2, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=2, bios_per_person=1), seed=7)
    w.write(root / "data" / "world")
    tok = small_tokenizer()
    tok.save(root / "tokenizer" / "tokenizer.json")
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    for stage in ("pretrain", "sft"):
        save_pretrained(model, root / "checkpoints" / stage)
    return root


def test_apps_stage_end_to_end(run_dir):
    overrides = ["run.device=\"cpu\"", "apps.dense.steps=4", "apps.dense.batch_size=4", "apps.steps=3",
                 "apps.batch_size=4", "apps.eval_examples=3", "apps.n_arith_train=6", "apps.max_new_tokens=8",
                 "apps.agent_max_steps=2", "apps.k=2", "apps.rerank.steps=2",
                 "apps.rerank.questions_per_batch=2", "apps.copy.steps=2", "apps.copy.sft_batch_size=2",
                 "apps.copy.pages_share=0.5",
                 "apps.n_fictional=12", "apps.n_fictional_heldout=4", "apps.multihop_balance=true",
                 "apps.n_rag_train=40", "apps.n_multihop_train=10", "apps.n_copy_chat=8",
                 "apps.dense.hard_negatives=1", "apps.dense_fictional=true"]
    recipe = Recipe.load(None, overrides, raw={"run": {"name": "t"}, "apps": {}})
    result = run_stage(RunDir(run_dir), recipe, "apps")
    m = result.metrics
    for key in ("facts_heldout_bm25_recall@1", "facts_heldout_hybrid_recall@5", "world_paraphrases_dense_recall@1",
                "closed_book", "rag", "cannot_find", "arith_model_alone", "arith_agent", "multihop_heldout_agent",
                "extraction_precision", "extraction_recall", "world_paraphrases_rerank_recall@1",
                "fictional_closed_book", "fictional_rag", "fictional_cannot_find", "fictional_rag_refused",
                "rag_refused", "facts_fictional_bm25_recall@1", "gated_rag", "fictional_gated_cannot_find"):
        assert 0.0 <= m[key] <= 1.0, key
    assert -1.0 <= m["rag_min_score"] <= 1.0 and "through the score cut-off" in result.report
    assert m["rag_examples"] > 0 and m["agent_examples"] > 0 and m["extraction_examples"] > 0
    assert m["fictional_people"] == 12 and m["copy_examples"] == 8 and m["repeat_loss_before"] > 0 and "repeat_loss_after_warmup" in m
    assert m["repeat_loss_digits_before"] > 0 and "repeat_loss_digits_after_sft" in m
    assert m["page_code_loss_first_before"] > 0 and "page_code_loss_repeat_after_sft" in m
    assert m["agent_traces"] > 0 and m["agent_turns_dropped"] >= 0 and m["sft_examples_over_context"] >= 0
    assert "invented people in no training data" in result.report
    kg = KnowledgeGraph.load(run_dir / "apps" / "kg.json")
    assert len(kg) > 50
    tok = small_tokenizer()
    store = DocumentStore.load(run_dir / "apps" / "index", encoder=DenseEncoder.load(run_dir / "checkpoints" / "dense", tok))
    assert store.search("capital", 2, mode="hybrid")
    assert (run_dir / "checkpoints" / "apps" / "model.safetensors").exists()
    assert "Model alone vs agent with tools" in result.report
    assert read_json(run_dir / "manifest.json")["stages"]["apps"]["status"] == "done"


def test_heldout_fictional_people_are_in_no_apps_training_data(run_dir):
    """The never-seen measure: invented people that follow the training ones in the same stream, absent from
    the apps SFT data (names in either language), present in the eval graph with their facts."""
    import json

    from lmstack.apps.kg import kg_from_world_json
    from lmstack.apps.stage import Config, build_sft_data, heldout_fictional, training_graph

    kg = kg_from_world_json(run_dir / "data" / "world" / "world.json")
    cfg = Config(n_fictional=12, n_fictional_heldout=5, n_rag_train=0, n_multihop_train=0, n_arith_train=4,
                 n_copy_chat=20)
    store = DocumentStore()
    path, stats = build_sft_data(kg, store, cfg, run_dir, seed=3, tokenizer=small_tokenizer(), max_len=256)
    text = path.read_text(encoding="utf-8")
    eval_graph, held = heldout_fictional(kg, cfg, seed=3)
    train_graph = training_graph(kg, cfg, 3)
    # the measured people do not depend on how many training people there are
    assert heldout_fictional(kg, Config(n_fictional=40, n_fictional_heldout=5), 3)[0].triples == eval_graph.triples
    assert len(held) == 5 and stats["fictional_people"] == 12
    for p in held:
        assert p not in train_graph.entities_of_type("person")
        assert eval_graph.objects(p, "birth_year") and eval_graph.meta[p]["group"] == "fictional"
        for lang in ("en", "zh"):
            assert json.dumps(eval_graph.name(p, lang), ensure_ascii=False)[1:-1] not in text
    trained = sorted(set(train_graph.entities_of_type("person")) - set(kg.entities_of_type("person")))
    assert any(json.dumps(train_graph.name(p, "en"))[1:-1] in text for p in trained)
    assert not set(eval_graph.entities_of_type("person")) & set(trained)
    # rag_answer = "quote" (the default): every answerable target quotes a clause of its cited passage
    rows = [json.loads(line) for line in text.splitlines()]
    rag = [r for r in rows if r["task"] == "rag"]
    assert rag
    for r in rag:
        target = r["messages"][-1]["content"]
        n = int(target.rsplit("[", 1)[1].rstrip("]"))
        passage = r["messages"][1]["content"].split("\n")[n - 1]
        assert target.split()[0].split("于")[0][:2] in passage and r["answer"] in target
    # rag_no_answer = "subject": a refusal names the asked subject, and it is in the question
    cfg.rag_no_answer = "subject"
    rows = [json.loads(line) for line in build_sft_data(kg, store, cfg, run_dir, seed=3)[0].read_text().splitlines()]
    refusals = [r for r in rows if r["task"] == "rag_cannot_find"]
    assert refusals
    for r in refusals:
        target, question = r["messages"][-1]["content"], r["messages"][1]["content"].rsplit("\n", 1)[1]
        subject = target.replace("The capital of ", "").split(" is not in")[0].split("不在资料中")[0]
        assert target.endswith(("is not in the passages.", "不在资料中。")) and subject in question, (target, question)
    cfg.rag_no_answer = "plain"
    plain = [json.loads(line) for line in build_sft_data(kg, store, cfg, run_dir, seed=3)[0].read_text().splitlines()]
    assert {r["messages"][-1]["content"] for r in plain if r["task"] == "rag_cannot_find"} <= set(CANNOT_FIND.values())
    cfg.rag_no_answer = "nothing"
    with pytest.raises(ValueError, match="rag_no_answer"):
        build_sft_data(kg, store, cfg, run_dir, seed=3)


def test_sample_multihop_balances_kinds():
    import random
    from collections import Counter

    from lmstack.apps.stage import sample_multihop

    qs = [{"kind": "a", "i": i} for i in range(30)] + [{"kind": "b", "i": i} for i in range(4)]
    plain = sample_multihop(qs, 10, False, random.Random(0))
    assert len(plain) == 10 and len({q["i"] for q in plain if q["kind"] == "a"}) == sum(q["kind"] == "a" for q in plain)
    assert sample_multihop(qs, 0, False, random.Random(0)) == qs
    balanced = sample_multihop(qs, 20, True, random.Random(0))
    assert Counter(q["kind"] for q in balanced) == {"a": 10, "b": 10}
    assert {q["i"] for q in balanced if q["kind"] == "b"} == {0, 1, 2, 3}  # the rare kind repeated, none lost


def test_world_phrasings_add_training_forms_and_no_held_out_one(run_dir):
    import json

    from lmstack.apps.kg import kg_from_world_json
    from lmstack.apps.stage import Config, build_sft_data
    from lmstack.apps.synthetic import EXTRA_TRAIN_QUESTIONS, world_train_phrasings
    from lmstack.apps.worldqa import FACT_QUESTIONS
    from lmstack.data.world_text import QUESTIONS_EVAL, QUESTIONS_TRAIN

    for relation, by_lang in EXTRA_TRAIN_QUESTIONS.items():  # the apps' own extra forms hold no held-out one either
        for lang, templates in by_lang.items():
            held = set(FACT_QUESTIONS[relation][lang]["eval"]) | set(QUESTIONS_EVAL[lang][relation])
            assert not held & set(templates), (relation, lang)
    forms = world_train_phrasings()
    for relation, by_lang in forms.items():
        for lang, templates in by_lang.items():
            assert len(templates) >= 5
            held = set(FACT_QUESTIONS[relation][lang]["eval"]) | set(QUESTIONS_EVAL[lang][relation])
            assert not held & set(templates) and set(templates) <= set(QUESTIONS_TRAIN[lang][relation])
            assert not set(templates) & set(EXTRA_TRAIN_QUESTIONS[relation][lang])
            assert all(t.replace("{name}", "") == t.replace("{name}", "").format() for t in templates)
    kg = kg_from_world_json(run_dir / "data" / "world" / "world.json")
    store = DocumentStore()
    cfg = Config(n_fictional=12, n_fictional_heldout=5, n_rag_train=0, n_multihop_train=0, n_arith_train=4,
                 rag_phrasings="apps")
    asked = lambda: {json.loads(line)["messages"][1]["content"].split("\n")[-1]  # noqa: E731
                     for line in build_sft_data(kg, store, cfg, run_dir, seed=3)[0].read_text().splitlines()
                     if json.loads(line)["task"].startswith("rag")}
    before = asked()
    cfg.rag_phrasings = "world"
    after = asked()
    import re

    world_forms = [re.compile("(Question: |问题：)" + re.escape(t).replace(re.escape("{name}"), ".+") + "$")
                   for by_lang in forms.values() for templates in by_lang.values() for t in templates]
    in_world_form = lambda qs: sum(any(f.match(q) for f in world_forms) for q in qs)  # noqa: E731
    assert in_world_form(before) == 0 and in_world_form(after) > len(after) / 4
    cfg.rag_phrasings = "everything"
    with pytest.raises(ValueError, match="rag_phrasings"):
        build_sft_data(kg, store, cfg, run_dir, seed=3)
