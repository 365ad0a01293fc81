"""Beyond one machine, measured: 8-bit optimizer state, FP8 linears, tensor and pipeline parallelism.

1. Optimizer-state bytes and loss at step N on tinyshakespeare characters: torch's fp32 AdamW,
   lmstack's 8-bit AdamW and torchao's 8-bit AdamW (the peer), side by side; plus emulated FP8
   linears (lmstack) against the fp32 run.
2. Tensor parallelism (Megatron and sequence-parallel) and pipeline parallelism (GPipe, 1F1B) on
   2 gloo processes: agreement with one process, collectives per step, time per step, and the
   measured pipeline bubble against (p-1)/(m+p-1).

3. The data stage's map step with the local executor (1 and 2 processes) and on a local Ray
   cluster with 1 and 2 worker nodes: MB/s of input and whether the outputs are byte-identical.

    .venv/bin/python benchmarks/scale_out.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp
from tqdm import tqdm

from lmstack.machine import run_benchmark
from lmstack import DATA_DIR
from lmstack.model import ModelConfig, Transformer
from lmstack.train.fp8 import convert_to_fp8
from lmstack.train.optim8bit import AdamW8bit, optimizer_state_bytes
from lmstack.train.pipeline_parallel import bubble_formula

DATA = DATA_DIR / "en" / "tinyshakespeare.txt"


def load_chars(limit: int) -> tuple[torch.Tensor, int]:
    if not DATA.exists():
        raise SystemExit(f"{DATA}: tinyshakespeare not found (it ships in the repository under data/en)")
    text = DATA.read_text(encoding="utf-8")[:limit]
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), len(vocab)


def make_model(vocab: int, d_model: int, n_layers: int, seq: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("llama-style", vocab_size=vocab, d_model=d_model, n_layers=n_layers,
                                          n_heads=4, n_kv_heads=4, max_seq_len=seq))


def fixed_batches(data: torch.Tensor, steps: int, batch: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        chunk = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
        out.append((chunk[:, :-1], chunk[:, 1:]))
    return out


def run_optimizer(name: str, args, data, vocab) -> dict:
    model = make_model(vocab, args.d_model, args.n_layers, args.seq)
    kw = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    if name == "fp8 linears + fp32 AdamW (lmstack, emulated)":
        convert_to_fp8(model, "tensor")
    if name.startswith("fp32") or name.startswith("fp8"):
        opt = torch.optim.AdamW(model.parameters(), **kw)
    elif name.startswith("8-bit AdamW (lmstack"):
        opt = AdamW8bit(model.parameters(), **kw)
    else:
        from torchao.optim import AdamW8bit as TorchaoAdamW8bit
        opt = TorchaoAdamW8bit(model.parameters(), **kw)
    losses, t0 = [], time.perf_counter()
    eager = torch.compile  # torchao compiles its step; on CPU that costs minutes of C++ builds, so run it eager
    if name.startswith("8-bit AdamW (torchao") and not torch.cuda.is_available():
        torch.compile = lambda fn, **_: fn
    try:
        for x, y in tqdm(fixed_batches(data, args.steps, args.batch, args.seq), desc=name[:24], leave=False,
                         file=sys.stderr):
            loss = model(x, targets=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        torch.compile = eager
    seconds = (time.perf_counter() - t0) / args.steps
    return {"name": name, "bytes": optimizer_state_bytes(opt), "loss": sum(losses[-5:]) / len(losses[-5:]),
            "losses": losses, "step_s": seconds}


def optimizer_table(args, data, vocab) -> dict:
    names = ["fp32 AdamW (torch)", "8-bit AdamW (lmstack)", "8-bit AdamW (torchao)",
             "fp8 linears + fp32 AdamW (lmstack, emulated)"]
    try:
        import torchao.optim  # noqa: F401
    except ImportError as e:
        print(f"torchao not importable ({e}): its row is skipped (pip install -e '.[dev]')")
        names.remove("8-bit AdamW (torchao)")
    rows = [run_optimizer(n, args, data, vocab) for n in names]
    base = rows[0]
    print(f"\n### Optimizer state and loss at step {args.steps} (d_model={args.d_model}, {args.n_layers} layers)\n")
    print("| run | optimizer state | vs fp32 | loss (last 5 steps) | max loss gap vs fp32 | s/step |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gap = max(abs(a - b) for a, b in zip(r["losses"], base["losses"]))
        print(f"| {r['name']} | {r['bytes'] / 2**20:.2f} MiB | {r['bytes'] / base['bytes']:.1%} | {r['loss']:.4f} "
              f"| {gap:.4f} | {r['step_s']:.3f} |")
        r["gap"] = gap
    return {r["name"]: r for r in rows}


# ----------------------------------------------------------------------------- parallel checks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parallel_worker(rank: int, port: int, out: str, cfg: dict):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lmstack.train.pipeline_parallel import PipelineRunner, StageTimer
    from lmstack.train.tensor_parallel import apply_tensor_parallel, count_collectives
    torch.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    try:
        batches = cfg["batches"]
        mesh = init_device_mesh("cpu", (2,))
        for mode in ("megatron", "sequence"):
            model = apply_tensor_parallel(make_model(*cfg["model"]), mesh, sequence_parallel=mode == "sequence")
            x, y = batches[0]
            out_, fwd = count_collectives(lambda: model(x, targets=y))
            _, bwd = count_collectives(lambda: out_.loss.backward())
            grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                     for n, p in model.named_parameters()}
            dist.barrier()
            t0 = time.perf_counter()
            for x, y in batches:
                model(x, targets=y).loss.backward()
            results[f"tp_{mode}"] = {"logits": out_.logits.detach(), "grads": grads, "forward": fwd, "backward": bwd,
                                     "step_s": (time.perf_counter() - t0) / len(batches)}
        for schedule in ("gpipe", "1f1b"):
            runner = PipelineRunner(make_model(*cfg["model"]), rank, 2, cfg["micro"], schedule)
            opt = torch.optim.AdamW(runner.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
            losses = []
            dist.barrier()
            t0 = time.perf_counter()
            for x, y in batches:
                losses.append(runner.step(x, y))
                opt.step()
                opt.zero_grad(set_to_none=True)
            step_s = (time.perf_counter() - t0) / len(batches)
            timer = StageTimer(runner.module, delay=0.05)
            dist.barrier()
            t0 = time.perf_counter()
            runner.step(*batches[0])
            results[f"pp_{schedule}"] = {"losses": losses, "step_s": step_s,
                                         "bubble": 1 - timer.busy / (time.perf_counter() - t0)}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def parallel_table(args, data, vocab) -> dict:
    model_args = (vocab, args.d_model, args.n_layers, args.seq)
    batches = fixed_batches(data, args.parallel_steps, args.batch, args.seq)
    threads = max(1, (os.cpu_count() or 2) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "parallel.pt")
        mp.start_processes(_parallel_worker, nprocs=2, join=True, start_method="fork",
                           args=(_free_port(), out, {"model": model_args, "batches": batches,
                                                     "micro": args.micro, "threads": threads}))
        ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in (0, 1)]
    torch.set_num_threads(threads * 2)
    # one process: reference logits/grads of the first batch, the loss trajectory and time per step
    ref_model = make_model(*model_args)
    x, y = batches[0]
    ref_out = ref_model(x, targets=y)
    ref_out.loss.backward()
    ref_grads = {n: p.grad for n, p in ref_model.named_parameters()}
    model = make_model(*model_args)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ref_losses, t0 = [], time.perf_counter()
    for x, y in batches:
        loss = model(x, targets=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref_losses.append(loss.item())
    single_s = (time.perf_counter() - t0) / len(batches)

    print(f"\n### Tensor and pipeline parallelism, 2 gloo processes (CPU), {len(batches)} steps\n")
    print("| run | max |logit diff| | max |grad diff| | max |loss diff| | collectives fwd / bwd | s/step "
          "| bubble (measured / formula) |")
    print("|---|---:|---:|---:|---|---:|---|")
    print(f"| 1 process | 0 | 0 | 0 | - | {single_s:.3f} | - |")
    summary = {}
    for mode in ("megatron", "sequence"):
        r = ranks[0][f"tp_{mode}"]
        logit_diff = (r["logits"] - ref_out.logits.detach()).abs().max().item()
        grad_diff = max((g - ref_grads[n]).abs().max().item() for n, g in r["grads"].items())
        comms = f"{_comm_str(r['forward'])} / {_comm_str(r['backward'])}"
        print(f"| TP=2 {mode} | {logit_diff:.1e} | {grad_diff:.1e} | - | {comms} | {r['step_s']:.3f} (fwd+bwd) | - |")
        summary[f"tp_{mode}"] = (logit_diff, grad_diff)
    expected = bubble_formula(2, args.micro)
    for schedule in ("gpipe", "1f1b"):
        r_last, r_first = ranks[1][f"pp_{schedule}"], ranks[0][f"pp_{schedule}"]
        loss_diff = max(abs(a - b) for a, b in zip(r_last["losses"], ref_losses))
        bubble = (r_first["bubble"] + r_last["bubble"]) / 2
        print(f"| PP=2 {schedule}, m={args.micro} | - | - | {loss_diff:.1e} | send/recv | {r_last['step_s']:.3f} "
              f"| {bubble:.3f} / {expected:.3f} |")
        summary[f"pp_{schedule}"] = (loss_diff, bubble)
    return summary


def _comm_str(counts: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"


def _data_stage(tmp: str, name: str, executor: str, workers: int, stdlib_bytes: int) -> tuple[float, float, dict]:
    import json
    from pathlib import Path

    from lmstack.config import config_from_dict
    from lmstack.data import stage as data_stage
    from lmstack.pipeline import StageContext
    from lmstack.runs import RunDir

    table = {"workers": workers, "executor": executor, "shard_docs": 64,
             "sources": [{"kind": "stdlib", "name": "stdlib", "max_bytes": stdlib_bytes}]}
    cfg = config_from_dict(data_stage.Config, table, "data")
    run = RunDir(Path(tmp) / name)
    data_stage.run(StageContext(run=run, seed=5, device="cpu", recipe={"data": table}, stage="data"), cfg)
    data_dir = run.path / "data"
    stats = json.loads((data_dir / "stats.json").read_text())
    mb_per_s = stats["funnel"][0]["bytes"] / 1e6 / max(stats["seconds"]["map"], 1e-9)
    outputs = {p.name: p.read_bytes() for p in sorted(data_dir.glob("*.jsonl"))}
    return mb_per_s, stats["seconds"]["minhash_lsh"], outputs


def data_table(args) -> dict:
    """Local executor vs Ray with 1 and 2 worker nodes (each node: one CPU)."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError as e:
        print(f"\nRay not importable ({e}): data-stage rows skipped (pip install -e '.[ray]')")
        return {}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            rows[f"local executor, {workers} process(es)"] = _data_stage(tmp, f"local{workers}", "local", workers,
                                                                          args.stdlib_bytes)
        for nodes in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for _ in range(nodes):
                cluster.add_node(num_cpus=1)
            ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
            try:
                rows[f"Ray, {nodes} worker node(s)"] = _data_stage(tmp, f"ray{nodes}", "ray", 1, args.stdlib_bytes)
            finally:
                ray.shutdown()
                cluster.shutdown()
    reference = rows["local executor, 1 process(es)"][2]
    print(f"\n### Data stage: map step and near-dup reduce ({args.stdlib_bytes / 1e6:.1f} MB of stdlib source)\n")
    print("| executor | map MB/s | near-dup reduce s | output identical to local |")
    print("|---|---:|---:|---|")
    for name, (rate, reduce_s, outputs) in rows.items():
        print(f"| {name} | {rate:.2f} | {reduce_s:.2f} | {'yes' if outputs == reference else 'NO'} |")
    return {name: (rate, outputs == reference) for name, (rate, _, outputs) in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (a smoke test, not a measurement)")
    args = ap.parse_args()
    if args.quick:
        args.d_model, args.n_layers, args.seq, args.batch, args.steps, args.parallel_steps, args.micro = \
            64, 2, 32, 8, 15, 3, 4
        limit, args.stdlib_bytes = 50_000, 300_000
    else:
        args.d_model, args.n_layers, args.seq, args.batch, args.steps, args.parallel_steps, args.micro = \
            256, 4, 128, 16, 200, 10, 8
        limit, args.stdlib_bytes = 2_000_000, 20_000_000
    data, vocab = load_chars(limit)
    rows = optimizer_table(args, data, vocab)
    parallel = parallel_table(args, data, vocab)
    data_rows = data_table(args)
    fp32, ours = rows["fp32 AdamW (torch)"], rows["8-bit AdamW (lmstack)"]
    print(f"\nresult: adamw8bit_state_saving={1 - ours['bytes'] / fp32['bytes']:.3f}")
    print(f"result: adamw8bit_loss_gap={ours['loss'] - fp32['loss']:.4f}")
    if "8-bit AdamW (torchao)" in rows:
        ao = rows["8-bit AdamW (torchao)"]
        print(f"result: torchao_adamw8bit_loss_gap={ao['loss'] - fp32['loss']:.4f}")
        print(f"result: adamw8bit_state_vs_torchao={ours['bytes'] / ao['bytes']:.3f}")
    fp8 = rows["fp8 linears + fp32 AdamW (lmstack, emulated)"]
    print(f"result: fp8_emulated_loss_gap={fp8['loss'] - fp32['loss']:.4f}")
    print(f"result: tp_max_logit_diff={max(v[0] for k, v in parallel.items() if k.startswith('tp')):.2e}")
    print(f"result: pp_max_loss_diff={max(v[0] for k, v in parallel.items() if k.startswith('pp')):.2e}")
    print(f"result: pp_bubble_1f1b={parallel['pp_1f1b'][1]:.3f}")
    print(f"result: pp_bubble_formula={bubble_formula(2, args.micro):.3f}")
    if data_rows:
        local_rate = data_rows["local executor, 1 process(es)"][0]
        print(f"result: ray_2node_speedup_vs_local={data_rows['Ray, 2 worker node(s)'][0] / local_rate:.2f}")
        print(f"result: ray_outputs_identical={int(all(same for _, same in data_rows.values()))}")


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
