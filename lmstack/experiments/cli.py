"""``lmstack experiment NAME [--set key=value ...] [--out DIR]``: run one of the experiments.

Each experiment is a module with a ``main(overrides: list[str], out: Path) -> int`` function; REGISTRY
maps its name to that module and a one-line description. ``lmstack experiment all`` runs every one in turn
(``make experiments``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

# name -> (module with main(overrides, out), one-line description)
REGISTRY: dict[str, tuple[str, str]] = {
    "knowledge": ("lmstack.experiments.knowledge",
                  "pretrain under 4 data conditions, fine-tune on QA for half the people, test extraction on the rest"),
    "sft-retention": ("lmstack.experiments.sft_retention",
                      "one pretrained model, 4 ways to fine-tune it: which keeps the facts it read in pretraining"),
    "prompting": ("lmstack.experiments.prompting",
                  "ICL curves (shots x sizes, exact match vs log-prob), trained chain of thought + voting, template spread"),
    "data-quality": ("lmstack.experiments.data_quality", "equal tokens, clean vs noisy mixtures; how much noisy data matches clean"),
    "repetition": ("lmstack.experiments.repetition", "repeat a small subset k times in a fixed budget; memorisation; dedup removes it"),
    "mixing": ("lmstack.experiments.mixing", "English:Chinese ratio sweep: per-language loss, QA and cross-lingual transfer"),
    "curriculum": ("lmstack.experiments.curriculum", "shuffled vs short->long vs easy->hard (n-gram perplexity) and reverses"),
    "scaling": ("lmstack.experiments.scaling",
                "grid of sizes x token budgets, Kaplan and Chinchilla fits, a predicted-then-trained larger model"),
    "reward-overoptimisation": ("lmstack.experiments.reward_overoptimisation",
                                "proxy RMs of several sizes/data vs the world's gold judges under best-of-n and PPO"),
    "finetune-memory": ("lmstack.experiments.finetune_memory",
                        "full fine-tuning vs LoRA vs QLoRA memory at the Llama-7B shape, counted on the meta device"),
    "multimodal": ("lmstack.multimodal.cli",
                   "CLIP, image-to-text and speech-to-text on generated data (--set size=tiny|default, seed, projector)"),
    "recsys": ("lmstack.experiments.recsys", "next-item recommendation: popularity, item-kNN, ALS vs prompt, title SFT, item-ID LM"),
}


def parse_config(cls: type, overrides: list[str], what: str) -> Any:
    """Build the experiment's config dataclass from ``--set key=value`` strings; ConfigError names the key."""
    from lmstack.config import config_from_dict, parse_override

    values = {}
    for text in overrides:
        path, value = parse_override(text)
        values[".".join(path)] = value
    return config_from_dict(cls, values, what)


def run_one(name: str, overrides: list[str], out: Path) -> int:
    from lmstack.config import ConfigError

    module = importlib.import_module(REGISTRY[name][0])
    try:
        return int(module.experiment_main(overrides, out) or 0)
    except (ConfigError, ValueError) as e:
        print(f"error: experiment {name}: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmstack experiment", description="Run one of lmstack's experiments.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(f"  {k:16s} {v[1]}" for k, v in REGISTRY.items()))
    ap.add_argument("name", type=lambda name: name.replace("_", "-"), choices=sorted(REGISTRY) + ["all"],
                    help="experiment name (data_quality and data-quality are the same)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set pretrain_steps=200 --set seeds=[0]")
    ap.add_argument("--out", help="output directory (default: runs/experiments/NAME)")
    args = ap.parse_args(argv)
    if args.name != "all":
        return run_one(args.name, args.set, Path(args.out or f"runs/experiments/{args.name}"))
    if args.set:
        print("error: --set applies to one experiment, not to `all`", file=sys.stderr)
        return 2
    root = Path(args.out or "runs/experiments")
    failed = [name for name in REGISTRY if run_one(name, [], root / name) != 0]
    if failed:
        print(f"error: experiments failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
