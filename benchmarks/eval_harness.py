"""lmstack eval against lm-evaluation-harness on the same multiple-choice task and the same weights.

The run's checkpoint is scored by ``lmstack.eval`` directly and, after ``export_hf``, by ``lm_eval.simple_evaluate``
(HFLM, float32, <|bos|> first) on a local YAML task over the same JSONL. The table gives both accuracies, the
largest per-choice log-likelihood difference and the wall time of each.

    .venv/bin/python benchmarks/eval_harness.py [--quick] [--run runs/speedrun] [--checkpoint sft] [--limit N]

Without a run directory (or with --quick and none) a tiny random model and tokenizer stand in.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lmstack.machine import run_benchmark

TASK_YAML = """task: lmstack_bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def tiny_setup():
    """A random llama-style model, a small BPE and a handful of made-up questions."""
    import torch

    from lmstack.model import ModelConfig, Transformer
    from lmstack.tokenizer import train_tokenizer

    text = "Question: Who rode north? Answer: the king. The queen stayed in the city of Valmora. " * 30
    tok = train_tokenizer([text], 300, progress=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=64, n_layers=2,
                                           n_heads=4, n_kv_heads=2, max_seq_len=64, init_std=0.2))
    docs = [{"prompt": f"Question: Who rode {w}?\nAnswer:", "choices": ["the king", "the queen", "Valmora"], "gold": i % 3}
            for i, w in enumerate(["north", "south", "home", "away", "west", "east"])]
    return model.eval(), tok, docs


def hf_with_bos(model, tok, directory: Path) -> Path:
    """export_hf plus an HF tokenizer that prepends <|bos|> (lmstack's export adds no post-processor)."""
    from lmstack.model.hf import export_hf
    from lmstack.tokenizer import add_bos_post_processor

    export_hf(model, directory, tokenizer=tok)
    add_bos_post_processor(directory)
    return directory


def run_lm_eval(hf_dir: Path, data: Path, work: Path, batch_size: int) -> tuple[dict, list, float]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    (work / "tasks").mkdir(exist_ok=True)
    (work / "tasks" / "bench.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    t0 = time.perf_counter()
    lm = HFLM(pretrained=str(hf_dir), tokenizer=str(hf_dir), device="cpu", batch_size=batch_size, dtype="float32",
              add_bos_token=True)
    out = simple_evaluate(model=lm, tasks=["lmstack_bench_mc"], num_fewshot=0, log_samples=True, bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(work / "tasks")))
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"]["lmstack_bench_mc"], key=lambda s: s["doc_id"])
    return out["results"]["lmstack_bench_mc"], samples, seconds


def main(argv: list[str] | None = None) -> int:
    from lmstack.eval.backends import LocalBackend, load_backend
    from lmstack.eval.builtin import world_facts_mc, write_jsonl
    from lmstack.eval.harness import evaluate_task
    from lmstack.eval.tasks import TaskSpec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 items (or the tiny random model without a run)")
    ap.add_argument("--run", type=Path, default=Path("runs/speedrun"))
    ap.add_argument("--checkpoint", default="sft")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    spec = TaskSpec(name="lmstack_bench_mc", type="multiple_choice", template="{prompt}", choices="choices", gold="gold")
    if (args.run / "checkpoints").is_dir():
        backend = load_backend(str(args.run), args.checkpoint, batch_size=args.batch_size)
        docs = world_facts_mc(args.run / "data" / "world", 1234, in_document=False)[1]
        source = f"{args.run} ({args.checkpoint}), world_facts_mc 0-shot"
    else:
        model, tok, docs = tiny_setup()
        backend = LocalBackend(model, tok, batch_size=args.batch_size)
        source = "tiny random model (no run directory)"
    limit = 20 if args.quick and not args.limit else args.limit
    docs = docs[:limit] if limit else docs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_jsonl(work / "data.jsonl", docs)
        t0 = time.perf_counter()
        ours = evaluate_task(spec, backend, docs)
        ours_seconds = time.perf_counter() - t0
        hf_dir = hf_with_bos(backend.model, backend.tokenizer, work / "hf")
        theirs, samples, their_seconds = run_lm_eval(hf_dir, data, work, args.batch_size)
    diff = max(abs(a - float(r[0])) for it, s in zip(ours["items"], samples)
               for a, r in zip(it["loglikelihoods"], s["filtered_resps"]))
    n_choices = sum(len(d["choices"]) for d in docs)
    print(f"\nsource: {source}; {len(docs)} questions, {n_choices} choices\n")
    print("| implementation | acc | acc_norm | seconds | choices/s |\n|---|---:|---:|---:|---:|")
    print(f"| lmstack eval | {ours['metrics']['acc']['value']:.4f} | {ours['metrics']['acc_norm']['value']:.4f} | "
          f"{ours_seconds:.2f} | {n_choices / ours_seconds:.0f} |")
    print(f"| lm-eval (HF transformers) | {theirs['acc,none']:.4f} | {theirs['acc_norm,none']:.4f} | "
          f"{their_seconds:.2f} | {n_choices / their_seconds:.0f} |")
    print(f"\nlargest per-choice log-likelihood difference: {diff:.2e}; lm-eval's seconds include loading the HF model "
          "and building the task (datasets), lmstack's only the scoring")
    print(f"result: acc_equal={int(abs(ours['metrics']['acc']['value'] - theirs['acc,none']) < 1e-12)}")
    print(f"result: max_loglik_diff={diff:.3e}")
    print(f"result: lmstack_seconds={ours_seconds:.2f}")
    print(f"result: lm_eval_seconds={their_seconds:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
