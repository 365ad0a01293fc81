"""`lmstack serve --rag INDEX_DIR` through the real `openai` client: the prompt is the one `lmstack rag ask`
builds (so greedy answers are equal), the response names the cited passages, and a request can opt out."""

import httpx
import openai
import pytest

from lmstack.apps.rag import RagPipeline, rag_messages
from lmstack.apps.store import DocumentStore
from lmstack.generate import GenerationConfig, chat
from lmstack.serve.cli import rag_pipeline
from serve_helpers import LiveServer, make_state, small_tokenizer, tiny_model

DOCS = [{"id": "valmora", "text": "Li Wei was born in Valmora. Valmora is a city by the sea."},
        {"id": "paris", "text": "Paris is the capital of France."},
        {"id": "rain", "text": "It rains a lot in the mountains in spring."},
        {"id": "tea", "text": "Li Wei drinks green tea every morning."}]
QUESTION = "Where was Li Wei born?"


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size, max_seq_len=256)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    store = DocumentStore()
    store.add_documents(DOCS)
    return store.save(tmp_path_factory.mktemp("index") / "index")


@pytest.fixture(scope="module")
def server(model, tok, index_dir):
    state = make_state(model, tok)
    state.rag = rag_pipeline(str(index_dir), model, tok, k=2)
    with LiveServer(state) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_rag_answer_equals_rag_ask_and_cites_the_retrieved_passages(client, server, model, tok):
    pipe = RagPipeline(server.state.rag.store, model, tok, k=2, mode="bm25", max_new_tokens=16)
    expected = pipe.ask(QUESTION)
    assert expected.doc_ids[0] == "valmora"  # BM25 finds the passage that holds the answer
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=16, temperature=0)
    assert r.choices[0].message.content.strip() == expected.text
    cites = r.model_extra["citations"]
    assert [c["doc_id"] for c in cites] == expected.doc_ids
    assert [c["index"] for c in cites] == [1, 2] and cites[0]["text"] == expected.passages[0]


def test_rag_uses_the_last_user_turn_and_the_rag_template(client, server, model, tok):
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tea."},
               {"role": "assistant", "content": "Tea is a drink."}, {"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model="tiny", messages=history, max_tokens=12, temperature=0)
    passages = [c["text"] for c in r.model_extra["citations"]]
    ref = chat(model, tok, [rag_messages(QUESTION, passages)], GenerationConfig(max_new_tokens=12))[0]
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == ref.prompt_tokens


def test_rag_false_is_a_plain_chat_and_streaming_sends_the_citations_first(client, model, tok):
    msgs = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0,
                                           extra_body={"rag": False})
    assert plain.choices[0].message.content == chat(model, tok, [msgs], GenerationConfig(max_new_tokens=10))[0].text
    assert "citations" not in (plain.model_extra or {})
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0,
                                                 stream=True))
    assert [c["doc_id"] for c in chunks[0].model_extra["citations"]][0] == "valmora"
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content


def test_rag_request_without_an_index_is_a_clear_400(model, tok):
    with LiveServer(make_state(model, tok)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "rag": True})
        assert r.status_code == 400 and "--rag INDEX_DIR" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "rag": True})
        assert r.status_code == 400 and "chat/completions only" in r.json()["error"]["message"]


def test_rag_pipeline_builds_prompts_in_the_layout_the_model_was_tuned_with(model, tok, index_dir):
    for layout in ("passages_first", "question_first"):
        msgs, hits = rag_pipeline(str(index_dir), model, tok, k=1, layout=layout).prompt("Where was Li Wei born?")
        assert hits and msgs == rag_messages("Where was Li Wei born?", [hits[0].text], layout=layout)


def test_rag_below_the_score_cutoff_forces_the_cannot_find_answer(model, tok):
    from lmstack.apps.rag import CANNOT_FIND

    class Letters:  # a deterministic encoder: letter counts
        def __call__(self, texts):
            import numpy as np

            v = np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], np.float32) + 0.01
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    store = DocumentStore(encoder=Letters())
    store.add_documents(DOCS)
    msgs = [{"role": "user", "content": QUESTION}]
    for min_score, forced in ((1.01, True), (-1.0, False)):
        state = make_state(model, tok)
        state.rag = RagPipeline(store, model, tok, k=1, mode="bm25", min_score=min_score)
        with LiveServer(state) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            text = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8,
                                                  temperature=0).choices[0].message.content
        ungated = chat(model, tok, [rag_messages(QUESTION, [store.search(QUESTION, 1)[0].text])],
                       GenerationConfig(max_new_tokens=8))[0].text
        assert text.startswith(CANNOT_FIND["en"]) if forced else text == ungated


def test_unknown_entity_gate_forces_i_dont_know_on_chat(model, tok):
    """With the checkpoint's familiarity gate loaded, a chat about a name the model never read is answered
    "I don't know." (a forced prefix); other chats are the model's plain answers."""
    from lmstack.align.familiarity import FamiliarityGate

    class Gate:  # stops conversations that mention Oscar
        threshold = 1.0

        def check(self, _model, _tok, conversations):
            return [("Oscar" in c[-1]["content"], 5.0, "Oscar") for c in conversations]

        reply = staticmethod(FamiliarityGate.reply)

    state = make_state(model, tok)
    state.gate = (Gate(), model)
    with LiveServer(state) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def ask(q):
            return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                                  max_tokens=6, temperature=0).choices[0].message.content

        assert ask("Where was Oscar Walker born?").startswith("I don't know.")
        plain = chat(model, tok, [[{"role": "user", "content": QUESTION}]], GenerationConfig(max_new_tokens=6))[0].text
        assert ask(QUESTION) == plain
