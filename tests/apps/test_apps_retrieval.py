"""Retrieval: chunking, BM25 against peer libraries, exact vs faiss search, RRF, the document store."""

import hashlib
import json

import numpy as np
import pytest

from lmstack.apps.bm25 import BM25, search_tokens
from lmstack.apps.chunking import chunk_by_sentences, chunk_by_tokens
from lmstack.apps.store import DocumentStore, StoreConfig, read_documents
from lmstack.apps.vectors import ExactIndex, make_index, normalize_rows, reciprocal_rank_fusion
from lmstack.data.world import WorldConfig, build_world


@pytest.fixture(scope="module")
def world_corpus():
    w = build_world(WorldConfig(n_people=6, n_sft_only_people=2, n_cities=4, n_countries=4, bios_per_person=2,
                                n_stories=6, n_geo_docs=3, n_quiz_docs=3, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=3,
                                n_sft_train=10, n_sft_eval=5, n_prefs_train=4, n_prefs_eval=2), seed=3)
    docs = [d["text"] for d in w.pretrain_docs()]
    chunks = [c for d in docs for c in chunk_by_sentences(d, 200, 0)]
    assert any(search_tokens(c) and "\u4e00" <= search_tokens(c)[0][0] <= "\u9fff" for c in chunks)  # has Chinese
    return chunks


# ------------------------------------------------------------------ chunking

def test_chunk_by_tokens_windows_overlap_and_cover_the_text():
    text = "abcdefghijklmnopqrstuvwxyz"
    chunks = chunk_by_tokens(text, list, "".join, size=10, overlap=3)
    assert chunks == ["abcdefghij", "hijklmnopq", "opqrstuvwx", "vwxyz"]
    assert chunk_by_tokens("abc", list, "".join, size=10, overlap=3) == ["abc"]
    assert chunk_by_tokens("", list, "".join) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_by_tokens(text, list, "".join, size=4, overlap=4)


def test_chunk_by_sentences_is_chinese_aware_and_overlaps():
    text = "李伟出生于北京。他是木匠。他喜欢唱歌！Li Wei is a carpenter. He sings."
    chunks = chunk_by_sentences(text, max_chars=14, overlap_sentences=1)
    assert chunks[0] == "李伟出生于北京。他是木匠。"            # no space between Chinese sentences
    assert chunks[1].startswith("他是木匠。")                   # one sentence of overlap
    assert chunks[-1].endswith("He sings.")
    joined = "".join(chunks)
    for sentence in ("李伟出生于北京。", "他喜欢唱歌！", "Li Wei is a carpenter.", "He sings."):
        assert sentence in joined
    # without overlap the chunks partition the sentences
    assert chunk_by_sentences("A b. C d. E f.", max_chars=5, overlap_sentences=0) == ["A b.", "C d.", "E f."]


def test_search_tokens_cjk_characters_and_bigrams():
    assert search_tokens("木匠, Valmora 1987!") == ["木", "匠", "木匠", "valmora", "1987"]
    # no bigram across punctuation
    assert "匠他" not in search_tokens("木匠。他")
    assert search_tokens("ＡＢＣ") == ["abc"]  # NFKC full-width


# ------------------------------------------------------------------ BM25 vs peers

def test_bm25_okapi_equals_rank_bm25(world_corpus):
    rank_bm25 = pytest.importorskip("rank_bm25")
    tokens = [search_tokens(c) for c in world_corpus]
    ours = BM25(k1=1.5, b=0.75, variant="okapi", epsilon=0.25)
    ours.add(tokens)
    peer = rank_bm25.BM25Okapi(tokens, k1=1.5, b=0.75, epsilon=0.25)
    queries = ["Where was she born?", "木匠喜欢唱歌", "capital of France", "1987 出生", tokens[5][:6] + tokens[5][:2]]
    for q in queries:
        qt = q if isinstance(q, list) else search_tokens(q)
        np.testing.assert_allclose(ours.scores(qt), peer.get_scores(qt), rtol=0, atol=1e-6)


def test_bm25_lucene_equals_bm25s(world_corpus):
    bm25s = pytest.importorskip("bm25s")
    tokens = [search_tokens(c) for c in world_corpus]
    ours = BM25(k1=1.2, b=0.75, variant="lucene")
    ours.add(tokens)
    peer = bm25s.BM25(k1=1.2, b=0.75, method="lucene", dtype="float64")
    peer.index(tokens, show_progress=False)
    for q in ["Where was she born?", "木匠喜欢唱歌", "capital city country", "出生 1987"]:
        qt = list(dict.fromkeys(t for t in search_tokens(q) if any(t in d for d in tokens)))  # unique, in vocab
        np.testing.assert_allclose(ours.scores(qt), peer.get_scores(qt), rtol=0, atol=1e-6)


def test_bm25_add_and_remove_equal_a_fresh_build(world_corpus):
    tokens = [search_tokens(c) for c in world_corpus]
    inc = BM25()
    inc.add(tokens[:10])
    inc.add(tokens[10:] + [["junk", "words"]])
    inc.remove([len(tokens)])
    fresh = BM25()
    fresh.add(tokens)
    q = search_tokens("born in the city")
    np.testing.assert_array_equal(inc.scores(q), fresh.scores(q))
    best = inc.top_k(q, 3)
    assert len(best) == 3 and best[0][1] >= best[1][1] >= best[2][1] > 0
    with pytest.raises(IndexError):
        inc.remove([10_000])


# ------------------------------------------------------------------ vector index and fusion

def test_exact_and_faiss_return_the_same_neighbours():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    vectors = normalize_rows(rng.normal(size=(300, 24)))
    queries = normalize_rows(rng.normal(size=(20, 24)))
    ids = np.arange(1000, 1300)
    exact, flat = make_index(24, "exact"), make_index(24, "faiss")
    for idx in (exact, flat):
        idx.add(vectors, ids)
        assert idx.remove(ids[::7]) == len(ids[::7])
    s1, i1 = exact.search(queries, 10)
    s2, i2 = flat.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert not np.isin(ids[::7], i1).any()


def test_exact_index_pads_and_rejects_duplicate_ids():
    idx = ExactIndex(2)
    idx.add(np.eye(2), [5, 6])
    scores, ids = idx.search(np.array([[1.0, 0.0]]), 4)
    assert ids.tolist() == [[5, 6, -1, -1]] and scores[0, 0] == 1.0
    with pytest.raises(ValueError, match="already"):
        idx.add(np.eye(2), [6, 7])


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    expect = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61}
    assert [d for d, _ in fused] == [1, 3, 2]
    for d, s in fused:
        assert s == pytest.approx(expect[d])


# ------------------------------------------------------------------ document store

class HashEncoder:
    """A deterministic stand-in for a dense encoder: bag of hashed search tokens, normalized."""

    def __call__(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for r, t in enumerate(texts):
            for tok in search_tokens(t):
                out[r, int(hashlib.md5(tok.encode()).hexdigest(), 16) % 64] += 1
        return normalize_rows(out)

    def describe(self):
        return {"kind": "hash-test"}


def _write_corpus(root):
    (root / "a.txt").write_text("Valmora is a city in France. It is old.", encoding="utf-8")
    (root / "notes.md").write_text("# Notes\n\n李伟是一名木匠。他喜欢唱歌。", encoding="utf-8")
    rows = [{"id": "q1", "text": "Paris is the capital of France.", "title": "geo"},
            {"text": "Tokyo is the capital of Japan."}]
    (root / "more.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_document_store_build_search_incremental_and_roundtrip(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    _write_corpus(src)
    store = DocumentStore(StoreConfig(max_chars=200), encoder=HashEncoder())
    stats = store.add_path(src)
    assert stats["added"] == 4 and stats["chunks"] >= 4
    assert store.search("capital of Japan", 1)[0].text == "Tokyo is the capital of Japan."
    assert store.search("谁是木匠", 1)[0].doc_id.endswith("notes.md")
    assert store.search("capital of France", 1, mode="dense")[0].doc_id == "q1"
    assert store.search("capital of France", 2, mode="hybrid")[0].doc_id == "q1"
    assert store.add_path(src)["unchanged"] == 4                              # nothing re-indexed
    (src / "a.txt").write_text("Valmora is a city in Peru.", encoding="utf-8")
    assert store.add_path(src)["updated"] == 1
    assert "Peru" in store.search("Valmora city", 1)[0].text
    store.delete(["q1"])
    assert all(h.doc_id != "q1" for h in store.search("capital of France", 5, mode="hybrid"))
    store.save(tmp_path / "idx")
    again = DocumentStore.load(tmp_path / "idx", encoder=HashEncoder())
    for mode in ("bm25", "dense", "hybrid"):
        a, b = store.search("capital city", 3, mode=mode), again.search("capital city", 3, mode=mode)
        assert [(h.chunk_id, round(h.score, 6)) for h in a] == [(h.chunk_id, round(h.score, 6)) for h in b]
    with pytest.raises(KeyError, match="no document"):
        again.delete(["nope"])


def test_read_documents_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: field 'text'"):
        read_documents(bad)
    with pytest.raises(FileNotFoundError):
        read_documents(tmp_path / "missing")
    with pytest.raises(ValueError, match="dense search needs an encoder"):
        DocumentStore().search("x", mode="dense")


def test_store_loaded_without_its_encoder_refuses_to_drop_vectors(tmp_path):
    store = DocumentStore(encoder=HashEncoder())
    store.add_documents([{"id": "a", "text": "Lima is in Peru."}])
    store.save(tmp_path / "idx")
    plain = DocumentStore.load(tmp_path / "idx")
    assert plain.search("Peru", 1)[0].doc_id == "a"                      # BM25 still works
    with pytest.raises(ValueError, match="needs its encoder"):
        plain.add_documents([{"id": "b", "text": "Oslo is in Norway."}])
    with pytest.raises(ValueError, match="drop its vectors"):
        plain.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "vectors.safetensors").exists()
    assert json.loads((tmp_path / "idx" / "store.json").read_text())["encoder"] == {"kind": "hash-test"}
