"""Masked LM vs decoder as the dense retriever's initialisation (issue 20), at toy size."""

import dataclasses
import math

import numpy as np

import pytest
import torch

from lmstack.apps.dense import DenseConfig
from lmstack.apps.dense_init import (InitCompareConfig, compare_inits, mean_pairwise_cosine, model_configs, pretrain,
                                     token_stream, world_retrieval_task)
from lmstack.apps.kg import kg_from_world
from lmstack.data.world import WorldConfig, build_world
from lmstack.model import build_model
from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

TOY = InitCompareConfig(d_model=32, n_layers=1, n_heads=2, seq_len=32, pretrain_steps=30, pretrain_batch=8,
                        pretrain_lr=1e-2, mlm_pretrain_lr=1e-2, dense=DenseConfig(steps=6, batch_size=8, max_len=32))


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(n_people=8, n_sft_only_people=2, n_cities=3, n_countries=3, n_sft_train=6,
                                   n_sft_eval=3, n_prefs_train=2, n_prefs_eval=2, n_stories=2, n_geo_docs=2,
                                   n_quiz_docs=2, n_arith_docs=1, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=1, bios_per_person=1), seed=3)


@pytest.fixture(scope="module")
def texts(world):
    return [d["text"] for d in world.pretrain_docs()]


@pytest.fixture(scope="module")
def tok(texts):
    return train_tokenizer(texts, 320, special_tokens=list(SPECIAL_TOKENS), progress=False)


def test_retrieval_task_keeps_held_out_people_out_of_training(world):
    kg = kg_from_world(world)
    pairs, passages, sets = world_retrieval_task(kg, world.facts_eval)
    held = [p for p in kg.entities_of_type("person") if kg.meta[p]["group"] == "sft_only"]
    held_names = {kg.name(p, lang) for p in held for lang in ("en", "zh")}
    assert held and sets["heldout_people"] and sets["world_paraphrases"]
    assert not any(name in q for q, _ in pairs for name in held_names)
    assert {q["entity"] for q in sets["heldout_people"]} == set(held)
    assert {p["id"] for p in passages} >= {f"{q['entity']}:{q['lang']}" for q in sets["heldout_people"]}


def test_both_objectives_pretrain_at_the_same_shape(tok, texts):
    cfgs = model_configs(tok.vocab_size, TOY)
    assert (cfgs["decoder"].family, cfgs["mlm"].family) == ("transformer", "mlm")
    assert cfgs["decoder"].d_model == cfgs["mlm"].d_model and cfgs["decoder"].n_layers == cfgs["mlm"].n_layers
    tokens = token_stream(texts, tok)
    for name in ("decoder", "mlm"):
        torch.manual_seed(0)
        hist = pretrain(build_model(cfgs[name]), tokens, TOY)
        assert hist[0] > math.log(tok.vocab_size) * 0.8  # starts near chance
        assert sum(hist[-5:]) / 5 < hist[0] - 0.5, name  # and learns (the MLM scores 15% of tokens: slower)


def test_compare_inits_rows(tok, texts, world):
    pairs, passages, sets = world_retrieval_task(kg_from_world(world), world.facts_eval)
    rows = compare_inits(texts, tok, pairs, passages, sets, TOY)
    assert [r["init"] for r in rows] == ["random decoder", "decoder", "mlm"]
    assert [r["family"] for r in rows] == ["transformer", "transformer", "mlm"]
    assert rows[0]["pretrain_loss"] is None and rows[1]["pretrain_loss"] and rows[2]["pretrain_loss"]
    assert all(-1.0 <= r["cosine_before"] <= 1.0 for r in rows)
    for r in rows:
        for name in sets:
            assert 0.0 <= r[f"{name} recall@1"] <= r[f"{name} recall@5"] <= 1.0
        assert math.isfinite(r["dense_loss"])


def test_the_masked_lm_pretrains_at_its_own_learning_rate(tok, texts):
    """Post-LN BERT collapsed at the decoder's LR (issue 20): the MLM has its own, and it is the one used."""
    cfg = InitCompareConfig(**{**TOY.__dict__, "mlm_pretrain_lr": 0.0})
    torch.manual_seed(0)
    mlm = build_model(model_configs(tok.vocab_size, cfg)["mlm"])
    before = {k: v.clone() for k, v in mlm.state_dict().items()}
    pretrain(mlm, token_stream(texts, tok), dataclasses.replace(cfg, pretrain_steps=3))
    assert all(torch.equal(before[k], v) for k, v in mlm.state_dict().items())  # LR 0: nothing moved
    decoder = build_model(model_configs(tok.vocab_size, cfg)["decoder"])
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    pretrain(decoder, token_stream(texts, tok), dataclasses.replace(cfg, pretrain_steps=3))
    assert not all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())


def test_mean_pairwise_cosine_flags_a_collapsed_encoder():
    one_direction = lambda texts: np.tile(np.array([[0.6, 0.8, 0.0]], np.float32), (len(texts), 1))
    assert mean_pairwise_cosine(one_direction, ["a", "b", "c"]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)

    def spread(texts):
        v = rng.standard_normal((len(texts), 64)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    assert abs(mean_pairwise_cosine(spread, [str(i) for i in range(20)])) < 0.1
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(one_direction, ["a"])
