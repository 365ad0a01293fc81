"""Structured pruning: units with zero measured importance are the ones removed, and removing them
leaves the model's function unchanged; the result is a smaller ordinary model."""

import pytest
import torch

from lmstack.compress.structured import structured_prune
from lmstack.model import ModelConfig, Transformer


def _model(gpt2=False):
    torch.manual_seed(0)
    preset = "gpt2-style" if gpt2 else "llama-style"
    extra = {} if gpt2 else {"n_kv_heads": 2}
    cfg = ModelConfig.preset(preset, vocab_size=97, d_model=64, n_layers=4, n_heads=4, max_seq_len=32, **extra)
    return Transformer(cfg).eval()


def _calib():
    return torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
@pytest.mark.parametrize("gpt2", [False, True])
def test_dead_ffn_neurons_go_first_and_nothing_changes(gpt2):
    model = _model(gpt2)
    hidden = model.config.ffn_hidden
    dead = torch.arange(0, hidden, 2)  # half the neurons write nothing
    for blk in model.layers:
        blk.ffn.down_proj.weight[:, dead] = 0
    ids = _calib()
    small, info = structured_prune(model, ids, "ffn", 0.5)
    assert small.config.ffn_hidden == hidden // 2
    for keep in info["kept"]:
        assert torch.equal(keep, torch.arange(1, hidden, 2))
    assert torch.allclose(small(ids).logits, model(ids).logits, atol=1e-5)
    assert small.num_params() < model.num_params()


@torch.no_grad()
@pytest.mark.parametrize("gpt2", [False, True])
def test_dead_head_group_is_removed_exactly(gpt2):
    model = _model(gpt2)
    cfg = model.config
    group = (cfg.n_heads // cfg.n_kv_heads) * cfg.head_dim
    for blk in model.layers:
        for g in range(1, cfg.n_kv_heads, 2):  # every odd kv group contributes nothing
            blk.attn.o_proj.weight[:, g * group:(g + 1) * group] = 0
    ids = _calib()
    small, info = structured_prune(model, ids, "heads", 0.5)
    rep = cfg.n_heads // cfg.n_kv_heads
    keep = cfg.n_kv_heads // 2
    assert (small.config.n_heads, small.config.n_kv_heads, small.config.head_dim) == (keep * rep, keep, cfg.head_dim)
    assert all(k.tolist() == list(range(0, cfg.n_kv_heads, 2)) for k in info["kept"])
    assert torch.allclose(small(ids).logits, model(ids).logits, atol=1e-5)


@torch.no_grad()
def test_identity_block_is_dropped_exactly():
    model = _model()
    for i in (1, 2):  # two blocks that add nothing to the residual stream
        model.layers[i].attn.o_proj.weight.zero_()
        model.layers[i].ffn.down_proj.weight.zero_()
    ids = _calib()
    small, info = structured_prune(model, ids, "layers", 0.5)
    assert info["kept"] == [0, 3] and small.config.n_layers == 2
    assert info["importance"][1] < 1e-6 and info["importance"][0] > 1e-3
    assert torch.allclose(small(ids).logits, model(ids).logits, atol=1e-5)
    # the smaller model still decodes with its own KV cache
    cache = small.new_kv_cache(1, 40)
    small(ids[:1, :8], kv_cache=cache)
    assert small(ids[:1, 8:9], kv_cache=cache).logits.shape == (1, 1, 97)


def test_structured_rejects_bad_inputs():
    with pytest.raises(ValueError, match="structure"):
        structured_prune(_model(), _calib(), "rows", 0.5)
    with pytest.raises(ValueError, match="ratio"):
        structured_prune(_model(), _calib(), "ffn", 1.0)


def test_structured_then_quantize_saves_and_loads(tmp_path):
    from lmstack.compress import CompressConfig, compress, load_compressed, save_compressed
    from lmstack.compress.compare import parse_variant

    cfg = parse_variant("structured=ffn,structured_ratio=0.5,quantize=rtn,bits=8,group_size=32", CompressConfig())
    assert cfg.structured == "ffn" and cfg.quantize == "rtn"
    assert parse_variant("structured=layers", CompressConfig()).quantize == ""
    model, details = compress(_model(), cfg, calib=_calib(), log=lambda s: None)
    assert model.config.ffn_hidden == _model().config.ffn_hidden // 2
    save_compressed(model, tmp_path / "s")
    loaded = load_compressed(tmp_path / "s")
    ids = _calib()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
