"""Two small stages used to test the pipeline machinery without training anything."""

import json
import time
from dataclasses import dataclass, field
from typing import Literal

from lmstack.pipeline import StageResult
from lmstack.runs import atomic_write_json


@dataclass
class Inner:
    width: int = 4
    kind: Literal["a", "b"] = "a"


@dataclass
class FirstConfig:
    text: str = "hello"
    scale: float = 1.0
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def run_first(ctx, cfg: FirstConfig) -> StageResult:
    out = ctx.run.sub("first") / "out.json"
    atomic_write_json(out, {"text": cfg.text, "width": cfg.inner.width})
    return StageResult(metrics={"chars": len(cfg.text)}, artifacts={"out": "first/out.json"},
                       report="first stage wrote one file")


@dataclass
class CountConfig:
    n: int = 20
    sleep: float = 0.0


def run_count(ctx, cfg: CountConfig) -> StageResult:
    """Counts to n, saving its position after every step, and resumes from it."""
    state_path = ctx.run.sub("count") / "state.json"
    start = json.loads(state_path.read_text())["i"] if state_path.exists() and ctx.resume else 0
    for i in range(start, cfg.n):
        time.sleep(cfg.sleep)
        atomic_write_json(state_path, {"i": i + 1})
    return StageResult(metrics={"final": cfg.n, "resumed_from": start})


def register(stages):
    from lmstack.pipeline import StageSpec
    stages["first"] = StageSpec("first", "fake_stages", "test stage", "FirstConfig", "run_first")
    stages["count"] = StageSpec("count", "fake_stages", "test stage", "CountConfig", "run_count")
