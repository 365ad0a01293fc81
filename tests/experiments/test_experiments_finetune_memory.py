"""The finetune-memory experiment: byte counts on the meta device, checked against arithmetic and real tensors."""

import json

import pytest
import torch

from lmstack.experiments.cli import main
from lmstack.experiments.finetune_memory import (FinetuneMemoryConfig, build_setup, llama_config,
                                                 saved_activation_bytes, static_bytes)
from lmstack.experiments.finetune_memory import measure_saved_bytes

TOY = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, ffn_hidden=128, seq_len=32, batch_size=2,
           small_vocab_size=128, small_d_model=32, small_n_layers=1, small_n_heads=4, small_n_kv_heads=2,
           check_hf=False)


def test_llama_7b_shape_has_the_papers_parameter_count_on_meta():
    model = build_setup(llama_config(FinetuneMemoryConfig()), "full")
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig())
    assert sum(p.numel() for p in hf.parameters()) == 6_738_415_616


def test_full_is_16_bytes_per_param_and_lora_keeps_2_for_the_frozen_base():
    cfg = llama_config(FinetuneMemoryConfig(**TOY))
    n = cfg.num_params()
    assert static_bytes(build_setup(cfg, "full"))["static_bytes"] == 16 * n
    lora = static_bytes(build_setup(cfg, "lora-ffn"))
    adapters = cfg.n_layers * 8 * ((64 + 128) * 3)  # gate, up, down: r * (in + out) each
    assert lora["trainable_params"] == adapters
    assert lora["static_bytes"] == 2 * n + 16 * adapters
    qlora = static_bytes(build_setup(cfg, "qlora-ffn"))
    block_linears = cfg.n_layers * (4 * 64 * 64 + 3 * 64 * 128)
    assert qlora["quantized_params"] == block_linears  # attention quantized too, though not adapted
    assert 4.0 < 8 * qlora["quantized_bytes"] / block_linears < 4.5  # NF4 + scales (padded at toy size)


def test_meta_nf4_bytes_equal_a_real_quantization():
    from lmstack.align.nf4 import quantize_nf4

    real = quantize_nf4(torch.randn(96, 64))
    meta = quantize_nf4(torch.empty(96, 64, device="meta"))
    assert real.nbytes() == meta.nbytes()


def test_fake_tensor_activations_match_a_real_backward_pass():
    cfg = llama_config(FinetuneMemoryConfig(**TOY))
    act = saved_activation_bytes(cfg, "full", 2, 32)
    assert act["per_block"] > 0 and act["total"] == act["outside_blocks"] + 2 * act["per_block"]
    assert measure_saved_bytes(cfg, "full", 2, 32, fake=True) == measure_saved_bytes(cfg, "full", 2, 32, fake=False)
    lora = saved_activation_bytes(cfg, "lora-attn-qv", 2, 32)
    assert 0 < lora["per_block"] < act["per_block"]  # frozen linears keep no input for a weight gradient


def test_toy_run_writes_report_and_results(tmp_path, capsys):
    args = [f"--set={k}={json.dumps(v)}" for k, v in TOY.items()]
    assert main(["finetune-memory", "--out", str(tmp_path), *args]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    by = {r["setup"]: r for r in result["rows"]}
    assert by["full"]["static_ratio"] == 1.0
    assert by["qlora-ffn"]["static_bytes"] < by["lora-ffn"]["static_bytes"] < by["full"]["static_bytes"]
    assert all(r["activation_checkpointed_bytes"] < r["activation_bytes"] for r in result["rows"])
    report = (tmp_path / "report.md").read_text()
    assert "notes' ratio" in report and "## Claims" in report and "1/3.4" in report
    assert (tmp_path / "finetune_memory.png").stat().st_size > 1000
    assert "result: lora_ffn_static_ratio=" in capsys.readouterr().out
    assert main(["finetune-memory", "--out", str(tmp_path), "--set", "setups=[\"lora\"]"]) == 2
