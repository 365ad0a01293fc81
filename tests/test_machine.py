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
