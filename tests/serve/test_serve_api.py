"""The server through the real `openai` client: chat and completions, streaming, n > 1, stop, logprobs,
tools, errors, guardrails and metrics; greedy answers equal lmstack.generate's."""

import json

import httpx
import openai
import pytest

from lmstack.generate import GenerationConfig, chat, generate
from serve_helpers import (PII_ANSWER, PII_QUESTION, TOOL_ANSWER, TOOL_QUESTION, WEATHER_TOOL, LiveServer, make_state,
                           small_tokenizer, tool_calling_model)

MODEL = "tiny"


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tool_calling_model(tok)


@pytest.fixture(scope="module")
def server(model, tok):
    with LiveServer(make_state(model, tok)) as srv:
        yield srv
    srv.state.engine.scheduler.pool.check_all_free()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_greedy_equals_generate_and_counts_usage(client, model, tok):
    msgs = [{"role": "user", "content": "Who wrote Romeo and Juliet?"}]
    ref = chat(model, tok, [msgs], GenerationConfig(max_new_tokens=24))[0]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.completion_tokens == len(ref.token_ids) and r.usage.prompt_tokens == ref.prompt_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == MODEL


def test_chat_streaming_matches_non_streaming(client):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full.choices[0].message.content
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_equal_generate_streaming_or_not(client, model, tok):
    ref = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=12, ignore_eos=True))[0]
    r = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == ref.text and r.usage.completion_tokens == 12
    assert r.choices[0].finish_reason == "length"
    streamed = list(client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=12, temperature=0,
                                              stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed) == ref.text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_batch_of_prompts_and_n_choices(client, model, tok):
    prompts = ["ROMEO:", "JULIET:", "First Citizen:"]
    ref = generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, ignore_eos=True))
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [g.text for g in ref]
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10, n=3, temperature=1.0, seed=7,
              extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert len({c.message.content for c in a.choices}) > 1  # choice j samples with seed + j
    assert a.usage.completion_tokens == 30 and a.usage.prompt_tokens == len(tok.encode_chat(kw["messages"], True)[0])
    streamed = list(client.chat.completions.create(**kw, stream=True))
    texts = {i: "".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
             for i in range(3)}
    assert [texts[i] for i in range(3)] == [c.message.content for c in sorted(a.choices, key=lambda c: c.index)]


def test_a_vanishing_temperature_is_greedy(client):
    kw = dict(model=MODEL, prompt="ROMEO:", max_tokens=8, extra_body={"ignore_eos": True})
    greedy = client.completions.create(temperature=0, **kw).choices[0].text
    assert client.completions.create(temperature=1e-200, seed=1, **kw).choices[0].text == greedy


def test_stop_strings_cut_the_answer(client):
    base = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base[5:8]
    r = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == base[:base.index(stop)]
    streamed = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0, stop=stop,
                                         stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_logprobs_chat_and_completions(client, model, tok):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        assert item.logprob == pytest.approx(max(t.logprob for t in item.top_logprobs))  # greedy = the top token
    ref = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=5, ignore_eos=True, logprobs=True))[0]
    c = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=5, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert len(lp.tokens) == 5 and all(len(t) == 2 for t in lp.top_logprobs)


def test_logit_bias_steers_and_unsupported_fields_are_refused(client, tok):
    base = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    banned = tok.encode(base.choices[0].text)[0]
    forced = tok.encode(" Juliet")[0]
    r = client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=6, temperature=0, logprobs=1,
                                  logit_bias={str(banned): -100, str(forced): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text.startswith(tok.decode([forced])) and r.choices[0].text != base.choices[0].text
    for bad in ({"logit_bias": {"x": 1}}, {"logit_bias": {"5": 500}}, {"logit_bias": {str(10**6): 1}},
                {"response_format": {"type": "json_object"}}, {"best_of": 3}, {"suffix": "!"}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=2, extra_body=bad)
        assert e.value.body["param"] == next(iter(bad))


def test_tool_calls_with_finish_reason_tool_calls_also_streaming(client):
    kw = dict(model=MODEL, messages=TOOL_QUESTION, tools=[WEATHER_TOOL], max_tokens=80, temperature=0)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.content is None
    chunks = list(client.chat.completions.create(**kw, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""  # no raw markup leaked
    plain = client.chat.completions.create(**dict(kw, tool_choice="none"))
    assert plain.choices[0].finish_reason != "tool_calls"  # tools not offered: the markup is plain text
    # the model's own answer and the forced prefix for a named tool give the same call
    named = client.chat.completions.create(**kw, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].finish_reason == "tool_calls"
    assert json.loads(named.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}
    # a tool result goes back into the conversation
    follow = TOOL_QUESTION + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                              {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    again = client.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER_TOOL], max_tokens=5)
    assert again.usage.prompt_tokens > r.usage.prompt_tokens + len(TOOL_ANSWER) // 8


def test_errors_are_openai_objects_with_4xx(client, server):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=msgs)
    assert e.value.body["code"] == "model_not_found"
    for bad in ({"temperature": 5}, {"top_p": 0}, {"n": 99}, {"max_tokens": 0}, {"max_tokens": 10**6},
                {"presence_penalty": 3}, {"top_logprobs": 3}, {"stop": ["a", "b", "c", "d", "e"]}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=msgs, **bad)
        assert e.value.body["param"] == next(iter(bad)), bad
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x " * 600, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    for body, status in ((b"{not json", 400), (b"[1, 2]", 400), (b'{"model": "tiny"}', 400),
                         (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}', 400)):
        r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/completions", content=b"x" * (2 << 20))
    assert r.status_code == 413
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"


def test_api_key_is_required_when_set(server):
    server.state.api_key = "s3cret"
    try:
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == MODEL
        assert httpx.get(server.url + "/health").status_code == 200  # health stays open
    finally:
        server.state.api_key = None


def test_pii_in_requests_is_masked_or_refused(client, server, tok):
    prompt = "Call me at 138 1234 5678 tomorrow."
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0, echo=True)
    assert r.choices[0].text.startswith("Call me at <|phone|> tomorrow.")
    ids = tok.encode(prompt)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=2, temperature=0, echo=True)
    assert "138 1234 5678" not in r.choices[0].text and "<|phone|>" in r.choices[0].text  # ids are guarded too
    guard = server.state.guardrails
    guard.pii = "refuse"
    try:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])
        assert e.value.body["code"] == "pii_detected"
    finally:
        guard.pii = "mask"


def test_pii_in_answers_is_masked_streaming_or_not(client, server, model, tok):
    raw = chat(model, tok, [PII_QUESTION], GenerationConfig(max_new_tokens=20))[0].text
    assert raw == PII_ANSWER  # what the model says without the guardrail
    before = sum(server.state.guardrails.response_pii.values())
    r = client.chat.completions.create(model=MODEL, messages=PII_QUESTION, max_tokens=20, temperature=0)
    assert r.choices[0].message.content == "Call <|phone|> now."
    chunks = list(client.chat.completions.create(model=MODEL, messages=PII_QUESTION, max_tokens=20, temperature=0,
                                                 stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "Call <|phone|> now." and not any(ch.isdigit() for p in pieces for ch in p)
    assert sum(server.state.guardrails.response_pii.values()) == before + 2


class _AlwaysBlocks:
    threshold = 0.0

    def blocks(self, messages, answer):
        return True, -1.0


def test_review_replaces_a_blocked_answer_and_counts_it(client, server):
    guard = server.state.guardrails
    guard.reviewer = _AlwaysBlocks()
    try:
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert r.choices[0].message.content == guard.refusal and r.choices[0].finish_reason == "content_filter"
        chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=5, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == guard.refusal
    finally:
        guard.reviewer = None
    assert "lmstack_guardrail_blocked_total 2" in httpx.get(server.url + "/metrics").text


def test_metrics_page_and_web_chat(server):
    text = httpx.get(server.url + "/metrics").text
    for name in ("lmstack_queue_length", "lmstack_running_sequences", "lmstack_kv_blocks_used",
                 "lmstack_kv_blocks_free", "lmstack_tokens_per_second", "lmstack_time_to_first_token_seconds_bucket",
                 "lmstack_request_latency_seconds_count", "lmstack_preemptions_total"):
        assert name in text
    assert "lmstack_kv_blocks_used 0" in text  # nothing in flight: every block is back
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "new-chat" in page.text


def test_sixteen_concurrent_requests_equal_generate(client, server, model, tok):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Speaker {i}:" for i in range(16)]
    ref = generate(model, tok, prompts, GenerationConfig(max_new_tokens=24, ignore_eos=True))
    sched = server.state.engine.scheduler
    sched.max_running_seen = 0

    def ask(p):
        return client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, prompts))
    assert got == [g.text for g in ref]
    assert sched.max_running_seen > 1  # they really shared batches


def test_cancelled_streams_give_their_blocks_back(server):
    import time

    sched = server.state.engine.scheduler
    aborted_before = sched.tokens_generated
    for _ in range(4):
        body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 200, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
            for k, _line in enumerate(r.iter_lines()):
                if k >= 4:
                    break  # hang up mid-answer
    deadline = time.time() + 30
    while (sched.has_work() or sched.pool.num_used) and time.time() < deadline:
        time.sleep(0.05)
    assert not sched.has_work() and sched.pool.num_used == 0
    assert sched.tokens_generated - aborted_before < 4 * 200  # the answers were cut short, not finished


def test_an_engine_failure_is_reported_and_the_server_keeps_serving(client, server, monkeypatch):
    sched = server.state.engine.scheduler
    real_step = sched.step
    calls = []

    def flaky_step():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return real_step()

    monkeypatch.setattr(sched, "step", flaky_step)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
    assert "simulated kernel failure" in e.value.body["message"]
    assert sched.pool.num_used == 0  # the failed request's blocks were released
    ok = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
    assert ok.usage.completion_tokens >= 1


def test_a_stream_never_started_is_released(server):
    """The job of a streaming response the server never began (client gone) is released on collection."""
    import gc

    import lmstack.serve.app as app_mod

    state = server.state
    before = state.in_flight
    state.in_flight += 1  # as handle() does before answering
    body = app_mod.streaming_body(state, None, app_mod.Job("x", 0, None, {}, 0, []), [], None)
    del body
    gc.collect()
    assert state.in_flight == before
