"""RAG prompts and SFT data, agent SFT traces, conversation memory."""

import json

import pytest

from lmstack.apps.agent_data import agent_sft_examples, arithmetic_questions
from lmstack.apps.kg import kg_from_world
from lmstack.apps.memory import ConversationMemory
from lmstack.apps.rag import (CANNOT_FIND, RagPipeline, citations, is_cannot_find, rag_messages, rag_sft_examples,
                              strip_citations)
from lmstack.apps.store import DocumentStore
from lmstack.apps.tools import ToolBox, calculate, calculator_tool, date_tool, kg_tools
from lmstack.apps.worldqa import entity_passages, fact_questions, multihop_questions
from lmstack.data.world import WorldConfig, build_world
from lmstack.eval.answers import answer_matches
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def kg():
    return kg_from_world(build_world(WorldConfig(n_people=10, n_sft_only_people=2, n_cities=4, n_countries=4,
                                                 n_sft_train=10, n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2,
                                                 n_stories=2, n_geo_docs=2, n_quiz_docs=2, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0,
                                                 n_parallel_docs=2, bios_per_person=1), seed=9))


@pytest.fixture(scope="module")
def store(kg):
    s = DocumentStore()
    s.add_documents(entity_passages(kg))
    return s


def test_rag_prompt_and_answer_helpers():
    msgs = rag_messages("Where was Li Wei born?", ["Li Wei was born in Valmora.", "Paris is in France."])
    assert msgs[1]["content"] == "[1] Li Wei was born in Valmora.\n[2] Paris is in France.\nQuestion: Where was Li Wei born?"
    assert rag_messages("李伟出生在哪里？", ["x"])[1]["content"].endswith("问题：李伟出生在哪里？")
    assert citations("Valmora [1] and [3]") == [1, 3]
    assert answer_matches(strip_citations("1996 [2]"), "1996")
    assert is_cannot_find(CANNOT_FIND["en"]) and is_cannot_find(CANNOT_FIND["zh"]) and not is_cannot_find("Paris [1]")


def test_rag_sft_data_cites_the_gold_passage_or_says_cannot_find(kg, store):
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(kg)}
    qs = fact_questions(kg, "train")
    data = rag_sft_examples(qs, passages, lambda q, n: [h.text for h in store.search(q, n)], k=3,
                            no_answer_rate=0.3, seed=1)
    assert len(data) == len(qs)
    kinds = {d["task"] for d in data}
    assert kinds == {"rag", "rag_cannot_find"}
    for d, q in zip(data, qs):
        user, target = d["messages"][1]["content"], d["messages"][2]["content"]
        numbered = {int(line[1:line.index("]")]): line[line.index("]") + 2:] for line in user.split("\n")[:-1]}
        gold = passages[(q["entity"], q["lang"])]
        if d["task"] == "rag":
            (n,) = citations(target)
            assert numbered[n] == gold and strip_citations(target) == q["answer"]
        else:
            assert target == CANNOT_FIND[q["lang"]] and gold not in numbered.values()
            assert all(q["answer"] not in p for p in numbered.values())


def test_agent_sft_traces_are_real_tool_runs(kg):
    tools = ToolBox([calculator_tool(), date_tool()] + kg_tools(kg))
    items = arithmetic_questions(6, seed=1) + multihop_questions(kg)[:8]
    data = agent_sft_examples(items, tools, kg)
    assert len(data) == len(items)
    for d, item in zip(data, items):
        roles = [m["role"] for m in d["messages"]]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        assert d["messages"][-1]["content"].endswith(f"Final Answer: {item['answer']}")
        for m in d["messages"][2:]:
            if m["role"] == "user":
                assert m["content"].startswith("Observation: ") and "Error" not in m["content"]
            else:
                action = m["content"].split("Action: ", 1)
                if len(action) == 2:
                    call = json.loads(action[1])
                    assert set(call) == {"name", "arguments"} and call["name"] in tools.tools
    for q in arithmetic_questions(50, seed=2):
        assert q["answer"] == calculate(q["expression"]) and 10 <= abs(int(q["expression"].split()[0].strip("("))) <= 9999


def test_rag_pipeline_runs_a_real_model_and_fits_the_context(kg, store):
    tok = small_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    pipe = RagPipeline(store, model, tok, k=3, max_new_tokens=8)
    q = fact_questions(kg, "eval", ["en"])[0]
    ans = pipe.ask(q["question"])
    assert 1 <= len(ans.passages) <= 3
    n = len(tok.encode_chat(rag_messages(q["question"], ans.passages), add_generation_prompt=True)[0])
    assert n + 8 <= 256
    excluded = pipe.ask(q["question"], exclude_docs=[f"{q['entity']}:en"])
    assert f"{q['entity']}:en" not in excluded.doc_ids
    assert "[1]" in ans.render()
    # the question-first layout: the same passages, the question before them, in training and in the pipeline
    first = RagPipeline(store, model, tok, k=1, max_new_tokens=8, layout="question_first")
    msgs, hits = first.prompt(q["question"])
    assert msgs[1]["content"] == f"Question: {q['question']}\n[1] {hits[0].text}"
    assert rag_messages("李伟出生在哪里？", ["x"], layout="question_first")[1]["content"] == "问题：李伟出生在哪里？\n[1] x"
    with pytest.raises(ValueError, match="layout"):
        rag_messages("q", ["x"], layout="sideways")


def test_memory_evicts_summarises_and_recalls():
    count = lambda msgs: sum(len(m["content"].split()) + 2 for m in msgs)  # noqa: E731
    mem = ConversationMemory(count, budget=60, system="Be brief.")
    mem.add("user", "My cat is called Miso. She is orange.")
    mem.add("assistant", "Miso sounds lovely.")
    for i in range(6):
        mem.add("user", f"Tell me fact number {i} about the weather today please.")
        mem.add("assistant", f"Weather fact {i}: it is sunny.")
    assert mem.evicted and mem.evicted[0]["content"].startswith("My cat")
    assert "My cat is called Miso." in mem.summary
    prompt = mem.messages_for("What is my cat called?")
    assert count(prompt) <= 60
    assert prompt[0]["content"] == "Be brief." and prompt[-1]["content"] == "What is my cat called?"
    assert "Relevant earlier turns" in prompt[1]["content"] and "Miso" in prompt[1]["content"]
    with pytest.raises(ValueError):
        ConversationMemory(count, budget=0)


def test_agent_search_traces_answer_from_passages(kg, store):
    from lmstack.apps.tools import search_tool

    tools = ToolBox([search_tool(store, k_default=2)])
    items = [dict(q, kind="fact_search") for q in fact_questions(kg, "train")[:6]]
    data = agent_sft_examples(items, tools, kg)
    assert len(data) == 6
    for d, item in zip(data, items):
        assert '"name":"search"' in d["messages"][2]["content"]
        assert d["messages"][3]["content"].startswith("Observation: [1] ")
        assert d["messages"][-1]["content"].endswith(f"Final Answer: {item['answer']}")


def test_long_agent_traces_are_cut_as_the_agent_cuts_its_context(kg):
    from lmstack.apps.agent import turn_context
    from lmstack.apps.agent_data import inference_views

    tools = ToolBox([calculator_tool(), date_tool()] + kg_tools(kg))
    item = next(q for q in multihop_questions(kg, ["en"]) if q["kind"] == "occ_hobby_country")
    size = lambda msgs: sum(len(m["content"]) for m in msgs)  # noqa: E731  (characters as "tokens")
    full = agent_sft_examples([item], tools, kg)[0]["messages"]
    turns = [i for i, m in enumerate(full) if m["role"] == "assistant"]
    reserve = max(size([full[i]]) for i in turns) + 1
    limit = size(full) - 10
    stats = {}
    data = agent_sft_examples([item], tools, kg, count_tokens=size, max_tokens=limit, reserve=reserve, stats=stats)
    assert stats == {"agent_traces": 1, "agent_traces_split": 1, "agent_traces_dropped": 0, "agent_turns_dropped": 0}
    assert data[0]["messages"] == full[:len(data[0]["messages"])] and "trimmed" not in data[0]
    assert all(d["trimmed"] and d["messages"][:2] == full[:2] for d in data[1:])
    assert data[-1]["messages"][-1] == full[-1]
    # every assistant turn is trained, in some conversation, on exactly the context the agent shows at that step
    for i in turns:
        shown = turn_context(full[:i], size, limit, reserve)
        assert any(d["messages"][:len(shown) + 1] == shown + [full[i]] for d in data), i
    assert all(size(d["messages"]) <= limit for d in data)
    # a trace that fits (with its reserve) stays whole; a context too small for any turn drops every turn
    stats = {}
    assert [d["messages"] for d in agent_sft_examples([item], tools, kg, count_tokens=size, max_tokens=10 ** 6,
                                                      reserve=reserve, stats=stats)] == [full]
    assert stats["agent_traces_split"] == 0
    views, dropped = inference_views(full, size, size(full[:2]) + 5, reserve)
    assert views == [] and dropped == len(turns)


def test_answer_clause_quotes_the_passage_and_states_the_answer(kg):
    from lmstack.apps.worldqa import answer_clause

    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(kg)}
    qs = fact_questions(kg, "train")
    assert {q["relation"] for q in qs} == {"birth_year", "birthplace", "occupation", "hobby", "country", "capital"}
    for q in qs:
        clause = answer_clause(kg, q["entity"], q["relation"], q["lang"])
        assert answer_matches(clause, q["answer"]), (clause, q["answer"])
        # the value follows the same words in the passage as in the clause: copyable
        value = q["answer"]
        opening = clause[:clause.index(value)].split(kg.name(q["entity"], q["lang"]))[-1][-4:]
        assert opening + value in passages[(q["entity"], q["lang"])], (opening, value)
    other = next(q for q in qs if q["relation"] == "occupation")
    assert not answer_matches(answer_clause(kg, other["entity"], "hobby", other["lang"]), other["answer"])
    with pytest.raises(ValueError, match="relation"):
        answer_clause(kg, other["entity"], "spouse", "en")


def test_no_answer_clause_opens_like_the_answer_and_says_cannot_find(kg, store):
    """The "not in the passages" target shares its opening with the quoted answer up to the subject (and the
    verb for en capitals), so answer-or-refuse is decided after the copied name; the judge reads it as
    'cannot find', never as an answer."""
    import os

    from lmstack.apps.worldqa import answer_clause, no_answer_clause

    qs = fact_questions(kg, "train")
    for q in qs:
        absent, clause = no_answer_clause(kg, q["entity"], q["relation"], q["lang"]), \
            answer_clause(kg, q["entity"], q["relation"], q["lang"])
        name = kg.name(q["entity"], q["lang"])
        assert name in q["question"] and is_cannot_find(absent) and not is_cannot_find(clause), absent
        assert not answer_matches(absent, q["answer"])
        assert len(os.path.commonprefix([absent, clause])) >= len(name) + clause.index(name), (absent, clause)
    fr = next(q for q in qs if q["relation"] == "capital" and q["lang"] == "en")
    assert no_answer_clause(kg, fr["entity"], "capital", "en").startswith("The capital of ")
    assert is_cannot_find(CANNOT_FIND["en"]) and is_cannot_find("米拉·特纳不在资料中。")
    with pytest.raises(ValueError, match="relation"):
        no_answer_clause(kg, fr["entity"], "spouse", "en")
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(kg)}
    data = rag_sft_examples(qs, passages, lambda q, n: [h.text for h in store.search(q, n)], k=1,
                            no_answer_rate=0.5, seed=2,
                            no_answer_text=lambda q: no_answer_clause(kg, q["entity"], q["relation"], q["lang"]))
    by_question = {q["question"]: q for q in qs}
    refusals = [(d, by_question[d["messages"][1]["content"].split("Question: ")[-1].split("问题：")[-1]])
                for d in data if d["task"] == "rag_cannot_find"]
    assert all(d["messages"][1]["content"].startswith("[1] ") for d in data)
    ordered = rag_sft_examples(qs[:4], passages, lambda q, n: [h.text for h in store.search(q, n)], k=1, seed=2,
                               layout="question_first")
    assert [d["messages"][1]["content"].split("\n")[0] for d in ordered] == \
        [rag_messages(q["question"], [], q["lang"])[1]["content"].strip() for q in qs[:4]]
    twins = rag_sft_examples(qs, passages, lambda q, n: [h.text for h in store.search(q, n)], k=1,
                             no_answer_rate=0.5, seed=2, paired=True)
    # paired: each refusal is followed by the same question with the gold passage, answered
    assert len(twins) > len(data) and any(d["task"] == "rag_cannot_find" for d in twins)
    for no, yes in zip(twins, twins[1:]):
        if no["task"] == "rag_cannot_find":
            question = no["messages"][1]["content"].split("\n")[-1]
            assert yes["task"] == "rag" and yes["messages"][1]["content"].split("\n")[-1] == question
            assert yes["messages"][1]["content"] != no["messages"][1]["content"]
    assert refusals and all(d["messages"][-1]["content"] == no_answer_clause(kg, q["entity"], q["relation"],
                                                                            q["lang"]) for d, q in refusals)


class _KeywordEncoder:
    """Unit vectors from the presence of a few words: a passage is similar to a question that names its person."""
    WORDS = ("ann", "bob", "cid", "born", "city")

    def __call__(self, texts):
        import numpy as np

        v = np.array([[float(w in t.lower()) for w in self.WORDS] + [0.1] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _keyword_store():
    s = DocumentStore(encoder=_KeywordEncoder())
    s.add_documents([{"id": f"{n}:en", "text": f"{n.capitalize()} was born in a city."} for n in ("ann", "bob", "cid")])
    return s


def test_score_cutoff_answers_cannot_find_without_asking_the_model():
    pipe = RagPipeline(_keyword_store(), None, None, k=1, mode="dense", min_score=0.99)  # no model: must not be asked
    out = pipe.ask("Where was Dan born?")
    assert out.gated and out.text == CANNOT_FIND["en"] and out.support < 0.99 and out.passages
    assert pipe.gates(0.5) and not pipe.gates(0.995) and pipe.gates(None)
    with pytest.raises(ValueError, match="dense encoder"):
        RagPipeline(DocumentStore(), None, None, min_score=0.5)


def test_calibrated_cutoff_separates_answerable_from_missing_passages():
    from lmstack.apps.rag import calibrate_min_score

    pipe = RagPipeline(_keyword_store(), None, None, k=1, mode="dense")
    questions = [{"question": f"Where was {n.capitalize()} born?", "entity": n} for n in ("ann", "bob", "cid")]
    fit = calibrate_min_score(pipe, questions, lambda q: [f"{q['entity']}:en"])
    assert fit["kept"] == 1.0 and fit["cut"] == 1.0 and fit["n"] == 3
    gold = pipe.support("Where was Ann born?", "Ann was born in a city.")
    other = pipe.support("Where was Ann born?", "Bob was born in a city.")
    assert other < fit["min_score"] < gold


def test_rag_qa_scores_the_model_and_the_cutoff_from_one_answer():
    from lmstack.apps.evaluate import rag_qa
    from lmstack.apps.rag import RagAnswer

    class Stub:  # answers right when the gold passage is there (support 0.9), hallucinates without it (0.3)
        min_score = 0.5

        def gates(self, support):
            return support < self.min_score

        def closed_book(self, question):
            return "I don't know."

        def ask(self, question, exclude_docs=(), gate=True):
            assert gate is False  # the measurement asks the model every time
            if exclude_docs:
                return RagAnswer(question, "Bob was born in Rome [1]", ["Bob ..."], ["bob:en"], 0.3)
            return RagAnswer(question, "Ann was born in Oslo [1]", ["Ann ..."], ["ann:en"], 0.9)

    qs = [{"question": "Where was Ann born?", "answer": "Oslo", "entity": "ann", "lang": "en"}]
    out = rag_qa(Stub(), qs, progress=False)
    assert out["rag"] == 1.0 and out["cannot_find"] == 0.0  # the model alone never says it cannot find
    assert out["gated_rag"] == 1.0 and out["gated_cannot_find"] == 1.0 and out["cutoff_kept"] == out["cutoff_cut"] == 1.0
    assert out["samples"][0][3].startswith(CANNOT_FIND["en"]) and "Bob was born in Rome" in out["samples"][0][3]
