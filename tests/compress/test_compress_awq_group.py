"""AWQ with one scale per shared input (q/k/v, gate/up) folded into the norm, and AutoAWQ's "duo" scales."""

import pytest
import torch

from lmstack.compress import CompressConfig, QuantLinear, QuantSpec, compress_model, load_compressed, save_compressed
from lmstack.compress.api import awq_shared_input
from lmstack.compress.awq import (ModuleOutputLoss, awq_group_search, awq_quantize_scaled, awq_search,
                                  fold_scale_into_norm)
from lmstack.compress.calibrate import collect_inputs, record_module_calls
from lmstack.model import ModelConfig, Transformer


def _model(seed=0, outliers=True):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("llama-style", vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=32)
    model = Transformer(cfg).eval()
    if outliers:  # a few large norm channels, the activation outliers AWQ is built for
        with torch.no_grad():
            for block in model.layers:
                block.attn_norm.weight[:3] = 12.0
                block.ffn_norm.weight[5:7] = 9.0
    return model


def _calib(n=8):
    return torch.randint(0, 97, (n, 32), generator=torch.Generator().manual_seed(0))


def _group_setup(model, group_names, module_name):
    stats = collect_inputs(model, group_names, _calib(), keep_rows=256)
    modules = dict(model.named_modules())
    linears = [modules[n] for n in group_names]
    loss = ModuleOutputLoss(modules[module_name], linears, record_module_calls(model, module_name, _calib(), 8))
    return stats, linears, loss


@pytest.mark.parametrize("part", ["attn", "ffn"])
def test_group_search_never_worse_than_rtn_on_the_module_output(part):
    model = _model()
    names = ([f"layers.0.attn.{p}_proj" for p in "qkv"] if part == "attn"
             else ["layers.0.ffn.gate_proj", "layers.0.ffn.up_proj"])
    stats, linears, loss = _group_setup(model, names, f"layers.0.{part}")
    specs = [QuantSpec(3, 32)] * len(linears)
    acc = stats[names[0]][0]
    scale, alpha, err = awq_group_search([lin.weight for lin in linears], specs, acc.channel_abs_mean(), loss)
    rtn_scale = torch.ones_like(scale)
    rtn_err = loss([QuantLinear.from_linear(lin, spec).dense_weight() for lin, spec in zip(linears, specs)])
    assert err <= rtn_err + 1e-9
    assert alpha > 0 and err < 0.9 * rtn_err  # the outlier channels make scaling pay
    assert not torch.equal(scale, rtn_scale)
    # the loss is the module's: with the original weights it is exactly 0
    assert loss([lin.weight.detach().clone() for lin in linears]) == 0.0


def test_folding_into_the_norm_gives_the_logits_of_a_runtime_input_scale():
    names = [f"layers.0.attn.{p}_proj" for p in "qkv"]
    folded, runtime = _model(), _model()
    stats, linears, loss = _group_setup(folded, names, "layers.0.attn")
    acc, rows = stats[names[0]]
    specs = [QuantSpec(4, 32)] * 3
    scale, _, _ = awq_group_search([lin.weight for lin in linears], specs, acc.channel_abs_mean(), loss)
    fold_scale_into_norm(folded.layers[0].attn_norm, scale)
    for model, runtime_scale in ((folded, False), (runtime, True)):
        for name, spec in zip(names, specs):
            lin = dict(model.named_modules())[name]
            q, _ = awq_quantize_scaled(lin, scale, rows, spec, clip=True, runtime_scale=runtime_scale)
            assert (q.input_scale is not None) == runtime_scale
            setattr(model.layers[0].attn, name.rsplit(".", 1)[1], q)
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(folded(ids).logits, runtime(ids).logits, atol=1e-4)
        assert not torch.equal(folded.layers[0].attn_norm.weight, runtime.layers[0].attn_norm.weight)


def test_shared_input_groups_are_recognised_only_when_complete():
    model = _model()
    assert awq_shared_input(model, [f"layers.1.attn.{p}_proj" for p in "qkv"]) == ("layers.1.attn", "layers.1.attn_norm")
    assert awq_shared_input(model, ["layers.0.ffn.gate_proj", "layers.0.ffn.up_proj"]) == ("layers.0.ffn",
                                                                                         "layers.0.ffn_norm")
    assert awq_shared_input(model, ["layers.0.attn.q_proj", "layers.0.attn.k_proj"]) is None  # v would break
    assert awq_shared_input(model, ["layers.0.attn.o_proj"]) is None
    assert awq_shared_input(model, ["layers.0.ffn.down_proj"]) is None


def test_duo_candidates_never_worse_than_the_papers_grid():
    torch.manual_seed(4)
    x = torch.randn(256, 64) * torch.cat([torch.full((4,), 20.0), torch.ones(60)])
    w = torch.randn(32, 64) * torch.cat([torch.ones(60), torch.full((4,), 5.0)])  # weight outliers too
    spec = QuantSpec(3, 32)
    _, _, err_paper = awq_search(w, x, x.abs().mean(0), spec, duo=False)
    _, _, err_duo = awq_search(w, x, x.abs().mean(0), spec, duo=True)
    assert err_duo <= err_paper + 1e-12


def test_whole_model_shared_input_scope_folds_saves_and_decodes(tmp_path):
    from lmstack.generate.fast import fast_decoder

    model = _model()
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    norm_before = model.layers[0].attn_norm.weight.detach().clone()
    cfg = CompressConfig(quantize="awq", bits=4, group_size=32, awq_scope="group", calib_samples=8)
    details = compress_model(model, cfg, calib=_calib(), log=lambda s: None)
    assert details["layers.0.attn.q_proj"]["folded_into"] == "layers.0.attn_norm"
    assert details["layers.1.ffn.up_proj"]["folded_into"] == "layers.1.ffn_norm"
    for block in model.layers:
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.ffn.gate_proj, block.ffn.up_proj):
            assert lin.input_scale is None  # folded into the norm
        assert block.attn.o_proj.input_scale is not None and block.ffn.down_proj.input_scale is not None
    assert not torch.equal(model.layers[0].attn_norm.weight, norm_before)
    with torch.no_grad():
        after = model(ids).logits
    assert (after.log_softmax(-1) - before.log_softmax(-1)).abs().mean() < 0.2
    save_compressed(model, tmp_path / "q")
    loaded = load_compressed(tmp_path / "q")
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, after, atol=1e-5)
    dec = fast_decoder(model)
    cache_a, cache_b = model.new_kv_cache(1, 16), model.new_kv_cache(1, 16)
    with torch.no_grad():
        model(ids[:1, :6], kv_cache=cache_a)
        model(ids[:1, :6], kv_cache=cache_b)
        for t in range(6, 12):
            fast = dec.step(ids[:1, t:t + 1], cache_a)
            ref = model(ids[:1, t:t + 1], kv_cache=cache_b).logits[:, -1]
            assert (fast - ref).abs().max() < 1e-4


def test_bad_awq_scope_is_named():
    with pytest.raises(ValueError, match="awq_scope"):
        CompressConfig(quantize="awq", awq_scope="block")
