"""The paged KV cache and the continuous-batching scheduler: block accounting, prefix sharing,
chunked prefill, preemption by recompute, and outputs equal to lmstack.generate's."""

import pytest

from lmstack.generate import GenerationConfig, generate
from lmstack.generate.sequence import encode_prompt
from lmstack.serve.kv_pool import BlockPool, block_keys
from lmstack.serve.scheduler import RequestRejected, Scheduler, SchedulerConfig
from test_generate_common import small_tokenizer, tiny_model

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed any further, hear me", "床前明月光", "A",
           "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?", "KING HENRY:", "静夜思", "To be, or not to be"]


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size)


def run(model, tok, prompts, cfgs, **sched):
    s = Scheduler(model, tok, SchedulerConfig(**sched))
    if isinstance(cfgs, GenerationConfig):
        cfgs = [cfgs] * len(prompts)
    ids = [s.add(encode_prompt(tok, p), c) for p, c in zip(prompts, cfgs)]
    events = s.run_to_completion()
    outs = []
    for i in ids:
        evs = events[i]
        outs.append(([e.token_id for e in evs if e.token_id is not None], "".join(e.text for e in evs),
                     evs[-1].finish_reason))
    return s, outs


def small_pool(n=8, bs=4):
    return BlockPool(n_layers=1, n_blocks=n, block_size=bs, n_kv_heads=1, head_dim=2)


# ---------------------------------------------------------------- block pool

def test_allocation_and_freeing_return_every_block():
    pool = small_pool()
    a, b = [], []
    assert pool.ensure(a, 9) and len(a) == 3  # ceil(9 / 4)
    assert pool.ensure(b, 4) and len(b) == 1
    assert pool.num_used == 4 and pool.num_free == 4 and not set(a) & set(b)
    assert pool.ensure(a, 12) and len(a) == 3  # still fits in three blocks
    assert not pool.ensure(b, 4 * 6)  # would need 5 more, only 4 free: nothing taken
    assert len(b) == 1 and pool.num_free == 4
    pool.free_table(a)
    pool.free_table(b)
    assert a == [] and pool.num_used == 0 and pool.num_free == 8
    pool.check_all_free()


def test_slots_follow_the_block_table():
    pool = small_pool()
    assert pool.slots([5, 2], 0, 6).tolist() == [20, 21, 22, 23, 8, 9]
    assert pool.slots([5, 2], 3, 5).tolist() == [23, 8]


def test_prefix_sharing_counts_references_and_evicts_lru():
    pool = small_pool(n=4, bs=2)
    tokens = [1, 2, 3, 4, 5]
    keys = block_keys(tokens, 2)
    assert len(keys) == 2 and keys != block_keys([1, 2, 3, 9], 2)
    assert block_keys([9, 9, 3, 4], 2)[1] != keys[1]  # a block's key depends on what precedes it
    first = []
    pool.ensure(first, 5)
    for blk, key in zip(first, keys):
        pool.register(blk, key)
    second = pool.match_prefix(keys)
    shared = list(second)
    assert second == first[:2]
    assert [pool.refcount[b] for b in first] == [2, 2, 1]
    pool.free_table(first)
    assert [pool.refcount[b] for b in second] == [1, 1] and pool.num_used == 2
    pool.free_table(second)
    assert pool.num_used == 0 and len(pool.evictable) == 2  # contents kept for later hits
    again = pool.match_prefix(keys[:1])
    assert again == shared[:1] and pool.hits == 3
    pool.free_table(again)
    big = []
    assert pool.ensure(big, 8)  # needs every block: the cached ones are evicted
    assert pool.evictions == 2 and pool.match_prefix(keys) == []
    pool.free_table(big)
    pool.check_all_free()
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release(big[0] if big else 0)


def test_leak_check_names_the_blocks():
    pool = small_pool()
    t = []
    pool.ensure(t, 1)
    with pytest.raises(RuntimeError, match="still referenced"):
        pool.check_all_free()


# ---------------------------------------------------------------- scheduler vs generate

def test_greedy_equals_generate_alone_and_in_a_batch_of_16(model, tok):
    cfg = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    prompts = (PROMPTS * 2)[:16]
    ref = [generate(model, tok, [p], cfg)[0] for p in prompts]
    for p, r in zip(prompts[:3], ref):
        _, [alone] = run(model, tok, [p], cfg)
        assert alone == (r.token_ids, r.text, "length")
    s, batch = run(model, tok, prompts, cfg)
    assert batch == [(r.token_ids, r.text, "length") for r in ref]
    # 16 tokens each: all decode in lockstep, except that the second copy of a prompt with a full block
    # waits one step to reuse the first copy's blocks
    assert s.steps == 17
    s.pool.check_all_free()


def test_seeded_sampling_alone_equals_inside_a_batch_of_16(model, tok):
    prompts = (PROMPTS * 2)[:16]
    cfgs = [GenerationConfig(strategy="sample", temperature=0.8, top_p=0.95, seed=100 + i, max_new_tokens=12,
                             ignore_eos=True, presence_penalty=0.3) for i in range(16)]
    _, batch = run(model, tok, prompts, cfgs)
    assert len({b[0][0] for b in batch}) > 1
    for i in (0, 5, 11):
        assert run(model, tok, [prompts[i]], [cfgs[i]])[1] == [batch[i]]
    assert batch == [(g.token_ids, g.text, "length") for g in generate(model, tok, prompts, cfgs)]


def test_stop_tokens_stop_strings_and_default_config(model, tok):
    base = generate(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=30, ignore_eos=True))[0]
    stop = base.text[6:9]
    cfgs = [GenerationConfig(), GenerationConfig(max_new_tokens=30, ignore_eos=True, stop=[stop]),
            GenerationConfig(max_new_tokens=6, stop_token_ids=[base.token_ids[2]])]
    prompts = ["ROMEO:"] * 3
    ref = generate(model, tok, prompts, cfgs)
    _, outs = run(model, tok, prompts, cfgs)
    assert outs == [(r.token_ids, r.text, r.finish_reason) for r in ref]
    assert outs[1][2] == "stop" and stop not in outs[1][1]
    assert outs[2][0][-1] == base.token_ids[2] and outs[2][2] == "stop"


def test_chunked_prefill_with_a_small_token_budget(model, tok):
    cfg = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    ref = [generate(model, tok, [p], cfg)[0] for p in PROMPTS]
    s, outs = run(model, tok, PROMPTS, cfg, max_batched_tokens=5, block_size=4)
    assert outs == [(r.token_ids, r.text, "length") for r in ref]
    assert s.prompt_tokens_computed == sum(len(encode_prompt(tok, p)) for p in PROMPTS)


def test_token_budget_caps_every_step(model, tok):
    s = Scheduler(model, tok, SchedulerConfig(max_batched_tokens=6, block_size=4, num_blocks=64))
    for p in PROMPTS:
        s.add(encode_prompt(tok, p), GenerationConfig(max_new_tokens=4, ignore_eos=True))
    sizes = []
    while s.has_work():
        s.step()
        sizes.append(s.last_step_tokens)
    assert max(sizes) == 6 and min(sizes) > 0 and s.max_running_seen > 1
    s.pool.check_all_free()


def test_preemption_by_recompute_gives_the_same_tokens(model, tok):
    greedy = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    sampled = GenerationConfig(strategy="sample", temperature=0.9, seed=5, max_new_tokens=24, ignore_eos=True)
    cfgs = [greedy if i % 2 else sampled.replace(seed=i) for i in range(len(PROMPTS))]
    _, roomy = run(model, tok, PROMPTS, cfgs, num_blocks=256, block_size=4)
    tight, cramped = run(model, tok, PROMPTS, cfgs, num_blocks=16, block_size=4)
    assert tight.preemptions > 0
    assert cramped == roomy
    ref = generate(model, tok, PROMPTS, cfgs)
    assert cramped == [(r.token_ids, r.text, "length") for r in ref]
    tight.pool.check_all_free()


def test_prefix_cache_hit_reuses_blocks_and_keeps_output(model, tok):
    header = "First Citizen:\nBefore we proceed any further, hear me speak. All: Speak, speak."
    prompts = [header + " ROMEO:", header + " JULIET:"]
    cfg = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    s = Scheduler(model, tok, SchedulerConfig(block_size=4, num_blocks=64))
    first = s.add(encode_prompt(tok, prompts[0]), cfg)
    out1 = s.run_to_completion()[first]
    second = s.add(encode_prompt(tok, prompts[1]), cfg)
    seq = s.seqs[second]
    out2 = s.run_to_completion()[second]
    assert seq.cached_tokens >= 12 and s.pool.hits >= 3
    ref = generate(model, tok, prompts, cfg)
    assert [e.token_id for e in out1] == ref[0].token_ids
    assert [e.token_id for e in out2] == ref[1].token_ids
    s.pool.check_all_free()
    off = Scheduler(model, tok, SchedulerConfig(block_size=4, num_blocks=64, prefix_caching=False))
    off.add(encode_prompt(tok, prompts[0]), cfg)
    off.run_to_completion()
    sid = off.add(encode_prompt(tok, prompts[1]), cfg)
    assert off.seqs[sid] and off.pool.hits == 0


def test_abort_frees_blocks_and_requests_that_cannot_fit_are_rejected(model, tok):
    s = Scheduler(model, tok, SchedulerConfig(block_size=4, num_blocks=12))
    with pytest.raises(RequestRejected, match="needs .* KV blocks"):
        s.add(encode_prompt(tok, "ROMEO:"), GenerationConfig(max_new_tokens=100))
    with pytest.raises(RequestRejected, match="context"):
        s.add(list(range(1, 200)), GenerationConfig(max_new_tokens=1))
    a = s.add(encode_prompt(tok, PROMPTS[1]), GenerationConfig(max_new_tokens=20, ignore_eos=True))
    b = s.add(encode_prompt(tok, PROMPTS[0]), GenerationConfig(max_new_tokens=20, ignore_eos=True))
    for _ in range(3):
        s.step()
    assert s.pool.num_used > 0
    s.abort(a)
    s.abort(b)
    assert not s.has_work()
    s.pool.check_all_free()


def test_max_tokens_zero_finishes_without_running(model, tok):
    s, [out] = run(model, tok, ["ROMEO:"], GenerationConfig(max_new_tokens=0))
    assert out == ([], "", "length") and s.steps == 1


def test_decode_groups_across_padded_lengths_and_alone_equals_batched(model, tok):
    from lmstack.serve.paged_model import DECODE_PAD

    long_prompt = [tok.bos_id] + tok.encode("First Citizen:\nBefore we proceed any further, hear me speak. " * 3)
    assert len(long_prompt) > DECODE_PAD  # its decodes attend in another padded group than the short ones
    prompts = [long_prompt, encode_prompt(tok, "ROMEO:"), encode_prompt(tok, PROMPTS[4]), long_prompt[:DECODE_PAD - 3]]
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    ref = generate(model, tok, prompts, cfg)
    s, batch = run(model, tok, prompts, cfg)
    assert batch == [(r.token_ids, r.text, "length") for r in ref]
    for p, b in zip(prompts, batch):
        assert run(model, tok, [p], cfg)[1] == [b]


def test_a_long_prompt_is_prefilled_in_chunks_beside_running_decodes(model, tok):
    s = Scheduler(model, tok, SchedulerConfig(max_batched_tokens=8, block_size=4, num_blocks=128))
    short = s.add(encode_prompt(tok, "A"), GenerationConfig(max_new_tokens=30, ignore_eos=True))
    s.step()  # the short request is decoding now
    long_prompt = [tok.bos_id] + tok.encode("First Citizen:\nBefore we proceed any further, hear me speak. " * 2)
    assert len(long_prompt) > 4 * 8
    late = s.add(long_prompt, GenerationConfig(max_new_tokens=3, ignore_eos=True))
    steps_until_late_token = 0
    while True:
        events = s.step()
        steps_until_late_token += 1
        assert any(e.seq_id == short and e.token_id is not None for e in events)  # never stalled
        assert s.last_step_tokens <= 8
        if any(e.seq_id == late for e in events):
            break
    assert steps_until_late_token >= len(long_prompt) // 7  # the prompt really went in several chunks
    s.run_to_completion()
    s.pool.check_all_free()


def test_simultaneous_requests_with_one_prompt_prefill_it_once(model, tok):
    prompt = [tok.bos_id] + tok.encode("First Citizen:\nBefore we proceed any further, hear me speak.")
    cfg = GenerationConfig(strategy="sample", temperature=0.9, max_new_tokens=6, ignore_eos=True)
    cfgs = [cfg.replace(seed=i) for i in range(4)]  # like the n choices of one request
    ref = generate(model, tok, [prompt] * 4, cfgs)
    for caching, computed in ((True, len(prompt) + 3 * (len(prompt) - (len(prompt) - 1) // 4 * 4)),
                              (False, 4 * len(prompt))):
        s, outs = run(model, tok, [prompt] * 4, cfgs, block_size=4, prefix_caching=caching)
        assert outs == [(g.token_ids, g.text, "length") for g in ref]
        assert s.prompt_tokens_computed == computed
        s.pool.check_all_free()
