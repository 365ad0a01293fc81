"""Planted outlier channels: the model computes the same function, and Wanda's pruning is blind to the
rescaling while magnitude pruning is not (the property that makes Wanda work on LLMs with outliers)."""

import copy

import pytest
import torch

from lmstack.compress import CompressConfig, compress_model
from lmstack.compress.outliers import plant_outlier_channels
from lmstack.model import ModelConfig, Transformer


def _model(ffn_type="swiglu"):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=32, ffn_type=ffn_type)
    return Transformer(cfg).eval()


def _tokens(seed):
    return torch.randint(0, 97, (8, 32), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("ffn_type", ["swiglu", "gelu"])
def test_planting_keeps_the_function_and_makes_outliers(ffn_type):
    model = _model(ffn_type)
    planted = copy.deepcopy(model)
    info = plant_outlier_channels(planted, n_channels=3, factor=25.0, seed=1)
    assert info["ffn_hidden_sites"] == (2 if ffn_type == "swiglu" else 0)
    x = _tokens(0)
    assert torch.allclose(planted(x).logits, model(x).logits, atol=1e-4)
    gain = planted.layers[0].attn_norm.weight / model.layers[0].attn_norm.weight
    assert sorted(gain.tolist()).count(pytest.approx(25.0)) == 3 and (gain == 1).sum() == 64 - 3
    ratio = planted.layers[0].attn.q_proj.weight / model.layers[0].attn.q_proj.weight
    assert torch.allclose(ratio, (1 / gain).expand_as(ratio))


@torch.no_grad()
def test_wanda_is_blind_to_the_rescaling_and_magnitude_is_not():
    model = _model()
    planted = copy.deepcopy(model)
    plant_outlier_channels(planted, n_channels=4, factor=30.0)
    x = _tokens(1)
    logits = {}
    for method in ("wanda", "magnitude"):
        for name, m in (("natural", model), ("planted", planted)):
            pruned = copy.deepcopy(m)
            compress_model(pruned, CompressConfig(quantize="", prune=method, sparsity=0.5), calib=_tokens(0), log=lambda s: None)
            logits[method, name] = pruned(x).logits
    assert torch.allclose(logits["wanda", "natural"], logits["wanda", "planted"], atol=1e-4)
    assert (logits["magnitude", "natural"] - logits["magnitude", "planted"]).abs().max() > 1e-2


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_channels"):
        plant_outlier_channels(_model(), n_channels=0)
    with pytest.raises(ValueError, match="dense llama-style"):
        plant_outlier_channels(torch.nn.Linear(4, 4))
