"""Decoding throughput: lmstack's KV-cache engine vs transformers generate() on the same weights,
plus the speculative-decoding speedup with a ~4x smaller draft model on the world corpus.

    .venv/bin/python benchmarks/generate.py            # full
    .venv/bin/python benchmarks/generate.py --quick    # fewer repeats / training steps
    .venv/bin/python benchmarks/generate.py --run runs/NAME   # target = the run's pretrain checkpoint
    .venv/bin/python benchmarks/generate.py --threads 1 --clock cpu   # on a machine shared with other jobs

Part 1: a random-weight llama-style model (the cpu-speedrun size) is exported with export_hf and
loaded as LlamaForCausalLM. Both generate greedily, prompt 64 tokens, 128 new tokens, no early stop,
at batch 1 and 8; the best of several repeats is kept (the machine is shared). "decode tok/s" excludes
the prefill: (time(128 new) - time(1 new)) / 127 steps * batch.
Part 2: target and draft (~4x fewer parameters) are trained for a few hundred steps on the world
corpus (or the target comes from --run), then 128 tokens are generated from held-out world prompts
with plain decoding and with speculative decoding (greedy and sampled).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


from lmstack.machine import run_benchmark
from lmstack.generate import GenerationConfig, generate
from lmstack.model import ModelConfig, Transformer


CLOCK = time.perf_counter  # --clock cpu switches to process CPU time (a shared, overloaded machine)


def best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def world_texts(run: Path | None) -> list[str]:
    if run is not None and (run / "data" / "train.jsonl").exists():
        import json

        return [json.loads(line)["text"] for line in (run / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()]
    from lmstack.data.world import WorldConfig, build_world

    return [d["text"] for d in build_world(WorldConfig(), seed=0).pretrain_docs()]


def get_tokenizer(run: Path | None, texts: list[str], vocab: int):
    from lmstack.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

    if run is not None and (run / "tokenizer" / "tokenizer.json").exists():
        return Tokenizer.load(run / "tokenizer" / "tokenizer.json")
    return train_tokenizer(texts, vocab, special_tokens=list(SPECIAL_TOKENS), progress=False)


# ------------------------------------------------------------------ part 1: throughput vs HF

def throughput(tok, repeats: int) -> list[dict]:
    import transformers

    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, max_seq_len=256)
    ours = Transformer(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        from lmstack.model.hf import export_hf

        export_hf(ours, d)
        hf = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in (1, 8):
        prompts = torch.randint(0, tok.n_regular, (batch, 64), generator=g)
        ids_list = [p.tolist() for p in prompts]

        def run_ours(n):
            return generate(ours, tok, ids_list, GenerationConfig(max_new_tokens=n, ignore_eos=True))

        def run_hf(n):
            gc = transformers.GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                               pad_token_id=tok.pad_id, bos_token_id=None)
            with torch.inference_mode():
                return hf.generate(prompts, attention_mask=torch.ones_like(prompts), generation_config=gc)

        # same tokens from both (sanity check that the benchmark compares like with like)
        same = [g.token_ids for g in run_ours(16)] == run_hf(16)[:, 64:].tolist()
        run_ours(4), run_hf(4)  # warm-up
        # interleaved repeats, best of each: other processes and the shared L3 cache (the ~28 MB of
        # weights hardly fit) slow whichever run they hit, so each side gets its least disturbed run
        t_ours_128 = t_hf_128 = t_ours_1 = t_hf_1 = math.inf
        for _ in range(repeats):
            t_ours_128 = min(t_ours_128, best_time(lambda: run_ours(128), 1))
            t_hf_128 = min(t_hf_128, best_time(lambda: run_hf(128), 1))
            t_ours_1 = min(t_ours_1, best_time(lambda: run_ours(1), 1))
            t_hf_1 = min(t_hf_1, best_time(lambda: run_hf(1), 1))
        rows.append({
            "batch": batch,
            "ours_e2e": batch * 128 / t_ours_128, "hf_e2e": batch * 128 / t_hf_128,
            "ours_decode": batch * 127 / max(t_ours_128 - t_ours_1, 1e-9),
            "hf_decode": batch * 127 / max(t_hf_128 - t_hf_1, 1e-9),
            "same_tokens": same,
        })
    return rows, ours.num_params()


# ------------------------------------------------------------------ part 2: speculative decoding

def train_lm(model, data: torch.Tensor, steps: int, lr: float, seq: int = 128, batch: int = 8, seed: int = 0):
    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    model.train()
    bar = tqdm(range(steps), desc=f"train {model.num_params() / 1e6:.1f}M", file=sys.stderr, leave=False)
    for step in bar:
        for group in opt.param_groups:  # linear warmup, cosine decay
            warm = min(1.0, (step + 1) / 20)
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        loss = model(x, targets=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return float(loss.item())


def speculative(tok, texts: list[str], run: Path | None, steps: int, n_prompts: int, gamma: int) -> dict:
    from lmstack.model import load_pretrained

    held_out, train_texts = texts[:n_prompts], texts[n_prompts:]
    data = torch.tensor([t for doc in train_texts for t in [tok.bos_id] + tok.encode(doc)], dtype=torch.long)
    torch.manual_seed(0)
    info = {}
    if run is not None and (run / "checkpoints" / "pretrain" / "model.safetensors").exists():
        target = load_pretrained(run / "checkpoints" / "pretrain").eval()
        info["target_loss"] = float("nan")
    else:
        # 4 layers: trains to a useful loss in a few hundred CPU steps (8 layers lag far behind)
        target = Transformer(ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, n_layers=4, max_seq_len=256))
        info["target_loss"] = train_lm(target, data, steps, 2e-3)
    tc = target.config
    # ~4x fewer parameters, and shallow: on a CPU a decode step costs per layer more than per FLOP,
    # so a quarter of the depth (at 3/4 of the width) makes the draft step ~4x cheaper
    width = max(tc.n_heads * 2, (tc.d_model * 3 // 4) // tc.n_heads * tc.n_heads)
    draft = Transformer(ModelConfig.preset("llama-style", vocab_size=tc.vocab_size, d_model=width,
                                           n_layers=max(1, tc.n_layers // 4), n_heads=tc.n_heads,
                                           n_kv_heads=tc.n_kv_heads, max_seq_len=tc.max_seq_len))
    info["draft_loss"] = train_lm(draft, data, steps, 2e-3, seed=1)
    info["param_ratio"] = target.num_params() / draft.num_params()
    prompts = [[tok.bos_id] + tok.encode(t)[:32] for t in held_out]
    for mode, temp in (("greedy", 0.0), ("sample", 1.0)):
        base = GenerationConfig(strategy="greedy" if temp == 0 else "sample", temperature=temp if temp else 1.0,
                                max_new_tokens=128, ignore_eos=True, seed=0)
        spec = GenerationConfig(strategy="speculative", temperature=temp, num_draft_tokens=gamma, max_new_tokens=128,
                                ignore_eos=True, seed=0)
        t0 = CLOCK()
        plain_out = [generate(target, tok, [p], base)[0] for p in prompts]
        t_plain = CLOCK() - t0
        t0 = CLOCK()
        spec_out = [generate(target, tok, [p], spec, draft_model=draft)[0] for p in prompts]
        t_spec = CLOCK() - t0
        n_tok = sum(len(g.token_ids) for g in plain_out)
        info[mode] = {
            "plain_tok_s": n_tok / t_plain, "spec_tok_s": sum(len(g.token_ids) for g in spec_out) / t_spec,
            "speedup": t_plain / t_spec,
            "acceptance": sum(g.extra["accepted"] for g in spec_out) / max(1, sum(g.extra["drafted"] for g in spec_out)),
            "identical": all(a.token_ids == b.token_ids for a, b in zip(plain_out, spec_out)) if temp == 0 else None,
        }
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and training steps")
    p.add_argument("--run", type=Path, help="a finished run: its tokenizer, world text and pretrain checkpoint")
    p.add_argument("--steps", type=int, help="training steps per model for part 2 (default 300, quick 80)")
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per speculative round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--only", choices=("throughput", "speculative"), help="run one part only")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time (steadier when other jobs share the CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    repeats = 3 if args.quick else 6
    steps = args.steps or (80 if args.quick else 300)
    texts = world_texts(args.run)
    tok = get_tokenizer(args.run, texts, 2048)

    rows = info = None
    if args.only != "speculative":
        rows, n_params = throughput(tok, repeats)
        print(f"\n## Greedy decoding throughput, CPU ({torch.get_num_threads()} threads, {args.clock} clock), "
              f"{n_params / 1e6:.1f}M-param llama-style model, prompt 64, 128 new tokens\n")
        print("| batch | lmstack tok/s (e2e) | HF generate tok/s (e2e) | ratio | lmstack decode tok/s | HF decode tok/s | decode ratio | same tokens |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {r['ours_e2e']:.0f} | {r['hf_e2e']:.0f} | {r['ours_e2e'] / r['hf_e2e']:.2f}x | "
                  f"{r['ours_decode']:.0f} | {r['hf_decode']:.0f} | {r['ours_decode'] / r['hf_decode']:.2f}x | {r['same_tokens']} |")
    if args.only != "throughput":
        n_prompts = 3 if args.quick else 6
        info = speculative(tok, texts, args.run, steps, n_prompts, args.gamma)
        print(f"\n## Speculative decoding on the world corpus ({args.clock} clock; draft {info['param_ratio']:.1f}x fewer params, "
              f"gamma={args.gamma}, {steps} training steps, {n_prompts} held-out prompts x 128 tokens)\n")
        print(f"final train loss: target {info['target_loss']:.3f}, draft {info['draft_loss']:.3f}\n")
        print("| mode | plain tok/s | speculative tok/s | speedup | acceptance rate | output == plain |")
        print("|---|---|---|---|---|---|")
        for mode in ("greedy", "sample"):
            m = info[mode]
            same = "-" if m["identical"] is None else str(m["identical"])
            print(f"| {mode} | {m['plain_tok_s']:.0f} | {m['spec_tok_s']:.0f} | {m['speedup']:.2f}x | {m['acceptance']:.2f} | {same} |")
    print()
    if rows:
        print(f"result: decode_ratio_vs_hf_batch1={rows[0]['ours_decode'] / rows[0]['hf_decode']:.2f}")
        print(f"result: decode_ratio_vs_hf_batch8={rows[1]['ours_decode'] / rows[1]['hf_decode']:.2f}")
        print(f"result: e2e_ratio_vs_hf_batch1={rows[0]['ours_e2e'] / rows[0]['hf_e2e']:.2f}")
        print(f"result: e2e_ratio_vs_hf_batch8={rows[1]['ours_e2e'] / rows[1]['hf_e2e']:.2f}")
    if info:
        print(f"result: speculative_speedup_greedy={info['greedy']['speedup']:.2f}")
        print(f"result: speculative_speedup_sample={info['sample']['speedup']:.2f}")
        print(f"result: speculative_acceptance_greedy={info['greedy']['acceptance']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
