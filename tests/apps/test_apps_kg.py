"""Knowledge graph: triples of the world, the query API, multi-hop answers against SPARQL (rdflib)."""

import pytest

from lmstack.apps.kg import ENTITY_RELATIONS, KnowledgeGraph, kg_from_world
from lmstack.apps.worldqa import (answer_with_graph, entity_passages, fact_questions, multihop_questions,
                                  parse_multihop)
from lmstack.data.world import WorldConfig, build_world

NS = "http://lmstack.local/"


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(n_people=30, n_sft_only_people=6, n_cities=8, n_countries=8,
                                   n_sft_train=10, n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2,
                                   n_stories=2, n_geo_docs=2, n_quiz_docs=2, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0,
                                   n_parallel_docs=2, bios_per_person=1), seed=11)


@pytest.fixture(scope="module")
def kg(world):
    return kg_from_world(world)


def test_world_triples_cover_every_fact_in_both_languages(world, kg):
    for p in world.people:
        assert kg.name(p.id, "en") == p.name_en and kg.name(p.id, "zh") == p.name_zh
        assert kg.objects(p.id, "birth_year") == [str(p.birth_year)]
        assert kg.objects(p.id, "birthplace") == [p.birthplace]
        assert kg.name(kg.objects(p.id, "occupation")[0], "zh") == p.occupation_zh
        assert kg.name(kg.objects(p.id, "hobby")[0], "en") == p.hobby_en
        assert kg.resolve(p.name_zh) == [p.id] and kg.resolve(p.name_en.upper()) == [p.id]
    for c in world.cities:
        assert kg.objects(c.id, "country") == [c.country]
    for k in world.countries:
        assert kg.name(kg.objects(k.id, "capital")[0], "zh") == k.capital_zh
    with pytest.raises(ValueError, match="relation 'likes'"):
        kg.add("p000", "likes", "x")


def test_query_joins_and_roundtrip(kg, tmp_path):
    p = kg.entities_of_type("person")[0]
    rows = kg.query([(p, "birthplace", "?c"), ("?c", "country", "?k"), ("?k", "capital", "?cap")])
    assert len(rows) == 1
    assert rows[0]["?k"] == kg.objects(rows[0]["?c"], "country")[0]
    assert kg.query([(p, "birthplace", "nowhere")]) == []
    assert len(kg.query([("?x", "type", "person")])) == len(kg.entities_of_type("person"))
    with pytest.raises(ValueError, match="unknown relation"):
        kg.query([("?x", "born", "?y")])
    again = KnowledgeGraph.load(kg.save(tmp_path / "kg.json"))
    assert again.triples == kg.triples and again.meta == kg.meta


def _term(x: str, relation: str, position: int) -> str:
    if x.startswith("?"):
        return x
    if position == 2 and relation not in ENTITY_RELATIONS:
        return '"' + x.replace('"', '\\"') + '"'
    return f"<{NS}{x}>"


def _sparql(patterns) -> str:
    body = " . ".join(" ".join(_term(x, p[1], i) if i != 1 else f"<{NS}{p[1]}>" for i, x in enumerate(p))
                      for p in patterns)
    variables = sorted({x for p in patterns for x in p if x.startswith("?")})
    return f"SELECT {' '.join(variables)} WHERE {{ {body} }}"


def _ours_as_strings(rows):
    return sorted(tuple(sorted((k[1:], v) for k, v in r.items())) for r in rows)


def _peer_as_strings(result):
    out = []
    for row in result:
        d = row.asdict()
        out.append(tuple(sorted((k, str(v).removeprefix(NS)) for k, v in d.items())))
    return sorted(out)


def test_multihop_answers_equal_sparql_over_the_same_triples(kg):
    pytest.importorskip("rdflib")
    graph = kg.to_rdflib(NS)
    questions = multihop_questions(kg)
    assert {q["kind"] for q in questions} == {"occ_hobby_country", "person_capital", "occ_city_year", "person_country"}
    for q in questions:
        patterns = [tuple(p) for p in q["patterns"]]
        ours = kg.query(patterns)
        assert _ours_as_strings(ours) == _peer_as_strings(graph.query(_sparql(patterns))), q["question"]
        assert answer_with_graph(kg, q["question"]) == q["answer"], q["question"]
    # extra queries with variables in several positions
    for patterns in ([("?p", "occupation", "?o"), ("?o", "name_zh", "?n")],
                     [("?p", "birth_year", "?y"), ("?p", "birthplace", "?c"), ("?c", "name_en", "?cn")],
                     [("?k", "capital", "?cap"), ("?c", "country", "?k")]):
        assert _ours_as_strings(kg.query(patterns)) == _peer_as_strings(graph.query(_sparql(patterns)))


def test_issue_example_and_unknown_questions(kg):
    q = next(q for q in multihop_questions(kg, ["en"]) if q["kind"] == "occ_hobby_country")
    assert q["question"].startswith("In which country was the ") and q["question"].endswith(" born?")
    p = q["patterns"]
    person = kg.query([tuple(x) for x in p[:2]])[0]["?p"]
    city = kg.objects(person, "birthplace")[0]
    assert q["answer"] == kg.name(kg.objects(city, "country")[0], "en")
    assert answer_with_graph(kg, "In which country was Nobody Atall born?") is None
    assert parse_multihop(kg, "What is two plus two?") is None


def test_fact_questions_splits_are_disjoint_and_passages_state_the_answers(kg):
    train, held_out = fact_questions(kg, "train"), fact_questions(kg, "eval")
    assert not {q["question"] for q in train} & {q["question"] for q in held_out}
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(kg)}
    for q in held_out:
        assert q["answer"] in passages[(q["entity"], q["lang"])]


def test_triple_extraction_data_parse_and_score(kg):
    from lmstack.apps.extraction import (extraction_sft_examples, gold_triples, parse_triples, render_triples,
                                         score_extraction)

    passages = entity_passages(kg)
    data = extraction_sft_examples(kg, passages)
    assert len(data) == len(passages)
    for d, p in zip(data, passages):
        triples = parse_triples(d["messages"][-1]["content"])
        assert triples == gold_triples(kg, p["entity"], p["lang"]) and triples
        for subject, _, value in triples:  # the passage states everything the target extracts
            assert subject in p["text"] and value in p["text"]
    gold = gold_triples(kg, kg.entities_of_type("person")[0], "en")
    assert len(gold) == 4
    pred = parse_triples(render_triples(gold[:3]) + "\nnot a triple\n" + " | ".join(gold[0]).upper()
                         + "\nX | hobby | nothing")
    assert score_extraction(pred, gold) == (3, 4, 4)  # upper-case duplicate counts once; one wrong
