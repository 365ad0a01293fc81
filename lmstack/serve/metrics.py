"""Server metrics in the Prometheus text exposition format (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for bound, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{le="{bound}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.n}")
        return out


class Metrics:
    """Counters the API and the engine thread update; ``render(gauges)`` writes the /metrics page."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status) -> n
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram()
        self.latency = Histogram()
        self.step_time = Histogram((0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.recent_tokens: list[tuple[float, int]] = []  # (time, tokens) of recent steps, for tokens/s

    def count_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1

    def record_step(self, now: float, seconds: float, new_tokens: int) -> None:
        with self.lock:
            self.step_time.observe(seconds)
            self.completion_tokens += new_tokens
            self.recent_tokens.append((now, new_tokens))
            cutoff = now - 10.0
            while self.recent_tokens and self.recent_tokens[0][0] < cutoff:
                self.recent_tokens.pop(0)

    def tokens_per_second(self, now: float) -> float:
        with self.lock:
            window = [n for t, n in self.recent_tokens if t >= now - 10.0]
        return sum(window) / 10.0

    def render(self, gauges: dict[str, tuple[str, float]], counters: dict[str, tuple[str, float]]) -> str:
        lines = []
        for name, (help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        for name, (help_text, value) in counters.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        with self.lock:
            lines += ["# HELP lmstack_requests_total HTTP requests by endpoint and status",
                      "# TYPE lmstack_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'lmstack_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, hist, help_text in (
                    ("lmstack_time_to_first_token_seconds", self.ttft, "time from arrival to the first token"),
                    ("lmstack_request_latency_seconds", self.latency, "time from arrival to the last token"),
                    ("lmstack_step_seconds", self.step_time, "duration of one scheduler step")):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"] + hist.lines(name)
        return "\n".join(lines) + "\n"
