"""The single entry point: ``lmstack <command> ...``.

    lmstack run [--recipe R] [--name N] [--set k=v ...]     the whole pipeline
    lmstack <stage> --run DIR [--recipe R] [--set k=v ...]   one stage on an existing run dir
    lmstack report DIR                                       re-render report.md
    lmstack chat RUN_OR_CHECKPOINT / lmstack generate CKPT   talk to a trained model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmstack import __version__
from lmstack.config import ConfigError
from lmstack.pipeline import DEFAULT_RECIPE, STAGES, Recipe, is_main_process, run_pipeline, run_stage
from lmstack.report import summary_table
from lmstack.runs import RunDir

# Commands implemented in other packages: name -> (module, function, one-line help).
DELEGATED = {
    "chat": ("lmstack.generate.cli", "chat_main", "multi-turn chat with a trained model (streams tokens, slash commands)"),
    "generate": ("lmstack.generate.cli", "generate_main", "plain text completion from a checkpoint"),
    "export": ("lmstack.export.cli", "main", "export a checkpoint for another runtime (gguf: llama.cpp; f32|f16|q8_0|q4_0)"),
    "multimodal": ("lmstack.multimodal.cli", "main", "CLIP, image-to-text and speech-to-text on generated data (all|clip|vlm|stt|describe)"),
    "hf": ("lmstack.model.hf", "main", "export a checkpoint to / import one from the HF transformers format"),
    "tokenize": ("lmstack.tokenizer.cli", "main", "train / encode / export a tokenizer outside a run (train|encode|export)"),
    "serve": ("lmstack.serve.cli", "main", "OpenAI-compatible server: continuous batching, paged KV cache, web chat"),
    "world": ("lmstack.data.world.cli", "main", "print or write the synthetic bilingual world (sizes via --set)"),
    "rag": ("lmstack.apps.cli", "rag_main", "document index (BM25 / dense / hybrid) and answers with [n] citations"),
    "agent": ("lmstack.apps.cli", "agent_main", "ReAct agent with calculator, knowledge-graph, search and date tools"),
    "kg": ("lmstack.apps.cli", "kg_main", "the world as a knowledge graph: build, query, answer multi-hop questions"),
    "eval": ("lmstack.eval.cli", "main", "evaluate a run/checkpoint/HF dir/server on declared tasks (MC, generate, perplexity)"),
    "experiment": ("lmstack.experiments.cli", "main", "run an experiment (or `all`): the notes' claims measured; writes report.md + plots"),
}


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help=f"recipe TOML (default: {DEFAULT_RECIPE}, or the run dir's own recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set pretrain.steps=200 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmstack",
        description="lmstack: the LLM stack from raw text to a chat model. Each command below is one stage "
                    "or tool; `lmstack run` chains the stages into the full pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmstack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the whole pipeline (default recipe: the CPU speedrun)")
    _add_recipe_args(p)
    p.add_argument("--name", help="run name: the run dir is runs/NAME (default: [run] name of the recipe)")
    p.add_argument("--run-dir", help="explicit run directory (overrides --name)")
    p.add_argument("--stages", help="comma-separated subset of stages to run, in pipeline order")

    for spec in STAGES.values():
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        p.add_argument("--run", required=True, metavar="DIR", help="run directory to read from and write to")
        _add_recipe_args(p)

    p = sub.add_parser("report", help="render report.md of a run directory")
    p.add_argument("run_dir", metavar="DIR")

    for name, (_, _, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _recipe_for_run_dir(run_dir: Path, recipe: str | None, overrides: list[str]) -> Recipe:
    if recipe:
        return Recipe.load(recipe, overrides)
    saved = run_dir / "recipe.json"
    if saved.exists():
        return Recipe.load(None, overrides, raw=json.loads(saved.read_text(encoding="utf-8")))
    return Recipe.load(DEFAULT_RECIPE, overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module, func, _ = DELEGATED[argv[0]]
        import importlib
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            overrides = list(args.overrides)
            if args.name:
                overrides.append(f"run.name={json.dumps(args.name)}")
            recipe = Recipe.load(args.recipe or DEFAULT_RECIPE, overrides)
            only = None
            if args.stages:
                only = [s.strip() for s in args.stages.split(",") if s.strip()]
                bad = [s for s in only if s not in recipe.configs]
                if bad:
                    raise ConfigError(f"--stages: {bad[0]!r} is not a stage of this recipe; "
                                      f"valid: {', '.join(recipe.configs)}")
            run = run_pipeline(recipe, Path(args.run_dir) if args.run_dir else None, only)
            if is_main_process():
                print(summary_table(run))
                print(f"report: {run.path / 'report.md'}")
        elif args.command == "report":
            from lmstack.report import render_report
            run_dir = Path(args.run_dir)
            if not (run_dir / RunDir.MANIFEST).exists():
                raise ConfigError(f"{run_dir}: no manifest.json here; is this a run directory?")
            print(render_report(RunDir(run_dir)))
        else:
            run_dir = Path(args.run)
            recipe = _recipe_for_run_dir(run_dir, args.recipe, args.overrides)
            if args.command not in recipe.configs:
                recipe = Recipe.load(None, args.overrides, raw={**recipe.raw, args.command: recipe.raw.get(args.command, {})})
            run = RunDir(run_dir)
            run_stage(run, recipe, args.command)
            if is_main_process():
                from lmstack.report import render_report
                print(f"report: {render_report(run)}")
    except ConfigError as e:
        print(f"lmstack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmstack: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
