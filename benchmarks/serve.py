"""Serving: continuous batching vs static batching vs one request at a time, paged vs contiguous KV
memory, prefix-cache TTFT, and a soak test with cancellations against the real HTTP server.

    .venv/bin/python benchmarks/serve.py                 # full (minutes)
    .venv/bin/python benchmarks/serve.py --quick         # a smoke run
    .venv/bin/python benchmarks/serve.py --run runs/NAME # the run's model and tokenizer

Model: a run's checkpoint (--run runs/speedrun for the default run), else a random-weight llama-style
model of the default run's shape (d=128, 4 layers, GQA 4/2; --quick: d=64, 2 layers) with a BPE
trained on tinyshakespeare. The context is 1024 tokens so the 512-token prefix fits: a run's RoPE model
trained at 256 is served past its trained length (its text is then poor, its timing is what counts
here). Every request ignores EOS so its output length is the drawn one.

Load: Poisson arrivals at rates that are multiples of one request's service rate (measured first),
prompt and output lengths drawn from clipped log-normal (heavy-tailed) distributions. Time is a
virtual clock: each system advances it by the measured wall time of its work and jumps over idle
gaps, so all three see the same arrival process. Systems:
- continuous: lmstack.serve's Scheduler (iteration-level batching, chunked prefill, paged KV cache);
- static: lmstack.generate.stream on batches of B requests; a batch waits until B have arrived and runs
  until its longest member finishes (the engine's fixed batch);
- one-at-a-time: lmstack.generate.stream with one request.
Static and one-at-a-time use generate's fast decode kernels, so the comparison does not flatter the
scheduler.
KV memory: after every continuous step, live tokens / allocated token slots, for the paged pool and
for a contiguous cache that reserves max_seq_len per running request.
Prefix cache: TTFT of a request whose first 512 tokens are a shared prefix, cold vs after a hit.
Soak: C concurrent streaming clients against uvicorn for S seconds, a third of them hanging up early;
errors, blocks still in use afterwards, and resident memory growth.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lmstack import DATA_DIR
from lmstack.machine import run_benchmark
from lmstack.generate import GenerationConfig, stream
from lmstack.model import ModelConfig, Transformer
from lmstack.serve import Scheduler, SchedulerConfig


CONTEXT = 1024


@dataclass
class Req:
    arrival: float
    prompt: list[int]
    out_len: int
    first: Optional[float] = None  # time to first token
    done: Optional[float] = None  # time to last token

    @property
    def cfg(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.out_len, ignore_eos=True)


def load_model(args):
    from lmstack.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

    if args.run:
        from lmstack.generate.cli import resolve_checkpoint
        from lmstack.model import load_pretrained

        ckpt, tok_path = resolve_checkpoint(args.run)
        model = load_pretrained(ckpt).eval()
        if model.config.max_seq_len < CONTEXT:
            if model.config.position_type == "learned":
                raise SystemExit(f"{ckpt}: learned positions stop at {model.config.max_seq_len} tokens; "
                                 f"this benchmark needs a {CONTEXT}-token context")
            print(f"note: {ckpt} was trained at {model.config.max_seq_len} tokens; served here at {CONTEXT}")
            model.config = model.config.replace(max_seq_len=CONTEXT)
        return model, Tokenizer.load(tok_path)
    text = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100000]
    tok = train_tokenizer([text], 1024, mode="byte", special_tokens=list(SPECIAL_TOKENS), progress=False)
    size = dict(d_model=64, n_layers=2) if args.quick else dict(d_model=128, n_layers=4)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, max_seq_len=CONTEXT, init_std=0.05,
                             n_heads=4, n_kv_heads=2, **size)
    return Transformer(cfg).eval(), tok


def lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))))


def workload(rng: random.Random, n: int, rate: float, vocab: int, max_len: int) -> list[Req]:
    reqs, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        p = lognormal_int(rng, 48, 1.0, 4, min(512, max_len // 2))
        o = lognormal_int(rng, 32, 0.9, 2, min(256, max_len - p - 1))
        reqs.append(Req(t, [rng.randrange(10, vocab) for _ in range(p)], o))
    return reqs


def run_continuous(model, tok, reqs: list[Req], sched_cfg: SchedulerConfig) -> dict:
    sched = Scheduler(model, tok, sched_cfg)
    pending = deque(reqs)
    by_id: dict[int, Req] = {}
    clock, util_paged, util_contig = 0.0, [], []
    max_len = sched.max_len or CONTEXT
    while pending or sched.has_work():
        while pending and pending[0].arrival <= clock:
            r = pending.popleft()
            by_id[sched.add(r.prompt, r.cfg)] = r
        if not sched.has_work():
            clock = pending[0].arrival
            continue
        t0 = time.perf_counter()
        events = sched.step()
        clock += time.perf_counter() - t0
        live = sum(s.num_computed for s in sched.running)
        if sched.running:
            util_paged.append(live / max(1, sched.pool.num_used * sched.pool.block_size))
            util_contig.append(live / (len(sched.running) * max_len))
        for ev in events:
            r = by_id[ev.seq_id]
            if ev.token_id is not None and r.first is None:
                r.first = clock - r.arrival
            if ev.finish_reason is not None:
                r.done = clock - r.arrival
    sched.pool.check_all_free()
    return {"clock": clock, "paged_util": statistics.mean(util_paged), "contig_util": statistics.mean(util_contig),
            "preemptions": sched.preemptions}


def run_batched(model, tok, reqs: list[Req], batch: int) -> dict:
    clock = 0.0
    for i in range(0, len(reqs), batch):
        group = reqs[i:i + batch]
        clock = max(clock, group[-1].arrival)  # the batch waits until it is full
        t0 = time.perf_counter()
        for ch in stream(model, tok, [r.prompt for r in group], [r.cfg for r in group]):
            now = clock + time.perf_counter() - t0
            r = group[ch.index]
            if ch.token_id is not None and r.first is None:
                r.first = now - r.arrival
            if ch.finish_reason is not None:
                r.done = now - r.arrival
        clock += time.perf_counter() - t0
    return {"clock": clock}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def summarize(reqs: list[Req], clock: float) -> dict:
    tokens = sum(r.out_len for r in reqs)
    lat = [r.done for r in reqs]
    return {"throughput": tokens / max(clock - reqs[0].arrival, 1e-9), "ttft_p50": pct([r.first for r in reqs], 0.5),
            "lat_p50": pct(lat, 0.5), "lat_p99": pct(lat, 0.99)}


def bench_load(model, tok, args) -> tuple[list[str], dict]:
    rng = random.Random(0)
    vocab = tok.vocab_size
    probe = workload(random.Random(1), 3, 1.0, vocab, CONTEXT)
    t0 = time.perf_counter()
    run_batched(model, tok, probe, 1)
    service = (time.perf_counter() - t0) / len(probe)  # seconds per request, one at a time
    rows, headline = [], {}
    for mult in args.rates:
        rate = mult / service
        base = workload(rng, args.requests, rate, vocab, CONTEXT)
        results = {}
        for name in ("continuous", "static", "one-at-a-time"):
            reqs = [Req(r.arrival, r.prompt, r.out_len) for r in base]
            if name == "continuous":
                info = run_continuous(model, tok, reqs, SchedulerConfig(num_blocks=4096, max_num_seqs=args.max_seqs))
            else:
                info = run_batched(model, tok, reqs, args.static_batch if name == "static" else 1)
            results[name] = summarize(reqs, info["clock"])
            s = results[name]
            rows.append(f"| {mult:g}x ({rate:.2f} req/s) | {name} | {s['throughput']:.1f} | {s['ttft_p50']:.3f} | "
                        f"{s['lat_p50']:.3f} | {s['lat_p99']:.3f} |")
        headline = results  # the last (highest) rate
    return rows, headline


def bench_memory(model, tok, args) -> dict:
    reqs = workload(random.Random(2), args.requests, 1e9, tok.vocab_size, CONTEXT)  # all at once: a full batch
    return run_continuous(model, tok, reqs, SchedulerConfig(num_blocks=4096, max_num_seqs=args.max_seqs))


def bench_prefix(model, tok, repeats: int) -> tuple[float, float]:
    rng = random.Random(3)
    prefix = [rng.randrange(10, tok.vocab_size) for _ in range(512)]

    def ttft(sched: Scheduler) -> float:
        sid = sched.add(prefix + [rng.randrange(10, tok.vocab_size) for _ in range(16)],
                        GenerationConfig(max_new_tokens=4, ignore_eos=True))
        t0 = time.perf_counter()
        while True:
            if any(ev.seq_id == sid and ev.token_id is not None for ev in sched.step()):
                first = time.perf_counter() - t0
                break
        sched.run_to_completion()
        return first

    cold, warm = [], []
    for _ in range(repeats):
        cold.append(ttft(Scheduler(model, tok, SchedulerConfig(num_blocks=512, prefix_caching=False))))
        hot = Scheduler(model, tok, SchedulerConfig(num_blocks=512))
        ttft(hot)  # fills the cache with the prefix
        warm.append(ttft(hot))
    return statistics.median(cold), statistics.median(warm)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_soak(model, tok, clients: int, seconds: float) -> dict:
    import httpx
    import uvicorn

    from lmstack.serve.app import ServerState, create_app
    from lmstack.serve.async_engine import AsyncEngine
    from lmstack.serve.guardrails import Guardrails
    from lmstack.serve.protocol import Limits

    sched = Scheduler(model, tok, SchedulerConfig(num_blocks=2048, max_num_seqs=64))
    state = ServerState(AsyncEngine(sched), tok, "bench", Guardrails(pii="mask"), Limits(max_concurrent=clients * 2))
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    stats = {"requests": 0, "errors": 0, "cancelled": 0, "tokens": 0}
    rss = []

    async def client(i: int, deadline: float) -> None:
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            while time.perf_counter() < deadline:
                body = {"model": "bench", "prompt": "To be, or not to be" * rng.randint(1, 4),
                        "max_tokens": rng.randint(8, 64), "stream": True, "ignore_eos": True}
                cancel_after = rng.randint(1, 10) if rng.random() < 0.33 else None
                try:
                    async with http.stream("POST", "/v1/completions", json=body) as r:
                        if r.status_code != 200:
                            stats["errors"] += 1
                            continue
                        k = 0
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                k += 1
                                if '"error"' in line:
                                    stats["errors"] += 1
                            if cancel_after is not None and k >= cancel_after:
                                stats["cancelled"] += 1
                                break
                        stats["tokens"] += k
                    stats["requests"] += 1
                except httpx.HTTPError:
                    stats["errors"] += 1

    async def main() -> None:
        deadline = time.perf_counter() + seconds

        async def sample() -> None:
            while time.perf_counter() < deadline:
                rss.append(rss_mib())
                await asyncio.sleep(max(seconds / 20, 0.2))

        await asyncio.gather(sample(), *(client(i, deadline) for i in range(clients)))

    asyncio.run(main())
    end = time.perf_counter() + 30
    while (sched.has_work() or sched.pool.num_used) and time.perf_counter() < end:
        time.sleep(0.05)
    stats["leaked_blocks"] = sched.pool.num_used
    quarter = rss[len(rss) // 4] if rss else float("nan")
    stats["rss_growth_mib"] = (rss[-1] - quarter) if rss else float("nan")
    server.should_exit = True
    thread.join(timeout=10)
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--run", help="serve this run's model (default: a random-weight cpu-speedrun-size model)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rates = [4.0] if args.quick else [1.0, 4.0, 16.0]
    args.requests = 12 if args.quick else 96
    args.static_batch = 4 if args.quick else 8
    args.max_seqs = 64
    model, tok = load_model(args)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, context {model.config.max_seq_len}; "
          f"{args.requests} requests per rate")

    rows, head = bench_load(model, tok, args)
    print("\n| arrival rate | system | output tok/s | TTFT p50 (s) | latency p50 (s) | latency p99 (s) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    mem = bench_memory(model, tok, args)
    cold, warm = bench_prefix(model, tok, 2 if args.quick else 5)
    soak = bench_soak(model, tok, 8 if args.quick else 64, 5.0 if args.quick else 120.0)
    print("\n| measure | value |\n|---|---|")
    print(f"| KV memory holding live tokens, paged (block 16) | {mem['paged_util']:.1%} |")
    print(f"| KV memory holding live tokens, contiguous max-length per request | {mem['contig_util']:.1%} |")
    print(f"| TTFT, 512-token prefix, cold | {cold * 1000:.1f} ms |")
    print(f"| TTFT, 512-token prefix, prefix-cache hit | {warm * 1000:.1f} ms |")
    print(f"| soak: requests / cancelled / errors | {soak['requests']} / {soak['cancelled']} / {soak['errors']} |")
    print(f"| soak: KV blocks in use afterwards | {soak['leaked_blocks']} |")
    print(f"| soak: resident memory growth after warm-up | {soak['rss_growth_mib']:.1f} MiB |")
    c, s = head["continuous"], head["static"]
    print(f"result: continuous_vs_static_throughput={c['throughput'] / s['throughput']:.2f}")
    print(f"result: continuous_p99_over_static_p99={c['lat_p99'] / s['lat_p99']:.2f}")
    print(f"result: continuous_vs_one_at_a_time_throughput={c['throughput'] / head['one-at-a-time']['throughput']:.2f}")
    print(f"result: paged_kv_utilization={mem['paged_util']:.3f}")
    print(f"result: contiguous_kv_utilization={mem['contig_util']:.3f}")
    print(f"result: prefix_cache_ttft_speedup={cold / warm:.2f}")
    print(f"result: soak_errors={soak['errors']}")
    print(f"result: soak_leaked_blocks={soak['leaked_blocks']}")
    print(f"result: soak_rss_growth_mib={soak['rss_growth_mib']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
