"""Dedup: MinHash against exact Jaccard and datasketch, LSH finding the known duplicates in poetry.jsonl,
union-find clusters, span (line) dedup and decontamination."""

import json
import random

import numpy as np
import pytest

from lmstack import DATA_DIR
from lmstack.data.dedup import (DecontamConfig, Decontaminator, ExactDeduplicator, MinHashConfig,
                                MinHashDeduplicator, MinHasher, MinHashLSH, SpanDedupConfig, SpanDeduplicator,
                                UnionFind, jaccard, shingle_hashes, shingle_strings, text_hash)

POETRY = DATA_DIR / "zh" / "poetry.jsonl"


@pytest.fixture(scope="module")
def poems():
    with open(POETRY, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_shingles_match_string_shingles():
    text = "床前明月光，疑是地上霜。The quick brown fox jumps over the lazy dog, the quick brown fox!"
    assert len(shingle_hashes(text, 5)) == len(shingle_strings(text, 5))
    assert shingle_strings("床前明月光，疑是", 5) == ["前 明 月 光 疑", "床 前 明 月 光", "明 月 光 疑 是"]
    assert len(shingle_hashes("two words", 5)) == 1  # shorter than n: one shingle
    assert len(shingle_hashes("", 5)) == 0
    # punctuation and case do not change shingles
    assert np.array_equal(shingle_hashes("Hello, World! again and again", 3), shingle_hashes("hello world again and again", 3))


def test_batched_signatures_equal_per_document():
    texts = ["a b c d e f g", "短诗", "", "one", "x y z " * 50, "床前明月光疑是地上霜"]
    mh = MinHasher(64, 5, seed=3, chunk_shingles=10)
    batched = mh.signatures(texts)
    single = np.stack([mh.signature_from_shingles(shingle_hashes(t, 5)) for t in texts])
    assert np.array_equal(batched, single)
    assert (batched[2] == MinHasher.EMPTY).all()


def _mutate(text: str, rng: random.Random, k: int) -> str:
    chars = list(text)
    for _ in range(k):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice("山水花月风云天地春秋")
    return "".join(chars)


def test_jaccard_estimates_match_exact_and_datasketch(poems):
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(0)
    base = [p for p in poems[:3000] if len(p) > 60][:120]
    mh = MinHasher(112, 5, seed=7)
    errs_ours, errs_ds, diffs = [], [], []
    for i, p in enumerate(base):
        q = _mutate(p, rng, k=1 + i % 12)
        exact = len(set(shingle_strings(p)) & set(shingle_strings(q))) / len(set(shingle_strings(p)) | set(shingle_strings(q)))
        ours = float(np.mean(mh.signatures([p])[0] == mh.signatures([q])[0]))
        m1, m2 = datasketch.MinHash(num_perm=112), datasketch.MinHash(num_perm=112)
        m1.update_batch([s.encode() for s in shingle_strings(p)])
        m2.update_batch([s.encode() for s in shingle_strings(q)])
        theirs = m1.jaccard(m2)
        errs_ours.append(abs(ours - exact))
        errs_ds.append(abs(theirs - exact))
        diffs.append(ours - theirs)
    # Both estimators are unbiased with std sqrt(J(1-J)/112) <= 0.047: same accuracy, no systematic gap.
    assert np.mean(errs_ours) < 0.05
    assert abs(np.mean(errs_ours) - np.mean(errs_ds)) < 0.015
    assert abs(np.mean(diffs)) < 0.015
    assert np.corrcoef(errs_ours, errs_ds)[0, 1] > -0.5  # sanity: no pathological anti-correlation


def test_minhash_finds_known_duplicates_in_poetry(poems):
    # Ground truth for exact duplicates: identical normalised text.
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(poems):
        groups.setdefault(text_hash(p), []).append(i)
    dup_groups = [g for g in groups.values() if len(g) > 1]
    assert len(dup_groups) > 100, "poetry.jsonl is known to contain exact duplicates"
    rng = random.Random(1)
    chosen_groups = dup_groups[:150]
    dup_members = sorted({i for g in chosen_groups for i in g})
    others = rng.sample([g[0] for g in groups.values() if len(g) == 1], 1500)
    idx = dup_members + others
    texts = [poems[i] for i in idx]
    position = {doc: k for k, doc in enumerate(idx)}

    dedup = MinHashDeduplicator(MinHashConfig())
    sigs = dedup.signatures(texts)
    keep, clusters = dedup.find_duplicates(sigs)
    # every exact-duplicate group lies inside one cluster, which keeps one document (the group's own
    # first member, or an earlier near-duplicate of it)
    cluster_of = {m: rep for rep, members in clusters.items() for m in members}
    for g in chosen_groups:
        reps = {cluster_of.get(position[doc]) for doc in g}
        assert len(reps) == 1 and None not in reps, g
        assert sum(keep[position[doc]] for doc in g) <= 1
    # clusters are real: exact Jaccard of each member with its representative is high on average
    sims = []
    for rep, members in clusters.items():
        a = shingle_hashes(texts[rep])
        sims += [jaccard(a, shingle_hashes(texts[m])) for m in members[1:]]
    assert np.mean(sims) > 0.9
    assert (~keep).sum() >= sum(len(g) - 1 for g in chosen_groups)


def test_lsh_recall_on_near_duplicates(poems):
    rng = random.Random(2)
    base = [p for p in poems[5000:9000] if len(p) >= 80][:300]
    near = [_mutate(p, rng, k=1) for p in base]  # one character changed: J ~ 0.85-0.95
    texts = base + near
    sigs = MinHasher(112, 5).signatures(texts)
    pairs = MinHashLSH(14, 8).candidate_pairs(sigs)
    truth = [(i, i + len(base)) for i in range(len(base))
             if jaccard(shingle_hashes(base[i]), shingle_hashes(near[i])) >= 0.8]
    found = sum(1 for p in truth if p in pairs)
    assert len(truth) > 200
    assert found / len(truth) >= 0.95


def test_union_find():
    uf = UnionFind(6)
    uf.union(0, 1)
    uf.union(2, 3)
    uf.union(1, 3)
    labels = uf.labels()
    assert labels[0] == labels[1] == labels[2] == labels[3]
    assert len({labels[0], labels[4], labels[5]}) == 3
    assert not uf.union(0, 2)


def test_config_validation():
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashConfig(num_perm=64, bands=14, rows=8)


def test_exact_dedup_normalises_whitespace():
    ex = ExactDeduplicator()
    assert ex.keep(text_hash("a  b\n c"))
    assert not ex.keep(text_hash(" a b c "))
    assert ex.removed == 1


def test_span_dedup_removes_repeated_lines_across_documents():
    banner = "Subscribe to our newsletter for weekly updates and offers"
    sd = SpanDeduplicator(SpanDedupConfig(unit="line", min_chars=20))
    first = sd.process(f"Intro line one.\n{banner}\nShort\nBody of the first article goes here and is unique.")
    second = sd.process(f"Another intro.\n{banner}\nShort\nBody of the second article, also unique text.")
    assert banner in first and banner not in second
    assert "Short" in second  # below min_chars: kept
    assert sd.removed_spans == 1

    sd = SpanDeduplicator(SpanDedupConfig(unit="sentence", min_chars=6))
    a = sd.process("今天天气很好，我们去公园。公园里有很多花。")
    b = sd.process("昨天下雨了。公园里有很多花。")
    assert b == "昨天下雨了。" and "公园里有很多花。" in a


def test_decontamination_containment():
    refs = ["Question: Where was Alice Moon born?\nAnswer: Paris",
            "Translate to Chinese: the cat sleeps on the warm mat"]
    dc = Decontaminator(refs, DecontamConfig(ngram=5, containment_threshold=0.8))
    leaked = ("Some unrelated intro text. question where was alice moon born answer paris. "
              "And then the document goes on about other things entirely.")
    assert dc.match(leaked)[0] == 0
    assert dc.match("Alice Moon likes tea. She was born in a small town near the sea.") is None
    assert dc.match("Translate to Chinese: the cat sleeps on the warm mat, please")[0] == 1
    assert Decontaminator([], DecontamConfig()).match("anything at all here") is None


def test_char_shingles():
    assert shingle_strings("Ab  cd", 3, unit="char") == [" cd", "ab ", "b c"]
    a, b = "the quick brown fox", "the quick brown fix"
    mh = MinHasher(128, 3, unit="char")
    sa, sb = shingle_hashes(a, 3, unit="char"), shingle_hashes(b, 3, unit="char")
    est = float(np.mean(mh.signatures([a])[0] == mh.signatures([b])[0]))
    assert abs(est - jaccard(sa, sb)) < 0.15
    with pytest.raises(ValueError, match="unit"):
        MinHashConfig(unit="byte")
