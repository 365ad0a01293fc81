"""``lmstack eval --tasks world_facts,shakespeare_cloze TARGET``: run declared tasks, print a table.

TARGET is a run directory (its checkpoint: --checkpoint pretrain|sft|...; default the most aligned one),
an lmstack checkpoint directory, an HF-format directory (``lmstack hf export``; with --tokenizer) or the
URL of an OpenAI-compatible server (``lmstack serve``; generate tasks only unless it returns prompt
log-probs). Results go to --out (default RUN/eval/harness/ or ./eval-results/) as results.json and
results.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmstack.runs import atomic_write_json, atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    from lmstack.eval.builtin import BUILTIN

    ap = argparse.ArgumentParser(prog="lmstack eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="built-in tasks: " + ", ".join(BUILTIN))
    ap.add_argument("target", help="run dir, checkpoint dir, HF-format dir, or http(s)://server URL")
    ap.add_argument("--tasks", required=True, help="comma-separated task names (built-in or from --task-file)")
    ap.add_argument("--task-file", action="append", default=[], help="TOML/YAML file declaring tasks (repeatable)")
    ap.add_argument("--checkpoint", help="which checkpoint of a run directory (pretrain, sft, dpo, ...)")
    ap.add_argument("--tokenizer", help="lmstack tokenizer.json (needed for HF-format directories)")
    ap.add_argument("--world", help="directory with the world's facts_eval.jsonl / sft_eval.jsonl (default: RUN/data/world)")
    ap.add_argument("--num-fewshot", type=int, help="override every task's num_fewshot")
    ap.add_argument("--limit", type=int, help="evaluate at most N items per task")
    ap.add_argument("--samples", type=int, default=1, help="generate tasks: k samples, majority vote (self-consistency)")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature with --samples > 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="output directory for results.json / results.md")
    return ap


def resolve_tasks(names: list[str], task_files: list[str], world: Path | None):
    """(spec, docs-or-None) per requested name: declared tasks first, then the built-ins."""
    from lmstack.eval.builtin import builtin_task
    from lmstack.eval.tasks import load_task_file

    declared = {s.name: s for f in task_files for s in load_task_file(f)}
    return [(declared[n], None) if n in declared else builtin_task(n, world) for n in names]


def default_world(target: str) -> Path | None:
    path = Path(target)
    for cand in (path / "data" / "world", path.parent.parent / "data" / "world"):
        if (cand / "facts_eval.jsonl").exists():
            return cand
    return None


def main(argv: list[str] | None = None) -> int:
    from lmstack.eval.backends import BackendError, load_backend
    from lmstack.eval.harness import evaluate_task, results_table
    from lmstack.eval.tasks import TaskError
    from lmstack.model.io import CheckpointError

    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    world = Path(args.world) if args.world else default_world(args.target)
    try:
        tasks = resolve_tasks(names, args.task_file, world)
        backend = load_backend(args.target, args.checkpoint, args.tokenizer, args.batch_size, args.device)
        results = [evaluate_task(spec, backend, docs, num_fewshot=args.num_fewshot, limit=args.limit,
                                 samples=args.samples, temperature=args.temperature, seed=args.seed)
                   for spec, docs in tasks]
    except (TaskError, BackendError, CheckpointError, FileNotFoundError) as e:
        print(f"lmstack eval: error: {e}", file=sys.stderr)
        return 2
    table = results_table(results)
    print(table)
    is_run = (Path(args.target) / "checkpoints").is_dir()
    out = Path(args.out) if args.out else (Path(args.target) / "eval" / "harness" if is_run else Path("eval-results"))
    atomic_write_json(out / "results.json", {"target": backend.name, "results": results})
    atomic_write_text(out / "results.md", f"# lmstack eval: {backend.name}\n\n{table}\n")
    print(f"results: {out / 'results.json'}")
    return 0
