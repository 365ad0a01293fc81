"""``python -m lmstack.data.world``: generate the world, print its statistics and samples, write it out."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from lmstack.data.world import World, WorldConfig, build_world


def format_stats(w: World) -> str:
    s = w.stats()
    lines = ["| kind | docs | items | chars |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['docs']} | {v['items']} | {v['chars']} |" for k, v in s["docs_by_kind"].items()]
    lines += [f"| **total** | {s['docs']} | | {s['chars']} |", "",
              "| fact type | facts | stated in pretraining | times stated (min / mean / max) |", "|---|---:|---:|---|"]
    lines += [f"| {k} | {v['facts']} | {v['facts_in_pretrain']} | {v['min']} / {v['mean']} / {v['max']} |"
              for k, v in s["fact_mentions_in_pretrain"].items()]
    lines += ["", f"people {s['people']}, cities {s['cities']}, countries {s['countries']}; "
              f"sft_train {s['sft_train']}, sft_eval {s['sft_eval']}, prefs_train {s['prefs_train']}, "
              f"prefs_eval {s['prefs_eval']}, facts_eval {s['facts_eval']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m lmstack.data.world [--seed N] [--set n_people=10 ...] [--out DIR] [--sample N]``"""
    from lmstack.config import ConfigError, config_from_dict, parse_override

    ap = argparse.ArgumentParser(prog="lmstack.data.world", description="Generate the synthetic bilingual world.")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a WorldConfig field")
    ap.add_argument("--out", help="write world.json and the jsonl sets (plus pretrain.jsonl) here")
    ap.add_argument("--sample", type=int, default=0, help="print N sample documents and conversations")
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    try:
        for text in args.set:
            path, value = parse_override(text)
            overrides[".".join(path)] = value
        cfg = config_from_dict(WorldConfig, overrides, "world")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    w = build_world(cfg, args.seed)
    print(format_stats(w))
    rng = random.Random(0)
    for doc in rng.sample(w.docs, min(args.sample, len(w.docs))):
        print(f"\n--- {doc['kind']} ({doc['lang']})\n{doc['text']}")
    for item in rng.sample(w.sft_train, min(args.sample, len(w.sft_train))):
        print(f"\n--- sft {item['task']} ({item['lang']})")
        for m in item["messages"]:
            print(f"[{m['role']}] {m['content']}")
    if args.out:
        from lmstack.runs import atomic_write_text

        paths = w.write(args.out)
        atomic_write_text(Path(args.out) / "pretrain.jsonl",
                          "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in w.docs))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())} and {Path(args.out) / 'pretrain.jsonl'}")
    return 0

