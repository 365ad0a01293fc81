"""HF interop: lmstack logits == transformers logits (random weights) for both presets, and back."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.model import ModelConfig, Transformer
from lmstack.model.hf import HFExportError, export_hf, import_hf

transformers = pytest.importorskip("transformers")




def randomized(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms/biases away from 1/0 so every mapping matters
    return model


def small(preset: str, **overrides) -> ModelConfig:
    kw = dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
    if preset == "llama-style":
        kw["n_kv_heads"] = 2
    kw.update(overrides)
    return ModelConfig.preset(preset, **kw)


CASES = [
    ("llama-style", {}, "LlamaForCausalLM"),
    ("gpt2-style", {}, "GPT2LMHeadModel"),
    ("llama-style", dict(rope_scaling="yarn", rope_scaling_factor=4.0, max_seq_len=32), "LlamaForCausalLM"),
    ("llama-style", dict(rope_scaling="linear", rope_scaling_factor=2.0), "LlamaForCausalLM"),
    ("llama-style", dict(rope_scaling="ntk", rope_scaling_factor=4.0), "LlamaForCausalLM"),
    ("llama-style", dict(tie_embeddings=False, bias=True, n_kv_heads=1), "LlamaForCausalLM"),
    ("gpt2-style", dict(tie_embeddings=False, ffn_type="gelu", bias=False, norm_bias=False), "GPT2LMHeadModel"),
]


@pytest.mark.parametrize("preset,overrides,arch", CASES)
def test_logits_match_transformers_and_import_round_trips(tmp_path, preset, overrides, arch):
    model = randomized(small(preset, **overrides))
    export_hf(model, tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == arch
    x = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        back = import_hf(tmp_path).eval()
        torch.testing.assert_close(back(x).logits, ours, atol=1e-5, rtol=0)
    if overrides.get("rope_scaling") in ("linear", "yarn"):
        # the scaling really reached HF (a model without it gives different logits)
        plain = randomized(small(preset, **{**overrides, "rope_scaling": "none"}))
        assert (plain(x).logits - ours).abs().max() > 1e-3


def test_hf_model_saved_by_transformers_imports(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path).eval()
    x = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=0)
    gcfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    g = transformers.GPT2LMHeadModel(gcfg).eval()
    g.save_pretrained(tmp_path / "g")
    with torch.no_grad():
        torch.testing.assert_close(import_hf(tmp_path / "g").eval()(x).logits, g(x).logits, atol=1e-4, rtol=0)


def test_export_refuses_what_hf_cannot_represent(tmp_path):
    with pytest.raises(HFExportError, match="MoE"):
        export_hf(Transformer(ModelConfig.preset("moe", n_layers=1, vocab_size=64)), tmp_path)
    with pytest.raises(HFExportError, match="qk_norm"):
        export_hf(Transformer(small("llama-style", qk_norm=True)), tmp_path)
    with pytest.raises(HFExportError, match="no HF architecture"):
        export_hf(Transformer(small("llama-style", position_type="alibi")), tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_export_writes_tokenizer_and_special_ids(tmp_path):
    from lmstack.tokenizer import train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat; 猫坐在垫子上。"] * 20, 300, progress=False)
    export_hf(Transformer(small("llama-style", vocab_size=tok.vocab_size)), tmp_path, tokenizer=tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)
    hf_tok = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(hf_tok["model"]["vocab"]) + len(hf_tok["added_tokens"]) >= tok.vocab_size - len(tok.special_tokens)
    assert (tmp_path / "tokenizer_config.json").exists()


def test_import_rejects_pickles_and_unknown_types(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                       "num_hidden_layers": 1, "num_attention_heads": 2,
                                                       "intermediate_size": 16}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="never unpickles"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'"):
        import_hf(tmp_path)


def test_cli_export_then_import(tmp_path, capsys):
    from lmstack.model import load_pretrained, save_pretrained
    from lmstack.model.hf import main

    model = randomized(small("gpt2-style"))
    save_pretrained(model, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(tmp_path / "back").eval()(x).logits, model(x).logits,
                                   atol=1e-5, rtol=0)
    assert "wrote" in capsys.readouterr().out
