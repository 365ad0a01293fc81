"""The machine probe (dtype = "auto" and the MFU peak) and the benchmarks' contention watch."""

import json

import pytest
import torch

from lmstack import machine


def test_probe_picks_fp32_when_bf16_is_slower(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    rates = {torch.float32: 100e9, torch.bfloat16: 1.3e9}  # an AVX2-only CPU
    monkeypatch.setattr(machine, "_gemm_flops", lambda dtype, device, n, budget: rates[dtype])
    dtype, profile = machine.resolve_dtype("auto")
    assert dtype == "fp32" and profile.bf16_flops == 1.3e9
    assert json.loads((tmp_path / "machine.json").read_text())[profile.key]["best_dtype"] == "fp32"
    # cached per machine: a second call does not measure again
    monkeypatch.setattr(machine, "_gemm_flops", lambda *a: pytest.fail("measured twice"))
    assert machine.probe().best_dtype == "fp32"
    assert machine.resolve_dtype("bf16") == ("bf16", None)  # an explicit choice is kept


def test_probe_picks_bf16_only_when_clearly_faster(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    for bf16, expected in ((400e9, "bf16"), (110e9, "fp32")):  # 4x faster vs a near tie
        monkeypatch.setattr(machine, "_gemm_flops",
                            lambda dtype, device, n, budget, b=bf16: b if dtype == torch.bfloat16 else 100e9)
        assert machine.probe(refresh=True).best_dtype == expected


def test_contention_report_flags_a_busy_machine():
    watch = machine.ContentionWatch(threshold=0.1)
    with watch:
        pass
    assert watch.share >= 0.0
    watch.share = 0.45
    text = watch.report()
    assert "WARNING" in text and text.endswith("result: contended=yes")
    watch.share = 0.02
    assert watch.report().endswith("result: contended=no") and "WARNING" not in watch.report()


def test_probe_threads_picks_the_fewest_threads_near_the_fastest(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    rates = {1: 10.0, 2: 19.0, 3: 19.5, 4: 18.0}  # 3 threads is fastest, 2 is within 5%
    monkeypatch.setattr(machine, "_threads_rate", lambda budget: rates[torch.get_num_threads()])
    before = torch.get_num_threads()
    assert machine.probe_threads(candidates=[1, 2, 3, 4]) == 2
    assert torch.get_num_threads() == before  # the probe restores the thread count
    monkeypatch.setattr(machine, "_threads_rate", lambda budget: pytest.fail("measured twice"))
    assert machine.probe_threads(candidates=[1, 2, 3, 4]) == 2  # cached per machine


def test_compile_cache_lives_under_the_lmstack_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_FX_GRAPH_CACHE", raising=False)
    assert machine.persist_compile_cache() == tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert machine.persist_compile_cache() == tmp_path / "mine"  # a user's choice wins
