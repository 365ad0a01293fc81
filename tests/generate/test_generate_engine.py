"""The batched KV-cache engine: padding, per-request settings, stop handling, streaming, chat."""

import pytest
import torch

from lmstack.generate import GenerationConfig, chat, generate, stream
from lmstack.generate.text import TextTracker
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed any further, hear me", "床前明月光", "A"]


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size)


def test_batched_left_padding_equals_one_by_one(model, tok):
    cfg = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    batched = generate(model, tok, PROMPTS, cfg)
    for p, b in zip(PROMPTS, batched):
        alone = generate(model, tok, [p], cfg)[0]
        assert b.token_ids == alone.token_ids and b.text == alone.text
        assert len(b.token_ids) == 20 and b.finish_reason == "length"


def test_greedy_matches_full_recompute_without_cache(model, tok):
    ids = [tok.bos_id] + tok.encode("ROMEO:")
    out = generate(model, tok, [ids], GenerationConfig(max_new_tokens=12, ignore_eos=True))[0]
    seq = list(ids)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out.token_ids == seq[len(ids):]


def test_per_request_parameters_in_one_batch(model, tok):
    cfgs = [GenerationConfig(strategy="sample", seed=1, temperature=0.9, top_k=40, max_new_tokens=15, ignore_eos=True),
            GenerationConfig(max_new_tokens=5, ignore_eos=True),
            GenerationConfig(strategy="sample", seed=7, top_p=0.8, max_new_tokens=25, ignore_eos=True),
            GenerationConfig(repetition_penalty=1.5, max_new_tokens=10, ignore_eos=True)]
    batched = generate(model, tok, PROMPTS, cfgs)
    for p, c, b in zip(PROMPTS, cfgs, batched):
        assert b.token_ids == generate(model, tok, [p], c)[0].token_ids
        assert len(b.token_ids) == c.max_new_tokens


def test_seeded_sampling_reproducible_and_seed_sensitive(model, tok):
    c = GenerationConfig(strategy="sample", seed=3, max_new_tokens=20, ignore_eos=True)
    a = generate(model, tok, ["ROMEO:"], c)[0]
    assert a.token_ids == generate(model, tok, ["ROMEO:"], c)[0].token_ids
    others = [generate(model, tok, ["ROMEO:"], c.replace(seed=s))[0].token_ids for s in (4, 5)]
    assert any(o != a.token_ids for o in others)


def test_stop_string_cuts_text_and_is_never_streamed(model, tok):
    base = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=30, ignore_eos=True))[0]
    assert len(base.text) > 10
    stop = base.text[6:9]
    cfg = GenerationConfig(max_new_tokens=30, ignore_eos=True, stop=[stop])
    cut = generate(model, tok, ["ROMEO:"], cfg)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == base.text[: base.text.index(stop)]
    assert len(cut.token_ids) < 30
    streamed = "".join(c.text for c in stream(model, tok, "ROMEO:", cfg))
    assert streamed == cut.text and stop not in streamed


def test_stop_token_ends_generation_and_chat_uses_template(tok):
    m = tiny_model(tok.vocab_size, seed=1)
    conv = [{"role": "user", "content": "hello"}]
    got = chat(m, tok, [conv], GenerationConfig(max_new_tokens=6, stop_token_ids=[]))[0]
    ids, _ = tok.encode_chat(conv, add_generation_prompt=True)
    assert got.token_ids == generate(m, tok, [ids], GenerationConfig(max_new_tokens=6, stop_token_ids=[]))[0].token_ids
    assert got.prompt_tokens == len(ids) and ids[-1] == tok.special_tokens["<|assistant|>"]
    # make <|end|> the favourite token from the third step on: the answer stops there, <|end|> kept in ids only
    end = tok.special_tokens["<|end|>"]
    start = len(ids)

    calls = []

    def boost(module, inputs, out):
        calls.append(1)
        if len(calls) >= 3:  # prefill -> token 1, step -> token 2, step -> token 3 = <|end|>
            out.logits[..., end] += 100.0
        return out

    handle = m.register_forward_hook(boost)
    try:
        stopped = chat(m, tok, [conv], GenerationConfig(max_new_tokens=6))[0]
    finally:
        handle.remove()
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids[-1] == end and len(stopped.token_ids) == 3 and start == stopped.prompt_tokens
    assert stopped.token_ids[:2] == got.token_ids[:2]
    assert stopped.text == tok.decode(stopped.token_ids[:2])


def test_default_stop_tokens_are_eos_and_end(tok):
    from lmstack.generate.sequence import stop_token_ids_for

    assert set(stop_token_ids_for(tok, GenerationConfig())) == {tok.eos_id, tok.special_tokens["<|end|>"]}
    assert stop_token_ids_for(tok, GenerationConfig(ignore_eos=True)) == []


def test_streaming_never_emits_broken_utf8(tok):
    text = "西陸蟬聲唱，南冠客思侵。那堪玄鬢影 — naïve café ☃"
    ids = tok.encode(text)
    assert any(not _valid_utf8(tok.token_bytes(i)) for i in ids)  # characters really are split
    tr = TextTracker(tok)
    pieces = []
    for i in ids:
        tr.push(i)
        pieces.append(tr.take_new(False))
    tr.finish()
    pieces.append(tr.take_new(True))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stream_chunks_concatenate_to_generate_text(model, tok):
    cfg = GenerationConfig(strategy="sample", seed=11, max_new_tokens=40, ignore_eos=True)
    chunks = list(stream(model, tok, ["床前明月光", "ROMEO:"], cfg))
    gens = generate(model, tok, ["床前明月光", "ROMEO:"], cfg)
    for i, g in enumerate(gens):
        mine = [c for c in chunks if c.index == i]
        assert "".join(c.text for c in mine) == g.text
        assert [c.token_id for c in mine] == g.token_ids
        assert mine[-1].finish_reason == "length"
        # each chunk is complete UTF-8 text; only the final flush may hold U+FFFD for invalid bytes
        for c in mine[:-1]:
            assert c.text.encode("utf-8").decode("utf-8") == c.text


def test_logprobs_are_the_raw_model_logprobs(model, tok):
    ids = [tok.bos_id] + tok.encode("ROMEO:")
    g = generate(model, tok, [ids], GenerationConfig(max_new_tokens=5, ignore_eos=True, logprobs=True))[0]
    seq = ids + g.token_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
    want = [float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(g.token_ids)]
    assert g.logprobs == pytest.approx(want, abs=1e-4)


def test_context_limit(model, tok):
    long_prompt = [tok.bos_id] + [5] * 127
    g = generate(model, tok, [long_prompt[:120]], GenerationConfig(max_new_tokens=50, ignore_eos=True))[0]
    assert len(g.token_ids) == 8 and g.finish_reason == "length"  # clipped at max_seq_len=128
    with pytest.raises(ValueError, match="context is 128"):
        generate(model, tok, [long_prompt + [5]], GenerationConfig())


def test_bad_input_messages(model, tok):
    with pytest.raises(ValueError, match="strategy 'nope' is unknown"):
        GenerationConfig(strategy="nope")
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(TypeError, match="list of prompts"):
        generate(model, tok, "ROMEO:", GenerationConfig())
    with pytest.raises(ValueError, match="one per prompt"):
        generate(model, tok, ["a", "b"], [GenerationConfig()] * 3)
    with pytest.raises(ValueError, match="needs draft_model"):
        generate(model, tok, ["a"], GenerationConfig(strategy="speculative"))


def test_bad_words_are_never_generated(model, tok):
    base = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=20, ignore_eos=True))[0]
    banned = base.token_ids[2]
    out = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=20, ignore_eos=True, bad_words_ids=[[banned]]))[0]
    assert banned not in out.token_ids


def _valid_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_decode_step_equals_model_forward(tok, dtype):
    from lmstack.generate import fast
    from lmstack.generate.sequence import left_pad

    m = tiny_model(tok.vocab_size, seed=3, init_std=0.1).to(dtype)
    dec = fast.fast_decoder(m)
    assert dec is not None
    ids, mask = left_pad([[1, 2, 3, 4, 5, 6], [7, 8, 9]], 0, "cpu")
    c_model, c_fast = m.new_kv_cache(2, 32), m.new_kv_cache(2, 32)
    with torch.no_grad():
        m(ids, attention_mask=mask, kv_cache=c_model)
        m(ids, attention_mask=mask, kv_cache=c_fast)
        step = torch.tensor([[11], [12]])
        for _ in range(6):
            want = m(step, kv_cache=c_model).logits[:, -1]
            got = dec.step(step, c_fast)
            torch.testing.assert_close(got, want, atol=1e-5 if dtype == torch.float32 else 1e-9, rtol=1e-5)
            step = want.argmax(-1, keepdim=True)
    assert torch.equal(c_model.next_position, c_fast.next_position) and c_model.length == c_fast.length
    # parameters changed in place (an optimizer step): the next generation's lookup refreshes the fused weights
    with torch.no_grad():
        m.layers[0].attn.k_proj.weight.mul_(1.5)
        m.layers[1].ffn.up_proj.weight.add_(0.01)
        a = m(step, kv_cache=c_model).logits[:, -1]
        assert fast.fast_decoder(m) is dec
        torch.testing.assert_close(dec.step(step, c_fast), a, atol=1e-5 if dtype == torch.float32 else 1e-9, rtol=1e-5)


def test_fast_decode_off_gives_same_generation(model, tok):
    from lmstack.generate import fast

    cfg = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    on = generate(model, tok, PROMPTS, cfg)
    fast.ENABLED = False
    try:
        off = generate(model, tok, PROMPTS, cfg)
    finally:
        fast.ENABLED = True
    assert [g.token_ids for g in on] == [g.token_ids for g in off]


def test_one_seeded_config_for_repeated_prompts_gives_independent_samples(model, tok):
    cfg = GenerationConfig(strategy="sample", seed=21, max_new_tokens=12, ignore_eos=True)
    outs = generate(model, tok, ["ROMEO:"] * 4, cfg)
    assert len({tuple(o.token_ids) for o in outs}) > 1
    # prompt i used seed + i, so each row is reproducible on its own
    assert outs[2].token_ids == generate(model, tok, ["ROMEO:"], cfg.replace(seed=23))[0].token_ids


def test_generate_restores_training_mode(model, tok):
    model.train()
    try:
        a = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=5, ignore_eos=True))[0]
        assert model.training  # restored
    finally:
        model.eval()
    assert a.token_ids == generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=5, ignore_eos=True))[0].token_ids


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (15, 9), (9, 15), (16, 16)])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_fast_decode_weight_layouts_equal_a_plain_matmul(shape, parts):
    from lmstack.generate.fast import _Weight

    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    for m in (1, 5):
        x = torch.randn(m, shape[1], generator=g, dtype=torch.float64)
        torch.testing.assert_close(_Weight(w, parts)(x), x @ w.t(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("parts", [1, 2])
def test_fast_decode_several_tokens_at_once_equals_model_forward(tok, parts):
    """The speculative verify pass: T tokens after a cached prefix, logits at every position."""
    from lmstack.generate import fast

    m = tiny_model(tok.vocab_size, seed=4, init_std=0.1).to(torch.float64)
    dec = fast.FastDecoder(m, parts=parts).refresh()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    c_model, c_fast = m.new_kv_cache(1, 32), m.new_kv_cache(1, 32)
    with torch.no_grad():
        want = m(ids, kv_cache=c_model).logits
        got = dec.step(ids, c_fast, all_positions=True)  # prefill through the fast step
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
        more = torch.tensor([[9, 8, 7]])
        torch.testing.assert_close(dec.step(more, c_fast, all_positions=True),
                                   m(more, kv_cache=c_model).logits, atol=1e-9, rtol=1e-9)
        one = torch.tensor([[6]])
        torch.testing.assert_close(dec.step(one, c_fast), m(one, kv_cache=c_model).logits[:, -1], atol=1e-9, rtol=1e-9)
    assert c_fast.length == c_model.length == 9
    assert torch.equal(c_fast.next_position, c_model.next_position)
    for a, b in zip(c_fast.keys + c_fast.values, c_model.keys + c_model.values):
        torch.testing.assert_close(a[:, :, :9], b[:, :, :9], atol=1e-9, rtol=1e-9)
