"""Training budgets on a clock that other processes cannot eat: wall time or the process's CPU time.

A speedrun's budget is usually wall-clock seconds, which is only fair on an idle machine: when
another process takes half the CPU, the run gets half the steps and a record turns into a
failure. The CPU time of the training process (``time.process_time``: user + system time of
all its threads) counts only the work this process was given, so a budget on that clock buys
about the same number of steps on a busy machine as on an idle one.

The rule that converts one into the other: a run with N intra-op threads that keep their cores
busy spends N CPU-seconds per wall-second, so **a wall budget of S seconds is a CPU budget of
N x S seconds** (:func:`cpu_budget`). It is still not exact under contention: threads that
wait for a core spin (and are charged) or sleep (and are not), and caches are shared, so a busy
machine still moves the result a little. Say which clock a number was measured on.
"""

from __future__ import annotations

import time
from typing import Callable, Literal, get_args

ClockKind = Literal["cpu", "wall"]
CLOCK_KINDS = get_args(ClockKind)


def cpu_budget(wall_seconds: float, threads: int) -> float:
    """CPU-seconds that correspond to ``wall_seconds`` of a run with ``threads`` busy threads."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return wall_seconds * threads


class BudgetClock:
    """Accumulates the seconds spent inside ``with clock.running():`` blocks, on one clock.

    Both clocks are always read, so a result can report the CPU and the wall seconds side by
    side; ``kind`` says which of them the budget is charged to (``elapsed``)."""

    def __init__(self, kind: str = "cpu", budget: float | None = None, *,
                 wall: Callable[[], float] = time.perf_counter, cpu: Callable[[], float] = time.process_time):
        if kind not in CLOCK_KINDS:
            raise ValueError(f"unknown clock {kind!r}; choose one of {', '.join(CLOCK_KINDS)}")
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be positive seconds, got {budget}")
        self.kind, self.budget = kind, budget
        self._wall, self._cpu = wall, cpu
        self.wall_seconds = 0.0
        self.cpu_seconds = 0.0

    @property
    def elapsed(self) -> float:
        return self.cpu_seconds if self.kind == "cpu" else self.wall_seconds

    @property
    def remaining(self) -> float:
        if self.budget is None:
            return float("inf")
        return max(0.0, self.budget - self.elapsed)

    @property
    def spent(self) -> bool:
        return self.budget is not None and self.elapsed >= self.budget

    def running(self) -> "_Span":
        return _Span(self)

    def summary(self) -> dict:
        return {"clock": self.kind, "budget": self.budget, "cpu_seconds": round(self.cpu_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3)}


class _Span:
    def __init__(self, clock: BudgetClock):
        self.clock = clock

    def __enter__(self) -> BudgetClock:
        self._w, self._c = self.clock._wall(), self.clock._cpu()
        return self.clock

    def __exit__(self, *exc) -> None:
        self.clock.wall_seconds += self.clock._wall() - self._w
        self.clock.cpu_seconds += self.clock._cpu() - self._c


def steps_for_budget(done_steps: int, elapsed: float, remaining: float) -> int:
    """Steps still to run so that the run ends on its budget, from the measured seconds per step
    (0 once the budget is spent)."""
    if done_steps <= 0 or elapsed <= 0:
        raise ValueError("steps_for_budget needs at least one timed step")
    return max(0, round(remaining / (elapsed / done_steps)))
