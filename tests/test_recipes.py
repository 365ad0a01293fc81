"""Every shipped recipe loads, and a typo anywhere in a recipe fails at load with the key named."""

from pathlib import Path

import pytest

from lmstack import pipeline
from lmstack.config import ConfigError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_load(recipe):
    r = pipeline.Recipe.load(recipe)
    assert set(r.run.stages) <= set(r.configs)


@pytest.mark.parametrize("override, message", [
    ("pretrain.model.n_layer=2", r"\[pretrain.model\]: unknown key 'n_layer'; valid keys are: .*n_layers"),
    ("pretrain.model.preset=llama", r"\[pretrain.model\] preset: 'llama' is not one of .*'llama-style'"),
    ("pretrain.model.ffn_type=swish", r"\[pretrain.model\] ffn_type: 'swish' is not one of"),
    ("pretrain.model.d_model=wide", r"\[pretrain.model\] d_model: expected an integer"),
    ("data.world.n_peopel=3", r"\[data.world\]: unknown key 'n_peopel'"),
    ("pretrain.schedule.kind=cosin", r"\[pretrain.schedule\] kind: 'cosin' is not one of"),
    ("pretrain.optim.name=adam", r"\[pretrain.optim\] name: 'adam' is not one of 'adamw', 'muon'"),
    ("sft.schedule.kind=linearr", r"\[sft.schedule\] kind: 'linearr' is not one of"),
    ("sft.optim.schedule=cosine", r"\[sft.optim\]: unknown key 'schedule'"),  # the old flat spelling
    ("lora.lora.rr=4", r"\[lora.lora\]: unknown key 'rr'"),
    ("dpo.loss_type=kto", r"\[dpo\] loss_type: 'kto' is not one of"),
    ("ppo.algo=reinforce", r"\[ppo\] algo: 'reinforce' is not one of 'ppo', 'grpo'"),
    ("data.mix.order=random", r"\[data.mix\] order: 'random' is not one of"),
])
def test_recipe_typos_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.Recipe.load(RECIPES[0], [override])


def test_model_overrides_change_the_default_table_key_by_key():
    r = pipeline.Recipe.load(RECIPES[0], ["pretrain.model.n_layers=3"])
    model = r.configs["pretrain"].model
    assert model["n_layers"] == 3 and model["d_model"] == 128 and model["n_kv_heads"] == 2  # the rest kept
    assert "vocab_size" not in model  # the stage takes it from the tokenizer
    other = pipeline.Recipe.load(RECIPES[0], ["pretrain.model.preset=gpt2-style", "pretrain.model.n_layers=3"])
    assert other.configs["pretrain"].model == {"preset": "gpt2-style", "n_layers": 3}  # another preset: afresh
