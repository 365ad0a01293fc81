"""Training throughput: lmstack Transformer vs HF LlamaForCausalLM on the same config and batch.

Same llama-style config (~7M parameters at vocab 4096), same batch, same weights, full training step
(forward + cross-entropy + backward + AdamW step), fp32 and bf16 autocast. MFU is measured against
this machine's peak, taken from a GEMM microbenchmark run in this script.

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--compile] [--profile] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time


import torch

from lmstack.machine import run_benchmark
from lmstack.model import ModelConfig, Transformer, flops_per_token
from lmstack.model.hf import _llama_state, llama_config_dict


def gemm_peak_flops(dtype: torch.dtype, seconds: float, sizes=(512, 1024, 2048)) -> float:
    """Best sustained FLOP/s of square matmuls (the practical peak of this CPU and torch build)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3 or reps < 3:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def time_shares(fn) -> dict[str, float]:
    """Where one training step spends its CPU time, by the torch profiler's self time per op:
    matmuls, scaled-dot-product attention, and everything else (elementwise, norms, loss, optimizer)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    shares = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for e in prof.key_averages():
        if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
            kind = ("matmul" if e.key in ("aten::mm", "aten::addmm", "aten::bmm") else
                    "attention" if "scaled_dot_product" in e.key else "other")
            shares[kind] += e.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def make_step(model, kind: str, x: torch.Tensor, autocast: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True)
    targets = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)

    def step():
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            if kind == "hf":
                loss = model(input_ids=x, labels=x).loss  # HF shifts labels inside
            else:  # what the trainer runs: the fused linear + cross-entropy, unless the variant says not
                loss = model(x, targets=targets, fused_loss=kind != "lmstack-unfused").loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps (~1 min)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--shape", choices=["llama-style", "default-run"], default="llama-style",
                    help="llama-style: the ~7M preset; default-run: the default recipe's 1.3M pretraining model "
                         "(d=128, 4 layers, 4/2 heads), where per-op overhead weighs more than at 7M")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd lmstack")
    ap.add_argument("--profile", action="store_true",
                    help="also print where each eager fp32 step spends its time (matmul / attention / other)")
    ap.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto",
                    help="time bf16 autocast too (auto: only when this CPU's bf16 GEMM is not much slower than fp32)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {}
    if args.shape == "default-run":
        from lmstack.train.stage import default_model_table

        shape = {k: v for k, v in default_model_table().items() if k != "preset"}
    cfg = ModelConfig.preset("llama-style", max_seq_len=args.seq, **shape)
    if args.quick:
        args.batch = min(args.batch, 4)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    steps, rounds = (1, 3) if args.quick else (3, 5)

    def build(kind):
        torch.manual_seed(0)
        ours = Transformer(cfg).train()
        if kind == "lmstack":
            return ours
        hf_cfg = {k: v for k, v in llama_config_dict(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
        hf = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa")).train()
        hf.load_state_dict(_llama_state(ours), strict=False)  # same weights (lm_head tied)
        return hf

    peak32 = gemm_peak_flops(torch.float32, 3.0 if args.quick else 6.0)
    peak16 = gemm_peak_flops(torch.bfloat16, 1.0, sizes=(256, 512))
    use_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and peak16 > peak32 / 4)
    variants = [("lmstack", "fp32", False), ("lmstack-unfused", "fp32", False), ("hf", "fp32", False)]
    if use_bf16:
        variants += [("lmstack", "bf16", True), ("hf", "bf16", True)]
    if args.compile:
        variants += [("lmstack+compile", "fp32", False)] + ([("lmstack+compile", "bf16", True)] if use_bf16 else [])
    step_fns = {}
    for kind, prec, ac in variants:
        model = build("hf" if kind == "hf" else "lmstack")
        if kind == "lmstack+compile":
            model = torch.compile(model)
        fn = make_step(model, kind, x, ac)
        for _ in range(2 if "compile" not in kind else 3):
            fn()  # warm-up (and compilation)
        step_fns[(kind, prec)] = fn
    # Interleave the variants round by round so background load hits all of them alike.
    times: dict[tuple[str, str], list[float]] = {k: [] for k in step_fns}
    for _ in range(rounds):
        for key, fn in step_fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[key].append((time.perf_counter() - t0) / steps)
    load = os.getloadavg()[0]

    flops = flops_per_token(Transformer(cfg), args.seq) * args.batch * args.seq  # the one FLOP count
    tokens = args.batch * args.seq
    print(f"config: llama-style d={cfg.d_model} L={cfg.n_layers} heads={cfg.n_heads}/{cfg.n_kv_heads} "
          f"vocab={cfg.vocab_size} params={cfg.num_params():,} | batch={args.batch} seq={args.seq} | "
          f"torch threads={torch.get_num_threads()} cpus={os.cpu_count()} | 1-min load average {load:.1f}")
    print("(step time = best of the interleaved rounds: the least disturbed by other processes)")
    print(f"GEMM peak: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s; "
          f"train FLOPs/step {flops / 1e9:.2f} GFLOP\n")
    if not use_bf16:
        print(f"bf16 autocast not timed: this CPU's bf16 GEMM runs at {peak16 / 1e9:.1f} GFLOP/s vs fp32 "
              f"{peak32 / 1e9:.1f} (no native bf16 units), so bf16 training here is far slower; --bf16 yes forces it\n")
    print("| model | precision | step ms (best) | tokens/s | vs HF | MFU (vs that precision's GEMM peak) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for (kind, prec), ts in times.items():
        med = min(ts)
        hf_med = min(times[("hf", prec)])
        tps = tokens / med
        mfu = flops / med / (peak16 if prec == "bf16" else peak32)
        results[(kind, prec)] = (tps, hf_med / med, mfu)
        print(f"| {kind} | {prec} | {med * 1e3:.1f} | {tps:,.0f} | {hf_med / med:.2f}x | {100 * mfu:.1f}% |")
    if args.profile:
        print("\n| model (fp32 eager) | matmul | attention (SDPA) | other ops |\n|---|---|---|---|")
        shares = {kind: time_shares(step_fns[(kind, "fp32")]) for kind in ("lmstack", "hf")}
        for kind, sh in shares.items():
            print(f"| {kind} | {100 * sh['matmul']:.0f}% | {100 * sh['attention']:.0f}% | {100 * sh['other']:.0f}% |")
        mm_flops = flops - 6 * cfg.n_layers * args.seq * cfg.n_heads * cfg.head_dim * tokens  # the matmul part
        mm_seconds = min(times[("lmstack", "fp32")]) * shares["lmstack"]["matmul"]
        print(f"(lmstack's matmuls: about {mm_flops / mm_seconds / 1e9:.0f} GFLOP/s against the "
              f"{peak32 / 1e9:.0f} GFLOP/s GEMM peak)")
    print()
    print(f"result: train_ratio_vs_hf_fp32={results[('lmstack', 'fp32')][1]:.2f}")
    if use_bf16:
        print(f"result: train_ratio_vs_hf_bf16={results[('lmstack', 'bf16')][1]:.2f}")
    if args.compile:
        print(f"result: train_ratio_vs_hf_fp32_compiled={results[('lmstack+compile', 'fp32')][1]:.2f}")
    print(f"result: tokens_per_s_fp32={results[('lmstack', 'fp32')][0]:.0f}")
    print(f"result: mfu_fp32={results[('lmstack', 'fp32')][2]:.3f}")
    print(f"result: gemm_peak_gflops_fp32={peak32 / 1e9:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
