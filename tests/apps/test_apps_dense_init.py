"""Masked LM vs decoder as the dense retriever's initialisation (issue 20), at toy size."""

import math

import pytest
import torch

from lmstack.apps.dense import DenseConfig
from lmstack.apps.dense_init import (InitCompareConfig, compare_inits, model_configs, pretrain, token_stream,
                                     world_retrieval_task)
from lmstack.apps.kg import kg_from_world
from lmstack.data.world import WorldConfig, build_world
from lmstack.model import build_model
from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

TOY = InitCompareConfig(d_model=32, n_layers=1, n_heads=2, seq_len=32, pretrain_steps=30, pretrain_batch=8,
                        pretrain_lr=1e-2, dense=DenseConfig(steps=6, batch_size=8, max_len=32))


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
    for r in rows:
        for name in sets:
            assert 0.0 <= r[f"{name} recall@1"] <= r[f"{name} recall@5"] <= 1.0
        assert math.isfinite(r["dense_loss"])
