"""Dense bi-encoder: pooling is padding-invariant, DPR training lowers the loss and helps retrieval,
save/load round trip; and a real-model smoke run of the ReAct agent."""

import numpy as np
import pytest
import torch

from lmstack.apps.agent import ModelPolicy, ReActAgent
from lmstack.apps.dense import DenseConfig, DenseEncoder, info_nce, train_dense
from lmstack.apps.kg import kg_from_world
from lmstack.apps.tools import ToolBox, calculator_tool, date_tool
from lmstack.apps.worldqa import entity_passages, fact_questions
from lmstack.data.world import WorldConfig, build_world
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embeddings_do_not_depend_on_padding(tok, pooling):
    enc = DenseEncoder(tiny_model(tok.vocab_size), tok, DenseConfig(pooling=pooling))
    texts = ["short", "a much longer text that needs padding in a batch", "中文文本"]
    together = enc(texts)
    alone = np.concatenate([enc([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logits = q @ p.T / 0.5
    expect = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2
    assert float(info_nce(q, p, 0.5)) == pytest.approx(float(expect))


def test_dpr_training_improves_retrieval_and_roundtrips(tok, tmp_path):
    kg = kg_from_world(build_world(WorldConfig(n_people=8, n_sft_only_people=0, n_cities=4, n_countries=4,
                                               n_sft_train=0, n_sft_eval=0, n_prefs_train=0, n_prefs_eval=0,
                                               n_stories=1, n_geo_docs=1, n_quiz_docs=1, n_arith_docs=1, n_arith_drill_docs=0, n_copy_docs=0,
                                               n_parallel_docs=1, bios_per_person=1), seed=2))
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(kg, ["en"])
                if p["entity"].startswith("p")}
    qs = [q for q in fact_questions(kg, "train", ["en"]) if q["entity"].startswith("p")]
    pairs = [(q["question"], passages[(q["entity"], "en")]) for q in qs]
    keys = sorted(passages)
    enc = DenseEncoder(tiny_model(tok.vocab_size, max_seq_len=64), tok,
                       DenseConfig(steps=40, batch_size=8, lr=3e-3, max_len=48))

    def top1():
        pv = enc([passages[k] for k in keys])
        qv = enc([q["question"] for q in qs])
        best = (qv @ pv.T).argmax(1)
        return float(np.mean([keys[b][0] == q["entity"] for b, q in zip(best, qs)]))

    before = top1()
    history = train_dense(enc, pairs, progress=False)
    after = top1()
    assert np.mean(history[-5:]) < np.mean(history[:5])
    assert after > before and after >= 0.5, (before, after)
    enc.save(tmp_path / "dense")
    again = DenseEncoder.load(tmp_path / "dense", tok)
    np.testing.assert_allclose(again(["Where was X born?"]), enc(["Where was X born?"]), atol=1e-6)
    assert again.cfg.max_len == 48


def test_react_agent_smoke_with_a_real_model(tok):
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    agent = ReActAgent(ModelPolicy(model, tok, max_new_tokens=16), ToolBox([calculator_tool(), date_tool()]),
                       max_steps=3, prompt_style="names")
    result = agent.run("What is 12 * 13?")
    assert result.stop_reason in ("final_answer", "step_limit", "context_full")
    assert 1 <= len(result.steps) <= 3
    for step in result.steps[:-1]:
        assert step.observation  # a tool result or an error the model is told about
    assert "Question: What is 12 * 13?" in result.trace()


def test_cross_encoder_reranker_fits_its_training_lists_and_roundtrips(tok, tmp_path):
    # A random tiny decoder cannot learn to match names across a passage in a few steps; a pretrained one
    # starts far better. Here: the listwise loss and the head work (it fits three lists) and save/load.
    from lmstack.apps.rerank import CrossEncoder, RerankConfig, train_reranker

    kg = kg_from_world(build_world(WorldConfig(n_people=6, n_sft_only_people=0, n_cities=3, n_countries=3,
                                               n_sft_train=0, n_sft_eval=0, n_prefs_train=0, n_prefs_eval=0,
                                               n_stories=1, n_geo_docs=1, n_quiz_docs=1, n_arith_docs=1, n_arith_drill_docs=0, n_copy_docs=0,
                                               n_parallel_docs=1, bios_per_person=1), seed=4))
    passages = {p["entity"]: p["text"] for p in entity_passages(kg, ["en"]) if p["entity"].startswith("p")}
    qs = [q for q in fact_questions(kg, "train", ["en"]) if q["entity"] in passages][::8][:3]
    examples = [(q["question"], passages[q["entity"]], [t for e, t in passages.items() if e != q["entity"]][:2])
                for q in qs]
    enc = CrossEncoder(tiny_model(tok.vocab_size, max_seq_len=96, init_std=0.08), tok,
                       RerankConfig(steps=30, questions_per_batch=3, candidates=3, lr=1e-2))

    class Hit:
        def __init__(self, text):
            self.text = text

    def top1():
        return np.mean([enc.rerank(q, [Hit(p) for p in [gold] + neg])[0].text == gold for q, gold, neg in examples])

    before = top1()
    history = train_reranker(enc, examples, progress=False)
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])
    assert top1() == 1.0 and before < 1.0
    enc.save(tmp_path / "rr")
    again = CrossEncoder.load(tmp_path / "rr", tok)
    q, gold, neg = examples[0]
    torch.testing.assert_close(again.scores(q, [gold] + neg), enc.scores(q, [gold] + neg))
    with pytest.raises(ValueError, match="negative"):
        train_reranker(enc, [(q, gold, [])], progress=False)


def test_hard_negatives_join_the_batch_once_and_never_as_a_positive():
    from lmstack.apps.dense import _with_negatives

    batch = [("q1", "p1"), ("q2", "p2")]
    negatives = {"q1": ["n1", "p2", "n2"], "q2": ["n1", "n3"]}
    # p2 is q2's positive (a false negative for q1), n1 is shared: each passage appears once, positives first
    assert _with_negatives(batch, negatives, 1) == ["p1", "p2", "n1"]
    assert _with_negatives(batch, negatives, 2) == ["p1", "p2", "n1", "n3"]
    assert _with_negatives(batch, negatives, 0) == ["p1", "p2"]


def test_dense_training_scores_each_question_against_its_hard_negatives(tok):
    enc = DenseEncoder(tiny_model(tok.vocab_size), tok, DenseConfig(steps=2, batch_size=2, hard_negatives=1))
    seen = []
    embed = enc.embed
    enc.embed = lambda texts: seen.append(list(texts)) or embed(texts)
    pairs = [("Where was Ann born?", "Ann was born in Oslo."), ("Where was Bob born?", "Bob was born in Rome.")]
    train_dense(enc, pairs, negatives={"Where was Ann born?": ["Anna was born in Lima."]}, progress=False)
    passage_batches = [b for b in seen if b[0].endswith(".")]
    assert passage_batches and all("Anna was born in Lima." in b for b in passage_batches)
