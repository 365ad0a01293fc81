"""The tiny run the alignment tests start from: a small world in data/world, a tokenizer trained on its
text, and a random tiny model in checkpoints/pretrain (what the sft/reward/dpo/ppo stages read)."""

from __future__ import annotations

import torch

from lmstack.config import config_from_dict
from lmstack.pipeline import StageContext
from lmstack.runs import RunDir


def build_tiny_run(root, *, n_sft_train=60, n_prefs_train=40, n_prefs_eval=16, max_seq_len=160, extra_texts=()):
    from lmstack.data.world import WorldConfig, build_world
    from lmstack.model import ModelConfig, Transformer, save_pretrained
    from lmstack.tokenizer import train_tokenizer

    world = build_world(WorldConfig(n_people=6, n_sft_only_people=2, n_cities=3, n_countries=4, bios_per_person=2,
                                    n_stories=4, n_geo_docs=4, n_quiz_docs=4, n_arith_docs=4, n_arith_drill_docs=0,
                                    n_copy_docs=0, n_parallel_docs=4, n_sft_train=n_sft_train, n_sft_eval=24,
                                    n_prefs_train=n_prefs_train, n_prefs_eval=n_prefs_eval,
                                    n_unknown_people=4, n_unknown_cities=2), seed=0)
    world.write(root / "data" / "world")
    texts = [d["text"] for d in world.pretrain_docs()]
    texts += [m["content"] for ex in world.sft_train for m in ex["messages"]] + list(extra_texts)
    tok = train_tokenizer(texts, 320, progress=False)
    tok.save(root / "tokenizer" / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=max_seq_len)
    save_pretrained(Transformer(cfg), root / "checkpoints" / "pretrain")
    return root


def ctx_for(root, stage):
    return StageContext(run=RunDir(root), seed=0, device="cpu", recipe={}, stage=stage)


def small(cls, **kw):
    return config_from_dict(cls, kw, cls.__module__)
