"""What this machine can do, measured rather than assumed.

Two CPUs that both say "x86_64" can differ 300x in bf16 matmul speed: one with AVX-512 BF16
units ran a bf16 GEMM at about 400 GFLOP/s, one with only AVX2 at about 1 GFLOP/s (100x slower
than its fp32). So lmstack never picks a dtype by name: :func:`probe` times a small fp32 and a
small bf16 matmul (well under a second), caches the figures per machine, and
:func:`resolve_dtype` turns ``dtype = "auto"`` into bf16 only where bf16 is measurably faster.
The same fp32/bf16 figures are the trainer's MFU denominator.

:class:`ContentionWatch` is for the benchmarks: it measures how much CPU other processes took
while a timing ran, so a result taken on a busy machine says so instead of passing as a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PROBE_VERSION = 1
# bf16 is chosen only when it beats fp32 by this factor: autocast adds casts that a bare GEMM
# does not pay, so a tie goes to fp32 (exact and simpler).
BF16_MARGIN = 1.2


@dataclass
class MachineProfile:
    device: str
    fp32_flops: float        # sustained matmul FLOP/s in fp32
    bf16_flops: float        # the same in bf16
    best_dtype: str          # "bf16" or "fp32": what dtype = "auto" resolves to
    seconds: float           # how long the probe took
    key: str = ""            # what the cache entry is keyed on (CPU model, threads, torch version)

    def peak_flops(self, dtype: str) -> float:
        return self.bf16_flops if dtype == "bf16" else self.fp32_flops


def _gemm_flops(dtype: torch.dtype, device: str, n: int, budget: float) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # first call pays one-off costs (thread pool, kernel selection)
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if device != "cpu":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed > budget:
            return 2.0 * n ** 3 * reps / elapsed


def measure(device: str = "cpu", budget: float = 0.15) -> MachineProfile:
    """Time fp32 and bf16 matmuls (about ``2 * budget`` seconds on a CPU; a slow bf16 path costs
    at most one extra matmul of a small size)."""
    t0 = time.perf_counter()
    n = 512 if device == "cpu" else 4096
    fp32 = _gemm_flops(torch.float32, device, n, budget)
    bf16 = _gemm_flops(torch.bfloat16, device, n // 2 if device == "cpu" else n, budget)
    best = "bf16" if bf16 > BF16_MARGIN * fp32 else "fp32"
    return MachineProfile(device=device, fp32_flops=fp32, bf16_flops=bf16, best_dtype=best,
                          seconds=time.perf_counter() - t0, key=machine_key(device))


def machine_key(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        hw = torch.cuda.get_device_name(torch.device(device))
    else:
        hw = _cpu_model()
    text = f"{hw}|{platform.machine()}|threads={torch.get_num_threads()}|torch={torch.__version__}|v{PROBE_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def cache_root() -> Path:
    """~/.cache/lmstack (or $LMSTACK_CACHE_DIR): machine probes and the torch.compile cache."""
    return Path(os.environ.get("LMSTACK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lmstack"))


def cache_path() -> Path:
    return cache_root() / "machine.json"


def persist_compile_cache() -> Path:
    """Point TorchInductor's on-disk cache at ~/.cache/lmstack/inductor (unless the user chose a
    directory), so that a second run of the same model and shapes skips most of the compile time."""
    path = cache_root() / "inductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_unavailable(device: str) -> str:
    """Why torch.compile cannot work here ("" when it can): TorchInductor writes C++ for the CPU (it needs a
    compiler) and Triton kernels for CUDA."""
    import importlib.util
    import shutil

    if str(device).startswith("cuda"):
        return "" if importlib.util.find_spec("triton") else "TorchInductor needs the triton package for CUDA"
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "TorchInductor needs a C++ compiler for CPU kernels (none of $CXX, g++, c++, clang++ is on PATH)"
    return ""


# A thread count is chosen when it is within this factor of the fastest: fewer threads leave
# cores to the data loader and to other processes, and scale worse on small matrices.
THREADS_MARGIN = 1.05


def _threads_rate(budget: float) -> float:
    """Work units per second of a small training-like workload (the matmuls and the activation of
    a d=256 MLP on 2,048 tokens) at the current torch thread count."""
    x = torch.randn(2048, 256)
    w1, w2 = torch.randn(256, 1024), torch.randn(1024, 256)
    torch.relu(x @ w1) @ w2
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        torch.relu(x @ w1) @ w2
        reps += 1
    return reps / (time.perf_counter() - t0)


def probe_threads(*, refresh: bool = False, budget: float = 0.2, candidates: list[int] | None = None) -> int:
    """The intra-op thread count for training on this machine: the fewest threads within
    THREADS_MARGIN of the fastest, measured once per machine and cached next to :func:`probe`.
    Measured on a busy machine it is only as good as the machine's state at that moment."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    candidates = candidates or list(range(1, usable + 1))
    key = hashlib.sha256(f"threads|{_cpu_model()}|{usable}|torch={torch.__version__}".encode()).hexdigest()[:16]
    path = cache_path()
    try:
        cached = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}
    if not refresh and isinstance(cached.get(key), dict) and "threads" in cached[key]:
        return int(cached[key]["threads"])
    before = torch.get_num_threads()
    rates = {}
    try:
        for n in candidates:
            torch.set_num_threads(n)
            rates[n] = _threads_rate(budget)
    finally:
        torch.set_num_threads(before)
    best = max(rates.values())
    chosen = min(n for n, r in rates.items() if r * THREADS_MARGIN >= best)
    cached[key] = {"threads": chosen, "rates": {str(n): r for n, r in rates.items()}}
    try:
        from lmstack.runs import atomic_write_json
        atomic_write_json(path, cached)
    except OSError:
        pass
    return chosen


def probe(device: str = "cpu", *, refresh: bool = False) -> MachineProfile:
    """The machine's profile, measured once and cached per machine (see :func:`machine_key`)."""
    key = machine_key(device)
    path = cache_path()
    cached: dict = {}
    if path.exists():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cached = {}  # a damaged cache is re-measured, never trusted
    if not refresh and key in cached:
        try:
            return MachineProfile(**cached[key])
        except TypeError:
            pass
    profile = measure(device)
    cached[key] = asdict(profile)
    try:
        from lmstack.runs import atomic_write_json
        atomic_write_json(path, cached)
    except OSError:
        pass  # a read-only home directory only costs a re-measurement next time
    return profile


def resolve_dtype(dtype: str, device: str = "cpu") -> tuple[str, MachineProfile | None]:
    """``"auto"`` becomes the faster of fp32 and bf16 on this machine; other values pass through.
    Returns the dtype and the profile it was chosen from (None when nothing was measured)."""
    if dtype != "auto":
        return dtype, None
    profile = probe(device)
    return profile.best_dtype, profile


# --------------------------------------------------------------------------- benchmarks
def _busy_jiffies() -> int | None:
    """Non-idle CPU time of the whole machine, in clock ticks (Linux /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    return sum(values[:8]) - idle


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ContentionWatch:
    """How much CPU other processes used while a benchmark ran.

    ``share`` is their CPU time over (wall time x CPU count): 0 on an idle machine, 0.5 when
    another process kept one of two cores busy. Above ``threshold`` the result is flagged."""

    def __init__(self, threshold: float = 0.10):
        self.threshold = threshold
        self.share = 0.0
        self.load_avg = (0.0, 0.0, 0.0)

    def __enter__(self) -> "ContentionWatch":
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy_jiffies(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        busy1, own = _busy_jiffies(), _own_cpu_seconds() - self._own0
        self.load_avg = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
        if self._busy0 is None or busy1 is None or wall <= 0:
            return
        total = (busy1 - self._busy0) / os.sysconf("SC_CLK_TCK")
        self.share = max(0.0, total - own) / (wall * (os.cpu_count() or 1))

    @property
    def contended(self) -> bool:
        return self.share > self.threshold

    def report(self) -> str:
        """Lines for the end of a benchmark's output: a warning when contended, and the result key."""
        lines = [f"other processes used {100 * self.share:.0f}% of the CPU during the timings "
                 f"(load average {self.load_avg[0]:.2f})"]
        if self.contended:
            lines.append("WARNING: the machine was busy; these timings are not trustworthy. "
                         "Re-run on an idle machine before comparing them.")
        lines.append(f"result: contended={'yes' if self.contended else 'no'}")
        return "\n".join(lines)


def run_benchmark(main) -> int:
    """Run a benchmark's ``main()`` under a :class:`ContentionWatch` and end its output with
    the contention lines, so that every timing table says whether it can be trusted."""
    with ContentionWatch() as watch:
        code = main()
    print(watch.report(), flush=True)
    return int(code or 0)
