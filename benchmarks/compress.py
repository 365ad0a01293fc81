"""Compression: every quantization and pruning method on the same model, int8 decoding, GGUF, distillation.

    .venv/bin/python benchmarks/compress.py                       # the default run (runs/speedrun) + a ~20M model
    .venv/bin/python benchmarks/compress.py --run runs/NAME       # another finished run
    .venv/bin/python benchmarks/compress.py --quick --run DIR     # smoke test: few windows, no large model, no timing
    .venv/bin/python benchmarks/compress.py --only methods        # one part: methods | outliers | int8 | gguf | distill | qlora

Part "methods": the run's pretrain checkpoint is compressed with RTN, GPTQ, AWQ (4 and 3 bits, g128 or
g32 for tiny models), 8-bit RTN, SmoothQuant W8A8, NF4, and pruned to 50% with magnitude, Wanda and
SparseGPT (and 2:4). Each row: bits/weight, file size, validation perplexity and bits/byte, KL to
fp32, fact-QA accuracy (--facts N) and batch-1 decode tok/s. Without --quick the same table is made
for a ~20M-parameter model trained briefly on tinyshakespeare (--large-steps).
Part "outliers": the same model with a few activation outlier channels planted by an exact rescaling
(``lmstack.compress.outliers``), the regime AWQ and Wanda are built for: RTN / GPTQ / AWQ at 4 bits and
magnitude / Wanda / SparseGPT at 50%, one table per --outlier-factors value.
Part "int8": batch-1 greedy decode tok/s of the int8 weight-only model against fp32 (fast decode step, kernel
picked per shape by timing unless --int8-mode names one); also for the ~20M model (its weights, 75 MB in fp32, do
not fit in cache, so int8's smaller weights can pay off there).
Part "gguf": file sizes per GGUF type; with llama-cpp-python installed (the `llamacpp` extra), decode tok/s of
llama.cpp and lmstack on the same model: the F32 file against lmstack fp32 and the Q8_0 file against lmstack's
int8 decode path, as ratios (no goal yet); without it the part says so and skips them.
Part "distill": a smaller student trained on equal tokens with and without the teacher (logit KD),
then used as the speculative draft of the teacher: acceptance rate and speed-up.
Part "qlora": QLoRA adapter trained briefly, merged dequantize -> merge -> re-quantize; perplexity change.

Goals (issue 15), printed as result lines: at 4 bits GPTQ and AWQ lose <= 1/2 of RTN's perplexity
increase; at 50% sparsity Wanda and SparseGPT lose <= 1/3 of magnitude's; int8 decode >= 1.5x fp32
with KL < 0.01.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmstack.compress import CompressConfig
from lmstack.machine import run_benchmark
from lmstack.compress.calibrate import calibration_batch
from lmstack.compress.compare import compare_variants, quality_size_plot, rows_markdown
from lmstack.compress.evaluate import compare_models, evaluation_windows
from lmstack.compress.measure import decode_kl, decode_tokens_per_second
from lmstack.model import ModelConfig, Transformer, load_pretrained

REPO = Path(__file__).resolve().parents[1]


def method_variants(group: int) -> list[str]:
    g = f"group_size={group}"
    return [f"quantize=rtn,bits=4,{g}", f"quantize=gptq,bits=4,{g}", f"quantize=gptq,bits=4,{g},act_order=true",
            f"quantize=awq,bits=4,{g}", f"quantize=awq,bits=4,{g},awq_scope=group", f"quantize=rtn,bits=3,{g}", f"quantize=gptq,bits=3,{g},act_order=true",
            f"quantize=awq,bits=3,{g}", "quantize=rtn,bits=8,group_size=0,symmetric=true", "quantize=smoothquant",
            "quantize=nf4", "prune=magnitude,sparsity=0.5", "prune=wanda,sparsity=0.5", "prune=sparsegpt,sparsity=0.5",
            *([f"prune=sparsegpt,sparsity=0.5,block_size={group}"] if group != 128 else []),  # mask block = group
            "prune=wanda,n_m=2:4", "prune=sparsegpt,n_m=2:4", "structured=ffn,structured_ratio=0.25",
            "structured=heads,structured_ratio=0.5", "structured=layers,structured_ratio=0.25",
            f"structured=ffn,structured_ratio=0.25,quantize=gptq,bits=4,{g}"]


def group_for(model) -> int:
    """g128 as in the papers; g32 for the tiny models (d_model < 512), whose rows are only 64-704 long."""
    return 128 if model.config.d_model >= 512 else 32


def load_run(run: Path):
    from lmstack.data.shards import read_tokens
    from lmstack.eval.bpb import bytes_per_token_from_meta
    from lmstack.tokenizer import Tokenizer

    ckpt = run / "checkpoints" / "pretrain"
    if not (ckpt / "config.json").exists():
        sys.exit(f"{ckpt}: no pretrain checkpoint; run `lmstack run` first (or pass --run DIR)")
    return (load_pretrained(ckpt).eval(), Tokenizer.load(run / "tokenizer" / "tokenizer.json"),
            read_tokens(run / "shards" / "train.bin"), read_tokens(run / "shards" / "val.bin"),
            bytes_per_token_from_meta(run / "shards" / "meta.json", "val"))


def goal_ratios(rows, prefix: str) -> list[str]:
    """result lines: each method's perplexity increase relative to its baseline's."""
    lines = []
    for measure, by in (("loss", {r.label: r.ppl - rows[0].ppl for r in rows}), ("kl", {r.label: r.kl for r in rows})):
        for bits in (4, 3):
            rtn = next((v for k, v in by.items() if k.startswith(f"rtn w{bits} ")), None)
            for m in ("gptq", "awq"):
                for suffix, tag in (("", ""), ("_act_order", "act-order"), ("_shared_input", "shared-input")):
                    v = next((v for k, v in by.items() if k.startswith(f"{m} w{bits} ")
                              and (k.endswith(tag) if tag else not k.endswith(("act-order", "shared-input")))), None)
                    if rtn and v is not None and rtn > 0:
                        lines.append(f"result: {prefix}{m}{suffix}_w{bits}_{measure}_vs_rtn={v / rtn:.3f}")
        mag = by.get("magnitude 50%")
        for m, label in (("wanda", "wanda 50%"), ("sparsegpt", "sparsegpt 50%"), ("sparsegpt_block32", "sparsegpt 50% mask-block 32")):
            if mag and mag > 0 and label in by:
                lines.append(f"result: {prefix}{m}_50_{measure}_vs_magnitude={by[label] / mag:.3f}")
    return lines


def part_methods(model, tok, train, val, bpt, args, title: str, prefix: str) -> list[str]:
    seq = min(model.config.max_seq_len, 256)
    calib = calibration_batch(train, args.calib, seq, seed=0)
    windows = evaluation_windows(val, seq, args.windows)
    facts = None
    facts_path = args.run / "data" / "world" / "facts_eval.jsonl" if args.run else None
    if args.facts and facts_path is not None and facts_path.exists() and prefix == "":
        from lmstack.eval.facts import read_facts
        facts = random.Random(0).sample(read_facts(facts_path), args.facts)
    base = CompressConfig(group_size=group_for(model), calib_samples=args.calib)
    rows = compare_variants(model, base, method_variants(group_for(model)), calib, windows, bpt, tokenizer=tok,
                            facts=facts, speed_tokens=0 if args.quick else 64, log=lambda s: print(f"  {s}", file=sys.stderr))
    print(f"\n## {title}\n\n{rows_markdown(rows)}\n")
    plot = quality_size_plot(rows, Path(args.out) / f"compress_{prefix or 'run'}quality_vs_size.png", title)
    print(f"plot: {plot}")
    return goal_ratios(rows, prefix)


def part_outliers(model, train, val, bpt, args) -> list[str]:
    """The activation-aware methods where their premise holds: the run's model with outlier channels planted by
    an exact rescaling (``compress.outliers``; same function, logits within float error), at each factor."""
    from lmstack.compress.outliers import plant_outlier_channels

    seq, g = min(model.config.max_seq_len, 256), group_for(model)
    calib = calibration_batch(train, args.calib, seq, seed=0)
    windows = evaluation_windows(val, seq, args.windows)
    variants = [f"quantize=rtn,bits=4,group_size={g}", f"quantize=gptq,bits=4,group_size={g}",
                f"quantize=awq,bits=4,group_size={g}", "prune=magnitude,sparsity=0.5", "prune=wanda,sparsity=0.5",
                "prune=sparsegpt,sparsity=0.5"]
    lines = []
    for factor in args.outlier_factors:
        planted = copy.deepcopy(model)
        plant_outlier_channels(planted, args.outlier_channels, factor)
        with torch.no_grad():
            drift = (planted(windows[:4]).logits - model(windows[:4]).logits).abs().max().item()
        rows = compare_variants(planted, CompressConfig(group_size=g, calib_samples=args.calib), variants, calib, windows,
                                bpt, log=lambda s: print(f"  {s}", file=sys.stderr))
        print(f"\n## {args.outlier_channels} outlier channels x{factor:g} per site planted in {args.run.name} "
              f"(max logit change from the rescaling {drift:.1e})\n\n{rows_markdown(rows)}\n")
        lines += goal_ratios(rows, f"outlier{factor:g}_")
    return lines


def part_int8(model, tok, val, args, prefix: str = "") -> list[str]:
    from lmstack.compress.int8 import MODE, int8_weight_only, kernel_choices

    int8 = int8_weight_only(copy.deepcopy(model))
    seq = min(model.config.max_seq_len, 256)
    windows = evaluation_windows(val, seq, args.windows)
    kl = compare_models(int8, model, windows)["kl"]
    step_kl = sum(decode_kl(model, int8, w[None, :seq]) for w in windows[:4]) / min(4, len(windows))
    lines = [f"result: {prefix}int8_kl={step_kl:.5f}", f"result: {prefix}int8_forward_kl={kl:.5f}"]
    choices = {f"{o}x{i}": k for (o, i, _, _), k in kernel_choices().items() if MODE == "auto"}
    print(f"\n## int8 decoding, {'~20M' if prefix else 'default'} model (batch 1; int8 weights, kernel mode {MODE}"
          f"{': ' + str(choices) if choices else ''})\n\nKL(fp32 || int8) on validation: forward (weight-only) "
          f"{kl:.5f}; fast decode step {step_kl:.5f}")
    if args.quick:
        print("(--quick: speed not measured)")
        return lines
    prompt = [tok.bos_id] + list(map(int, val[:31]))
    # interleaved, best of 3: a burst of load elsewhere hits both alike
    fp32_speed = int8_speed = 0.0
    for _ in range(3):
        fp32_speed = max(fp32_speed, decode_tokens_per_second(model, tok, prompt, 128))
        int8_speed = max(int8_speed, decode_tokens_per_second(int8, tok, prompt, 128))
    print(f"\n| model | decode tok/s |\n|---|---|\n| fp32 | {fp32_speed:.0f} |\n| int8 ({MODE}) | {int8_speed:.0f} |\n")
    return lines + [f"result: {prefix}int8_decode_speedup={int8_speed / fp32_speed:.3f}"]


def part_gguf(model, tok, val, args) -> list[str]:
    from lmstack.export.gguf import FILE_TYPES, export_gguf

    lines = []
    print("\n## GGUF export\n\n| type | file size |\n|---|---|")
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for kind in FILE_TYPES:
            paths[kind] = export_gguf(model, tok, Path(d) / f"model-{kind}.gguf", kind)
            print(f"| {kind} | {paths[kind].stat().st_size / 1024:.0f} KiB |")
        try:
            import llama_cpp
        except ImportError:
            print("\nllama-cpp-python is not installed: no llama.cpp speed comparison "
                  "(pip install -c constraints.txt -e '.[llamacpp]' builds llama.cpp from source, 10+ min)")
            return lines
        if args.quick:
            llama_cpp.Llama(model_path=str(paths["q8_0"]), n_ctx=model.config.max_seq_len, verbose=False)
            print("\n(--quick: llama.cpp loads the Q8_0 file; speed not measured)")
            return lines
        lines += llama_cpp_decode_table(llama_cpp, model, tok, paths, [tok.bos_id] + list(map(int, val[:31])))
    return lines


def llama_cpp_tokens_per_second(llm, prompt: list[int], new_tokens: int) -> float:
    """Greedy batch-1 decoding through llama.cpp, timed like ``decode_tokens_per_second``: prompt + new tokens,
    after a warm-up run."""
    for n_new in (4, new_tokens):
        llm.reset()
        t0 = time.perf_counter()
        n = 0
        for _ in llm.generate(prompt, temp=0.0, reset=True):
            n += 1
            if n >= n_new:
                break
        seconds = time.perf_counter() - t0
    return n / max(seconds, 1e-9)


def llama_cpp_decode_table(llama_cpp, model, tok, paths: dict, prompt: list[int], new_tokens: int = 128) -> list[str]:
    """Decode tok/s of lmstack and llama.cpp on the same weights, with the same thread count: the F32 file
    against lmstack fp32, the Q8_0 file against lmstack's int8 decode path."""
    from lmstack.compress.int8 import int8_weight_only

    threads = torch.get_num_threads()
    pairs = (("f32", "F32 / fp32", model), ("q8_0", "Q8_0 / int8", int8_weight_only(copy.deepcopy(model))))
    print(f"\n## Decode speed: lmstack vs llama.cpp on the same model (batch 1, greedy, {threads} threads, "
          f"{len(prompt)}-token prompt + {new_tokens} tokens)\n\n| weights | llama.cpp tok/s | lmstack tok/s | lmstack / llama.cpp |"
          "\n|---|---|---|---|")
    lines = []
    for kind, label, ours_model in pairs:
        llm = llama_cpp.Llama(model_path=str(paths[kind]), n_ctx=model.config.max_seq_len, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
        theirs = max(llama_cpp_tokens_per_second(llm, prompt, new_tokens) for _ in range(3))
        ours = max(decode_tokens_per_second(ours_model, tok, prompt, new_tokens) for _ in range(3))
        print(f"| {label} | {theirs:.0f} | {ours:.0f} | {ours / theirs:.3f} |")
        lines.append(f"result: lmstack_vs_llama_cpp_decode_{kind}={ours / theirs:.3f}")
    return lines


def student_config(teacher_cfg: ModelConfig) -> ModelConfig:
    return teacher_cfg.replace(d_model=max(teacher_cfg.d_model // 2, 32), n_layers=max(teacher_cfg.n_layers // 2, 1),
                               ffn_hidden=0, head_dim=0, n_heads=4, n_kv_heads=2)


def part_distill(model, tok, train, val, bpt, args) -> list[str]:
    from lmstack.compress.distill import DistillConfig, distill, speculative_report, teacher_sequences

    seq = min(model.config.max_seq_len, 128)
    steps = args.distill_steps or (20 if args.quick else 400)
    windows = evaluation_windows(val, seq, args.windows)
    rows, students = [], {}
    # sequence-level KD data: the teacher continues prompts taken from the training shard
    n_seqs = 16 if args.quick else 256
    rng = np.random.default_rng(1)
    prompts_kd = [[int(t) for t in train[s:s + 16]] for s in rng.integers(0, len(train) - 16, size=n_seqs)]
    kd_rows = teacher_sequences(model, tok, prompts_kd, max_new_tokens=seq - 15, seq_len=seq, temperature=1.0)
    for label, alpha, data in (("student, no teacher", 0.0, train), ("student, logit KD (forward KL, T=2)", 0.5, train),
                               ("student, sequence-level KD (teacher samples)", 0.0, kd_rows)):
        torch.manual_seed(0)
        student = Transformer(student_config(model.config))
        distill(student, model, data, DistillConfig(steps=steps, batch_size=8, seq_len=seq, alpha=alpha, temperature=2.0),
                log=lambda s: print(f"  {s}", file=sys.stderr), pad_id=tok.pad_id)
        stats = compare_models(student, model, windows)
        rows.append((label, student.num_params(), stats["ppl"], stats["loss"] / math.log(2) / bpt, stats["kl"]))
        students[label] = student
    teacher_ppl = compare_models(model, None, windows)["ppl"]
    print(f"\n## Distillation ({steps} steps x 8 x {seq} tokens each; teacher ppl {teacher_ppl:.3f})\n")
    print("| model | params | val ppl | bits/byte | KL to teacher |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:,} | {r[2]:.3f} | {r[3]:.4f} | {r[4]:.4f} |")
    lines = [f"result: logit_kd_ppl_gain={rows[0][2] - rows[1][2]:.3f}",
             f"result: sequence_kd_ppl_gain={rows[0][2] - rows[2][2]:.3f}"]
    prompts = [[tok.bos_id] + list(map(int, val[i * 40:i * 40 + 24])) for i in range(2 if args.quick else 8)]
    print("\n| draft | acceptance | speed-up (greedy, gamma 4) |\n|---|---|---|")
    for key, (label, _, _, _, _) in zip(("undistilled", "logit_kd", "sequence_kd"), rows):
        rep = speculative_report(model, students[label], tok, prompts, max_new_tokens=16 if args.quick else 64)
        print(f"| {label} | {rep['acceptance_rate']:.3f} | {rep['speedup']:.2f}x |")
        lines.append(f"result: draft_{key}_acceptance={rep['acceptance_rate']:.3f}")
        if not args.quick:
            lines.append(f"result: draft_{key}_speedup={rep['speedup']:.3f}")
    return lines


def part_qlora(model, train, val, args) -> list[str]:
    from lmstack.compress.distill import DistillConfig, distill
    from lmstack.compress.qlora import attach_qlora, qlora_merge_report

    tuned = copy.deepcopy(model)
    attach_qlora(tuned, r=8, alpha=16)
    seq = min(model.config.max_seq_len, 128)
    distill(tuned, None, train, DistillConfig(steps=10 if args.quick else 100, batch_size=8, seq_len=seq, alpha=0.0, lr=2e-3),
            log=lambda s: print(f"  {s}", file=sys.stderr))
    rep = qlora_merge_report(tuned, evaluation_windows(val, seq, args.windows))
    print("\n## QLoRA merge (NF4 base, r=8)\n\n| form | val ppl | KL to unmerged |\n|---|---|---|")
    print(f"| adapter unmerged on NF4 base | {rep['ppl_unmerged']:.3f} | 0 |")
    print(f"| merged into fp32 | {rep['ppl_merged_dense']:.3f} | {rep['kl_merged_dense']:.5f} |")
    print(f"| merged, re-quantized to NF4 | {rep['ppl_merged_requantized']:.3f} | {rep['kl_merged_requantized']:.5f} |")
    return [f"result: qlora_requant_ppl_change={rep['ppl_change_requantized']:.4f}"]


def large_model(args):
    """~20M parameters (d 512, 6 layers, vocab 2048) trained briefly on tinyshakespeare; cached under
    ``<out>/compress_large_<steps>/`` (model + tokenizer) so later runs skip the training."""
    from lmstack.compress.distill import DistillConfig, distill
    from lmstack.model.io import save_pretrained
    from lmstack.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

    text = (REPO / "data" / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    cache = Path(args.out) / f"compress_large_{args.large_steps}"
    if (cache / "model" / "config.json").exists() and (cache / "tokenizer.json").exists():
        tok, model = Tokenizer.load(cache / "tokenizer.json"), load_pretrained(cache / "model")
        print(f"large model: {model.num_params():,} parameters, cached in {cache}", file=sys.stderr)
    else:
        tok = train_tokenizer([text], 2048, special_tokens=list(SPECIAL_TOKENS), progress=False)
        model = None
    ids = np.array(tok.encode(text), dtype=np.int64)
    split = int(0.9 * len(ids))
    if model is None:
        cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=512, n_layers=6, n_heads=8,
                                 n_kv_heads=4, max_seq_len=256)
        torch.manual_seed(0)
        model = Transformer(cfg)
        print(f"large model: {model.num_params():,} parameters, {args.large_steps} steps on tinyshakespeare", file=sys.stderr)
        distill(model, None, ids[:split], DistillConfig(steps=args.large_steps, batch_size=8, seq_len=128, alpha=0.0,
                                                        lr=2e-3), log=lambda s: print(f"  {s}", file=sys.stderr))
        cache.mkdir(parents=True, exist_ok=True)
        tok.save(cache / "tokenizer.json")
        save_pretrained(model, cache / "model")
    bpt = len(text[int(0.9 * len(text)):].encode("utf-8")) / max(len(ids) - split, 1)
    return model.eval(), tok, ids[:split], ids[split:], bpt


def unigram_check(model, tok, train, val, windows: int) -> list[str]:
    """The model's validation loss against a unigram model of the training split (add-one smoothed): a
    briefly trained model that sits near the unigram loss has not learnt context yet."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=tok.vocab_size).astype(np.float64) + 1.0
    unigram = float(-np.log(counts / counts.sum())[np.asarray(val, dtype=np.int64)].mean())
    loss = compare_models(model, None, evaluation_windows(val, min(model.config.max_seq_len, 256), windows))["loss"]
    print(f"\n~20M model: validation loss {loss:.3f} (ppl {math.exp(loss):.1f}); unigram baseline {unigram:.3f} "
          f"(ppl {math.exp(unigram):.1f})")
    return [f"result: large_val_loss={loss:.4f}", f"result: large_unigram_loss={unigram:.4f}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/speedrun"), help="finished run (default runs/speedrun)")
    p.add_argument("--quick", action="store_true", help="smoke test: fewer windows, no large model, no timing")
    p.add_argument("--only", choices=("methods", "outliers", "int8", "gguf", "distill", "qlora", "large"))
    p.add_argument("--outlier-factors", type=float, nargs="+", default=[5.0, 20.0],
                   help="part outliers: planted channels are this many times larger (one table per factor)")
    p.add_argument("--outlier-channels", type=int, default=4, help="part outliers: channels planted per site")
    p.add_argument("--calib", type=int, default=0, help="calibration windows (default 128, quick 8)")
    p.add_argument("--windows", type=int, default=0,
                   help="validation windows of 256 tokens (default 256, capped by the shard: all of the default run's "
                        "209; quick 4). Small perplexity changes need them all: on 64 the ratios move by 2x")
    p.add_argument("--facts", type=int, default=0, help="fact-QA questions per row (0 = skip)")
    p.add_argument("--distill-steps", type=int, default=0)
    p.add_argument("--large-steps", type=int, default=800,
                   help="training steps (x 8 x 128 tokens, ~2.7 epochs of tinyshakespeare) of the ~20M model; trained "
                        "once and cached in --out/compress_large_STEPS (10-20 CPU minutes)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--int8-threads", type=int, default=1, help="threads per int8 GEMM call (0 = torch's setting)")
    p.add_argument("--int8-mode", choices=("auto", "qlinear", "dynamic", "weight_only", "dense"), default="auto",
                   help="int8 decode kernel (auto: time them per shape, keep the fastest)")
    p.add_argument("--out", default="benchmarks/out", help="where plots go")
    args = p.parse_args(argv)
    args.calib = args.calib or (8 if args.quick else 128)
    args.windows = args.windows or (4 if args.quick else 256)
    if args.threads:
        torch.set_num_threads(args.threads)
    import lmstack.compress.int8 as int8_settings
    int8_settings.THREADS, int8_settings.MODE = args.int8_threads, args.int8_mode
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model, tok, train, val, bpt = load_run(args.run)
    print(f"model: {args.run}/checkpoints/pretrain, {model.num_params():,} parameters; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    results = []
    parts = [args.only] if args.only else ["methods", "outliers", "int8", "gguf", "distill", "qlora", "large"]
    if "methods" in parts:
        results += part_methods(model, tok, train, val, bpt, args, f"methods on {args.run.name}", "")
    if "outliers" in parts:
        results += part_outliers(model, train, val, bpt, args)
    if "int8" in parts:
        results += part_int8(model, tok, val, args)
    if "gguf" in parts:
        results += part_gguf(model, tok, val, args)
    if "distill" in parts:
        results += part_distill(model, tok, train, val, bpt, args)
    if "qlora" in parts:
        results += part_qlora(model, train, val, args)
    if "large" in parts and not args.quick:
        big, big_tok, big_train, big_val, big_bpt = large_model(args)
        results += unigram_check(big, big_tok, big_train, big_val, args.windows)
        results += part_int8(big, big_tok, big_val, args, "large_")
        results += part_methods(big, big_tok, big_train, big_val, big_bpt, args, "methods on the ~20M tinyshakespeare model",
                                "large_")
    print()
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
