"""The stage registry and the pipeline that chains stages over one run directory.

A stage is a module with a ``Config`` dataclass (its recipe table) and a function
``run(ctx: StageContext, cfg: Config) -> StageResult``. The pipeline validates every
stage's config before anything runs, records each stage in the manifest, skips stages that
are already done with the same config, and re-runs an interrupted stage (which resumes
from its own checkpoints where it has them).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmstack.config import (ConfigError, apply_override, config_from_dict, config_to_dict,
                            load_toml, parse_override)
from lmstack import REPO_ROOT
from lmstack.runs import RunDir, atomic_write_text

DEFAULT_RECIPE = "recipes/cpu-speedrun.toml"


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    help: str
    config_attr: str = "Config"
    run_attr: str = "run"

    def load(self) -> tuple[type, Callable]:
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            raise ConfigError(f"stage {self.name!r}: module {self.module} is not available ({e})") from None
        return getattr(mod, self.config_attr), getattr(mod, self.run_attr)


# Order matters: it is the order of the default pipeline.
STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("data", "lmstack.data.stage", "read, clean, PII-mask, dedup and mix the corpus; write the world's SFT/preference/eval sets"),
    StageSpec("tokenizer", "lmstack.tokenizer.stage", "train a BPE tokenizer and encode the corpus into token shards"),
    StageSpec("ngram", "lmstack.ngram.stage", "fit n-gram baselines (MLE, add-k, Good-Turing, backoff, Kneser-Ney) and score them"),
    StageSpec("pretrain", "lmstack.train.stage", "pretrain a decoder-only transformer on the token shards"),
    StageSpec("sft", "lmstack.align.sft", "supervised fine-tuning on chat data (assistant-only loss)"),
    StageSpec("lora", "lmstack.align.sft", "fine-tune with LoRA/QLoRA adapters and save the adapter alone", "LoRAStageConfig", "run_lora"),
    StageSpec("rlaif", "lmstack.align.rlaif", "label preference pairs with an AI judge (the SFT model and a constitution); agreement with the world's labels"),
    StageSpec("reward", "lmstack.align.reward", "train a Bradley-Terry reward model on preference pairs"),
    StageSpec("dpo", "lmstack.align.dpo", "direct preference optimisation (DPO / IPO / hinge) against a frozen reference"),
    StageSpec("ppo", "lmstack.align.ppo", "RLHF with PPO (or GRPO) against the reward model"),
    StageSpec("self_instruct", "lmstack.align.self_instruct", "self-instruct: the SFT model writes and answers new instructions; filter (format, world verifier, reward, ROUGE-L novelty); retrain"),
    StageSpec("reason", "lmstack.align.reason", "reasoning model: SFT on step-by-step traces, then GRPO with a verifiable (rule) reward"),
    StageSpec("apps", "lmstack.apps.stage", "knowledge graph, document index, dense retriever; fine-tune on RAG and tool-use data; measure"),
    StageSpec("distill", "lmstack.compress.distill_stage", "distil a smaller student from a checkpoint (logit or sequence KD) vs the same student without a teacher"),
    StageSpec("compress", "lmstack.compress.stage", "quantize (RTN/GPTQ/AWQ/SmoothQuant/NF4) and/or prune a checkpoint; table of size vs quality"),
]}


@dataclass
class RunConfig:
    """The ``[run]`` table of a recipe."""
    name: str = "speedrun"
    seed: int = 1337
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    runs_dir: str = "runs"


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    report: str = ""


@dataclass
class StageContext:
    run: RunDir
    seed: int
    device: str
    recipe: dict
    stage: str = ""
    # False when the stage's previous attempt finished: it runs again because its config or its inputs changed,
    # so whatever it saved to resume from belongs to the old inputs. Only an interrupted stage resumes.
    resume: bool = True

    def log(self, msg: str) -> None:
        print(f"[{self.stage}] {msg}", file=sys.stderr, flush=True)


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe path as given, else relative to the repository (so `lmstack run` works from anywhere)."""
    p = Path(recipe)
    if p.exists() or p.is_absolute():
        return p
    for cand in (REPO_ROOT / p, REPO_ROOT / "recipes" / p, REPO_ROOT / "recipes" / f"{p}.toml"):
        if cand.exists():
            return cand
    return p


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"[run] device: {device!r} is not one of 'auto', 'cpu', 'cuda'")
    return device


@dataclass
class Recipe:
    """A parsed, validated recipe: the run table plus one typed config per stage."""
    raw: dict
    run: RunConfig
    configs: dict[str, Any]
    source: str

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = (), raw: dict | None = None) -> "Recipe":
        source = str(path) if path is not None else "<dict>"
        tree = raw if raw is not None else load_toml(resolve_recipe_path(path))
        tree = json.loads(json.dumps(tree))  # deep copy; TOML values are JSON-safe
        for text in overrides:
            keys, value = parse_override(text)
            if keys[0] != "run" and keys[0] not in STAGES:
                raise ConfigError(f"--set {text}: unknown table {keys[0]!r}; valid tables are: run, {', '.join(STAGES)}")
            apply_override(tree, keys, value)
        unknown = sorted(set(tree) - {"run"} - set(STAGES))
        if unknown:
            raise ConfigError(f"{source}: unknown table [{unknown[0]}]; valid tables are: run, {', '.join(STAGES)}")
        run_cfg = config_from_dict(RunConfig, tree.get("run", {}), "run")
        for s in run_cfg.stages:
            if s not in STAGES:
                raise ConfigError(f"[run] stages: unknown stage {s!r}; valid stages are: {', '.join(STAGES)}")
        configs = {}
        for name in STAGES:
            if name in run_cfg.stages or name in tree:
                config_cls, _ = STAGES[name].load()
                configs[name] = config_from_dict(config_cls, tree.get(name, {}), name)
        return cls(raw=tree, run=run_cfg, configs=configs, source=source)


def is_main_process() -> bool:
    """Under torchrun every rank runs the stage, but only rank 0 records it."""
    return os.environ.get("RANK", "0") == "0"


def run_stage(run: RunDir, recipe: Recipe, name: str) -> StageResult:
    """Run one stage now, recording it in the manifest (and its report fragment)."""
    spec = STAGES[name]
    _, fn = spec.load()
    cfg = recipe.configs[name]
    ctx = StageContext(run=run, seed=recipe.run.seed, device=resolve_device(recipe.run.device),
                       recipe=recipe.raw, stage=name, resume=run.stage(name).get("status") != "done")
    if not is_main_process():
        return fn(ctx, cfg)
    run.mark_started(name, config_to_dict(cfg))
    ctx.log(f"started (run dir {run.path})")
    t0 = time.time()
    try:
        result = fn(ctx, cfg)
    except BaseException as e:
        run.mark_failed(name, seconds=time.time() - t0, error=f"{type(e).__name__}: {e}")
        if not isinstance(e, (KeyboardInterrupt, ConfigError)):
            traceback.print_exc()
        raise
    if not isinstance(result, StageResult):
        raise TypeError(f"stage {name!r} returned {type(result).__name__}, expected StageResult")
    atomic_write_text(run.sub("report") / f"{name}.md", result.report)
    run.mark_finished(name, seconds=time.time() - t0, metrics=_jsonable(result.metrics),
                      artifacts=dict(result.artifacts))
    ctx.log(f"done in {time.time() - t0:.1f}s")
    return result


def run_pipeline(recipe: Recipe, run_dir: Path | None = None, only: list[str] | None = None) -> RunDir:
    """Run the recipe's stages in order. Completed stages whose config has not changed are
    skipped; once one stage re-runs, every later stage re-runs too (its inputs changed)."""
    run_dir = Path(run_dir) if run_dir else Path(recipe.run.runs_dir) / recipe.run.name
    run = RunDir(run_dir)
    atomic_write_text(run.path / "recipe.json", json.dumps(recipe.raw, indent=2, ensure_ascii=False))
    stages = only or recipe.run.stages
    rerun_rest = False
    for name in stages:
        entry = run.stage(name)
        same_config = entry.get("config") == _jsonable(config_to_dict(recipe.configs[name]))
        if not rerun_rest and entry.get("status") == "done" and same_config:
            problems = run.verify_stage(name)
            if not problems:
                print(f"[{name}] already done, skipping (delete its entry or change its config to re-run)",
                      file=sys.stderr)
                continue
            print(f"[{name}] done before, but its artifacts no longer match: {'; '.join(problems)}; re-running",
                  file=sys.stderr)
        rerun_rest = True
        run_stage(run, recipe, name)
    if is_main_process():
        from lmstack.report import render_report
        render_report(run)
    return run


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))

