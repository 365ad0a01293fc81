"""``lmstack experiment NAME [--set key=value ...] [--out DIR]``: run one of the experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXPERIMENTS = {
    "knowledge": "pretrain under 4 data conditions, fine-tune on QA for half the people, test extraction on the rest",
    "sft-retention": "one pretrained model, 4 ways to fine-tune it: which keeps the facts it read in pretraining",
    "multimodal": "CLIP, image-to-text and speech-to-text on generated data (--set size=tiny|default, seed, projector)",
}
MULTIMODAL_OPTIONS = ("size", "seed", "engine", "projector")


def main(argv: list[str] | None = None) -> int:
    from lmstack.config import ConfigError, config_from_dict, parse_override

    ap = argparse.ArgumentParser(prog="lmstack experiment", description="Run one of lmstack's experiments.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(f"  {k:10s} {v}" for k, v in EXPERIMENTS.items()))
    ap.add_argument("name", choices=sorted(EXPERIMENTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set pretrain_steps=200 --set seeds=[0]")
    ap.add_argument("--out", help="output directory (default: runs/experiments/NAME)")
    args = ap.parse_args(argv)
    out = Path(args.out or f"runs/experiments/{args.name}")
    if args.name == "multimodal":
        return _multimodal(args.set, out)
    from lmstack.experiments.knowledge import KnowledgeConfig, run_experiment

    overrides = {}
    try:
        for text in args.set:
            path, value = parse_override(text)
            overrides[".".join(path)] = value
        cfg = config_from_dict(KnowledgeConfig, overrides, f"experiment {args.name}")
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.name == "sft-retention":
        from lmstack.experiments.sft_retention import run_sft_retention

        result = run_sft_retention(cfg, out)
        print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
        for row in result["rows"]:
            print(f"result: {row['variant'].replace('+', '_')}_seed{row['seed']}_heldout={row['qa_test']:.3f}")
        return 0
    result = run_experiment(cfg, out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    for condition, v in result["summary"].items():
        print(f"result: {condition}_extraction={v['qa_test']['mean']:.3f}")
    return 0


def _multimodal(overrides: list[str], out: Path) -> int:
    """``lmstack experiment multimodal`` is ``lmstack multimodal all`` with the experiments' --set syntax:
    the keys in MULTIMODAL_OPTIONS are its options, anything else is a size field (clip_steps=200)."""
    from lmstack.multimodal.cli import main as multimodal_main

    argv = ["all", "--out", str(out)]
    for text in overrides:
        key, _, value = text.partition("=")
        if not value:
            print(f"error: --set {text!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        argv += [f"--{key}", value] if key in MULTIMODAL_OPTIONS else ["--set", text]
    return int(multimodal_main(argv) or 0)

