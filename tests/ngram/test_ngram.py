"""n-gram LMs: hand-worked counts, normalisation of every estimator, an independent Kneser-Ney
oracle, KenLM equality of the ARPA export, unknown words, ARPA import errors, and the stage."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from lmstack import DATA_DIR
from lmstack.ngram import (BOS, EOS, METHODS, UNK, Vocab, count_ngrams, count_padded, count_token_stream, fit,
                           pad_sentences, read_arpa,
                           write_arpa)
from lmstack.ngram.counts import split_units
from lmstack.ngram.models import kn_discounts, simple_good_turing

SHAKESPEARE = DATA_DIR / "en" / "tinyshakespeare.txt"
NORMALISED = [m for m in METHODS if m != "stupid_backoff"]


def _random_corpus(rng, n_sent=60, vocab=6, max_len=9):
    words = [chr(ord("a") + i) for i in range(vocab)]
    # Skewed word choice so that count-of-counts look like language (many singletons, some big counts).
    p = np.arange(vocab, 0, -1, dtype=float) ** 2
    p /= p.sum()
    return [" ".join(rng.choice(words, size=rng.integers(0, max_len), p=p)) for _ in range(n_sent)]


def _brute_counts(lines, order):
    c = Counter()
    for line in lines:
        padded = ["<s>"] + line.split() + ["</s>"]
        for k in range(1, order + 1):
            for i in range(len(padded) - k + 1):
                c[tuple(padded[i:i + k])] += 1
    return c


@pytest.fixture(scope="module")
def shakespeare_lines():
    lines = SHAKESPEARE.read_text(encoding="utf-8").split("\n")
    return lines[:4000], lines[4000:4300]


def test_hand_worked_counts():
    lines = ["a b a c", "b a c a b", "c c a", "a b"]
    vocab = Vocab.from_lines(lines, "word")
    assert vocab.symbols == ["<unk>", "<s>", "</s>", "a", "b", "c"]
    c = count_ngrams(vocab.encode_lines(lines), vocab, 3)
    # Worked by hand: a appears 6 times, "a b" 3 times (1, 2nd sentence end, 4th), "<s> a b" twice.
    assert c.count(["a"]) == 6 and c.count(["<s>"]) == 4 and c.count(["</s>"]) == 4
    assert c.count(["a", "b"]) == 3 and c.count(["a", "c"]) == 2 and c.count(["c", "c"]) == 1
    assert c.count(["<s>", "a", "b"]) == 2 and c.count(["a", "b", "</s>"]) == 2 and c.count(["b", "a", "c"]) == 2
    assert c.count(["b", "b"]) == 0 and c.count(["</s>", "<s>"]) == 0  # never across sentences
    assert c.n_events == 4 + 5 + 3 + 2 + 4 and c.n_sentences == 4
    assert [c.num_grams(k) for k in (2, 3)] == [11, 11]


@pytest.mark.parametrize("chunk", [7, 1_000_000])
def test_counts_match_brute_force_and_streaming(chunk):
    rng = np.random.default_rng(0)
    lines = _random_corpus(rng, n_sent=80)
    vocab = Vocab.from_lines(lines, "word")
    c = count_ngrams(vocab.encode_lines(lines), vocab, 4, chunk_tokens=chunk)
    brute = _brute_counts(lines, 4)
    for k in range(1, 5):
        grams = c.grams(k)
        got = {tuple(vocab.symbols[i] for i in g): int(n) for g, n in zip(grams, c.counts[k]) if n > 0}
        want = {g: n for g, n in brute.items() if len(g) == k}
        assert got == want
    # The same corpus as a token shard stream (BOS-separated documents) counts the same.
    bos_token = vocab.size  # an id outside the units, as a tokenizer's <|bos|> would be
    stream = np.concatenate([[bos_token] + [int(i) - 3 for i in s] for s in vocab.encode_lines(lines)])
    tok_vocab = Vocab.for_token_ids(vocab.size + 1)
    c2 = count_token_stream(stream, bos_token, tok_vocab, 4, chunk_tokens=chunk)
    for k in range(2, 5):
        assert sorted(c2.counts[k].tolist()) == sorted(c.counts[k].tolist())
    assert c2.n_events == c.n_events and c2.n_sentences == c.n_sentences


def _all_contexts(counts, order):
    """Every seen context of every length < order (as histories ending at the predicted position),
    plus unseen ones, left-padded with -1 to order-1 columns."""
    H = order - 1
    out = [np.full(H, -1)]
    for m in range(1, order):
        for g in counts.grams(m):
            if EOS in g[:-1] or g[-1] == EOS or (BOS in g[1:]):
                continue
            h = np.full(H, -1)
            h[H - m:] = g
            out.append(h)
    out.append(np.r_[np.full(H - 2, -1), [3, 3]][-H:] if H >= 2 else np.full(H, -1))
    out.append(np.full(H, 4))  # a run of one word, likely never seen at this length
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("method", METHODS)
def test_probabilities_sum_to_one_for_every_context(method, order):
    rng = np.random.default_rng(order)
    lines = _random_corpus(rng)
    vocab = Vocab.from_lines(lines, "word")
    counts = count_ngrams(vocab.encode_lines(lines), vocab, order)
    model = fit(counts, method)
    ctxs = _all_contexts(counts, order)
    V = vocab.size
    hist = np.repeat(ctxs, V, axis=0)
    words = np.tile(np.arange(V), len(ctxs))
    p = 10.0 ** model.log10_probs(hist, words)
    p = p.reshape(len(ctxs), V)
    assert (p[:, BOS] == 0).all()
    sums = p.sum(axis=1)
    if method == "stupid_backoff":
        assert not model.normalised
        if order > 1:  # its unigram level is add-one, a distribution; backing off breaks that
            assert np.abs(sums - 1).max() > 1e-3
    else:
        np.testing.assert_allclose(sums, 1.0, atol=1e-9)
        if method != "mle":
            assert (p[:, [i for i in range(V) if i != BOS]] > 0).all()  # smoothing leaves no zero


def test_mle_zero_probability_problem_is_measured():
    train = ["a b c", "a b d"]
    vocab = Vocab.from_lines(train, "word")
    model = fit(count_ngrams(vocab.encode_lines(train), vocab, 2), "mle")
    score = model.score_sentences(vocab.encode_lines(["a b c", "a c", "b a"]))
    # Unseen bigrams: (a c), (<s> b), (b a), (a </s>): four zero-probability events.
    assert score.n_zero_prob == 4 and score.perplexity == math.inf and score.bits_per_byte(10) == math.inf
    assert fit(count_ngrams(vocab.encode_lines(train), vocab, 2), "kneser_ney").score_sentences(
        vocab.encode_lines(["a c"])).n_zero_prob == 0
    # p(b | a) = 2/2, p(c | b) = 1/2 by hand.
    hist = np.array([[vocab.index["a"]], [vocab.index["b"]]])
    got = 10 ** model.log10_probs(hist, np.array([vocab.index["b"], vocab.index["c"]]))
    np.testing.assert_allclose(got, [1.0, 0.5])


def _kn_oracle(lines, order, discounts):
    """Interpolated (modified) Kneser-Ney written directly from Chen & Goodman with dicts."""
    counts = _brute_counts(lines, order)
    vocab = sorted({w for g in counts for w in g} - {"<s>"} | {"<unk>"})
    Vp = len(vocab)
    by_order = {k: {g: n for g, n in counts.items() if len(g) == k} for k in range(1, order + 1)}

    def adjusted(g):
        if len(g) == order or g[0] == "<s>":
            return counts.get(g, 0)
        return sum(1 for h in by_order[len(g) + 1] if h[1:] == g)

    def D(k, a):
        ds = discounts[k - 1]
        return min(ds[min(int(a), len(ds)) - 1], a) if a > 0 else 0.0

    def p(w, h):
        k = len(h) + 1
        if k == 1:
            a = {v: adjusted((v,)) for v in vocab}
            A = sum(a.values())
            gamma = sum(D(1, x) for x in a.values()) / A
            return (a[w] - D(1, a[w])) / A + gamma / Vp
        cont = {g[-1]: adjusted(g) for g in by_order[k] if g[:-1] == h}
        A = sum(cont.values())
        if A == 0:
            return p(w, h[1:])
        gamma = sum(D(k, x) for x in cont.values()) / A
        a = cont.get(w, 0)
        return (a - D(k, a)) / A + gamma * p(w, h[1:])

    return p


@pytest.mark.parametrize("modified", [False, True])
def test_kneser_ney_matches_independent_oracle(modified):
    rng = np.random.default_rng(3)
    lines = _random_corpus(rng, n_sent=40)
    vocab = Vocab.from_lines(lines, "word")
    model = fit(count_ngrams(vocab.encode_lines(lines), vocab, 3), "modified_kneser_ney" if modified else "kneser_ney")
    oracle = _kn_oracle(lines, 3, model.discounts)
    test = _random_corpus(np.random.default_rng(4), n_sent=15) + ["a zz b"]
    for line in test:
        words = split_units(line, "word") + ["</s>"]
        padded = ["<s>"] + words
        want = sum(math.log10(oracle(w if w in vocab.index else "<unk>",
                                     tuple(x if x in vocab.index else "<unk>" for x in padded[max(0, i - 2):i])))
                   for i, w in enumerate(padded) if i > 0)
        got = model.sentence_log10(vocab.encode_lines([line])[0])
        assert got == pytest.approx(want, abs=1e-9)


def test_kn_discount_formulas():
    # n1=10, n2=5, n3=3, n4=2 -> Y = 10/20 = 0.5; D1 = 1 - 2*0.5*5/10, D2 = 2 - 3*0.5*3/5, D3 = 3 - 4*0.5*2/3.
    a = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9], dtype=float)
    assert kn_discounts(a, modified=False) == pytest.approx([0.5])
    assert kn_discounts(a, modified=True) == pytest.approx([0.5, 2 - 0.9, 3 - 4 / 3])


def test_simple_good_turing_shape():
    # Zipf-like frequencies of frequencies: r* < r for rare counts and r*/r -> 1 for frequent ones.
    r = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 50])
    n_r = np.array([120, 40, 24, 13, 15, 5, 11, 2, 2, 1, 1, 1, 1, 1])
    rs = simple_good_turing(r, n_r)
    assert (rs > 0).all() and (rs[:5] < r[:5]).all()
    assert rs[0] == pytest.approx(2 * 40 / 120, rel=1e-9)  # Turing's estimate at r = 1
    assert abs(rs[-1] / r[-1] - 1) < 0.05


def test_unknown_words_and_special_symbols():
    train = ["the cat sat", "the dog sat", "<s> is text"]
    vocab = Vocab.from_lines(train, "word")
    assert "\\<s>" in vocab.index  # a literal "<s>" in the text is not the sentence start
    ids = vocab.encode_lines(["the zebra sat", "the cat"])
    assert ids[0][1] == UNK
    model = fit(count_ngrams(vocab.encode_lines(train), vocab, 3), "modified_kneser_ney")
    score = model.score_sentences(ids)
    assert score.n_oov == 1 and score.n_zero_prob == 0 and math.isfinite(score.perplexity)
    assert score.perplexity_known < score.perplexity  # <unk> is rare under KN
    char_vocab = Vocab.from_lines(["a b\tc"], "char")
    assert "<sp>" in char_vocab.index and "<tab>" in char_vocab.index
    assert char_vocab.decode(char_vocab.encode_lines(["a b\tc"])[0]) == "a b\tc"


def test_sampling_reproduces_a_deterministic_corpus():
    train = ["a b c d"] * 5
    vocab = Vocab.from_lines(train, "word")
    model = fit(count_ngrams(vocab.encode_lines(train), vocab, 3), "mle")
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert vocab.decode(model.sample(rng)) == "a b c d"
    kn = fit(count_ngrams(vocab.encode_lines(train), vocab, 3), "kneser_ney")
    s1 = kn.sample(np.random.default_rng(1), max_len=20)
    s2 = kn.sample(np.random.default_rng(1), max_len=20)
    assert s1 == s2 and all(3 <= i < vocab.size or i == UNK for i in s1)


@pytest.mark.parametrize("unit,order", [("char", 4), ("word", 3)])
@pytest.mark.parametrize("method", ["kneser_ney", "modified_kneser_ney", "katz"])
def test_arpa_export_matches_kenlm(tmp_path, shakespeare_lines, unit, order, method):
    kenlm = pytest.importorskip("kenlm")
    train, val = shakespeare_lines
    vocab = Vocab.from_lines(train, unit)
    model = fit(count_ngrams(vocab.encode_lines(train), vocab, order), method)
    path = tmp_path / "m.arpa"
    write_arpa(model, path)
    km = kenlm.Model(str(path))
    assert km.order == order
    val = [v for v in val if v.strip()][:200] + ["Zounds, qwertyuiop xyzzy!"]  # OOV words / chars
    ids = vocab.encode_lines(val)
    ours = np.array([model.sentence_log10(s) for s in ids])
    theirs = np.array([km.score(" ".join(split_units(v, unit)), bos=True, eos=True) for v in val])
    assert np.abs(ours - theirs).max() < 1e-4
    # Import gives the same model back.
    back = read_arpa(path, unit)
    back_scores = np.array([back.sentence_log10(s) for s in back.vocab.encode_lines(val)])
    assert np.abs(back_scores - ours).max() < 1e-5


def test_arpa_import_errors(tmp_path):
    lines = ["a b", "b a"]
    vocab = Vocab.from_lines(lines, "word")
    model = fit(count_ngrams(vocab.encode_lines(lines), vocab, 2), "kneser_ney")
    good = tmp_path / "m.arpa"
    write_arpa(model, good)
    text = good.read_text()
    (tmp_path / "cut.arpa").write_text(text.split("\\end\\")[0])
    with pytest.raises(ValueError, match="no \\\\end\\\\"):
        read_arpa(tmp_path / "cut.arpa")
    bad = text.replace("\t<s> a\n", "\t<s> zz\n")
    assert bad != text
    (tmp_path / "bad.arpa").write_text(bad)
    with pytest.raises(ValueError, match=r"bad.arpa:\d+: n-gram '<s> zz' uses a word missing"):
        read_arpa(tmp_path / "bad.arpa")
    write_arpa(fit(count_ngrams(vocab.encode_lines(lines), vocab, 3), "kneser_ney"), tmp_path / "m3.arpa")
    text3 = (tmp_path / "m3.arpa").read_text()
    assert "\t<s> a b\n" in text3
    (tmp_path / "hole.arpa").write_text(text3.replace("\t<s> a b\n", "\t<s> b b\n"))
    with pytest.raises(ValueError, match=r"hole.arpa:\d+: n-gram '<s> b b' has no lower-order entry 'b b'"):
        read_arpa(tmp_path / "hole.arpa")
    (tmp_path / "count.arpa").write_text(text.replace("ngram 2=", "ngram 2=9"))
    with pytest.raises(ValueError, match="declares"):
        read_arpa(tmp_path / "count.arpa")
    with pytest.raises(ValueError, match="only normalised backoff-form"):
        write_arpa(fit(count_ngrams(vocab.encode_lines(lines), vocab, 2), "stupid_backoff"), tmp_path / "x.arpa")


def _fake_run(tmp_path, n_chars=60_000):
    """A run directory with byte-level shards (token = byte, BOS = 256) of Shakespeare paragraphs."""
    from lmstack.data.shards import write_tokens

    text = SHAKESPEARE.read_text(encoding="utf-8")[:n_chars]
    docs = [d for d in text.split("\n\n") if d.strip()]
    cut = int(len(docs) * 0.9)
    shards = tmp_path / "run" / "shards"
    shards.mkdir(parents=True)
    meta = {"vocab_size": 257}
    for split, part in (("train", docs[:cut]), ("val", docs[cut:])):
        ids = np.concatenate([[256] + list(d.encode()) for d in part])
        write_tokens(shards / f"{split}.bin", ids)
        meta[split] = {"tokens": int(ids.size), "bytes": sum(len(d.encode()) for d in part), "docs": len(part)}
    (shards / "meta.json").write_text(json.dumps(meta))
    return tmp_path / "run"


def test_ngram_stage_end_to_end(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    from lmstack.ngram.stage import Config, run
    from lmstack.pipeline import StageContext
    from lmstack.runs import RunDir

    run_dir = RunDir(_fake_run(tmp_path))
    ctx = StageContext(run=run_dir, seed=0, device="cpu", recipe={}, stage="ngram")
    cfg = Config(orders=[2, 3], num_samples=1, sample_max_tokens=20)
    result = run(ctx, cfg)
    res = json.loads((run_dir.path / "ngram" / "results.json").read_text())
    assert len(res["rows"]) == 2 * len(METHODS)
    assert result.metrics["best_model"].split("/")[0] in NORMALISED
    assert 1.0 < result.metrics["val_bpb_best"] < 8.0
    assert result.metrics["mle3_zero_prob_events"] > 0
    assert "| 3 | " in result.report and "zero-probability" in result.report
    assert (run_dir.path / "plots" / "ngram_bpb.png").stat().st_size > 0
    km = kenlm.Model(str(run_dir.path / "ngram" / "model.arpa"))
    assert km.order in (2, 3)
    # The exported token-level model scores a validation document as KenLM does.
    from lmstack.data.shards import read_tokens
    val = np.asarray(read_tokens(run_dir.path / "shards" / "val.bin"))
    doc = val[1:np.flatnonzero(val == 256)[1]]
    back = read_arpa(run_dir.path / "ngram" / "model.arpa", "token")
    ours = back.sentence_log10(back.vocab.encode_units([str(t) for t in doc]))
    assert ours == pytest.approx(km.score(" ".join(map(str, doc)), bos=True, eos=True), abs=1e-4)


def test_stage_config_errors():
    from lmstack.config import ConfigError, config_from_dict
    from lmstack.ngram.stage import Config

    with pytest.raises(ConfigError, match="unknown method 'kn'"):
        config_from_dict(Config, {"methods": ["kn"]}, "ngram")
    with pytest.raises(ConfigError, match="orders"):
        config_from_dict(Config, {"orders": [0]}, "ngram")


def test_single_event_query_matches_batch_and_fast_encoding(shakespeare_lines):
    train, val = shakespeare_lines
    for unit in ("char", "word"):
        vocab = Vocab.from_lines(train, unit)
        padded = vocab.encode_padded(val)
        assert np.array_equal(padded, pad_sentences(vocab.encode_lines(val)))
        model = fit(count_padded(vocab.encode_padded(train), vocab, 4), "modified_kneser_ney")
        hist, words = model.events(padded[:3000])
        batch = model.log10_probs(hist, words)
        single = [model.log10_prob(w, h[h >= 0]) for h, w in zip(hist, words)]
        np.testing.assert_allclose(single, batch, atol=1e-12)
    special = Vocab.from_lines(["a <s> b"], "word")
    assert np.array_equal(special.encode_padded(["a <s> b"]), pad_sentences(special.encode_lines(["a <s> b"])))


def test_add_k_and_good_turing_by_hand():
    train = ["a b", "a b", "a c"]
    vocab = Vocab.from_lines(train, "word")  # <unk> <s> </s> a b c: 5 predictable symbols
    counts = count_ngrams(vocab.encode_lines(train), vocab, 2)
    a, b, c = (vocab.index[w] for w in "abc")
    add = fit(counts, "add_k", k=0.5)
    # p(b | a) = (2 + 0.5) / (3 + 0.5 * 5); p(a | a) = 0.5 / 5.5; p(a | <s>) = (3 + 0.5) / (3 + 2.5)
    np.testing.assert_allclose(10 ** add.log10_probs(np.array([[a], [a]]), np.array([b, a])), [2.5 / 5.5, 0.5 / 5.5])
    assert 10 ** add.log10_prob(a, [BOS]) == pytest.approx((3 + 0.5) / (3 + 2.5))
    gt = fit(counts, "good_turing")
    # Bigrams: counts {<s> a: 3, a b: 2, a c: 1, b </s>: 2, c </s>: 1} -> N1 = 2, N0 = 5^2 - 5 = 20, r0* = 0.1.
    r0 = 2 / 20
    rstar = dict(zip([1, 2, 3], simple_good_turing(np.array([1, 2, 3]), np.array([2, 2, 1]))))
    Z = rstar[2] + rstar[1] + 3 * r0  # context "a": seen b (2), c (1), three unseen words
    np.testing.assert_allclose(10 ** gt.log10_probs(np.array([[a], [a]]), np.array([b, a])), [rstar[2] / Z, r0 / Z])
