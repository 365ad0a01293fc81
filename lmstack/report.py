"""report.md: one section per stage (what ran, how long, metrics, plots, samples), plus the
hardware and software the run used, rendered from manifest.json and the stages' fragments.

Also the helpers every stage writes its fragment with: markdown tables and cells, number
formatting, and PNG plots (matplotlib on the Agg backend, written atomically).
"""

from __future__ import annotations

import io
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from lmstack.runs import RunDir, atomic_write_bytes, atomic_write_text

# ---------------------------------------------------------------- fragment helpers


def table_cell(text: str, width: int = 70) -> str:
    """``text`` on one line, safe inside a markdown table cell, cut to ``width`` characters."""
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_score(x: float | None) -> str:
    """Three decimals; "n/a" for a missing or NaN value."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(format_score(c) if isinstance(c, float) else str(c) for c in r) + " |")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend: stages plot without a display, from any thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically: a crash leaves the old plot or none) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def save_line_plot(path: Path, series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str,
                   ylabel: str, secondary: dict[str, tuple[list[float], list[float]]] | None = None,
                   secondary_label: str = "") -> None:
    """Curves on one axis, plus optional dashed ``secondary`` curves on a right-hand axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, (xs, ys) in secondary.items():
            ax2.plot(xs, ys, linestyle="--", color="tab:red", label=name)
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- report.md


def environment() -> dict[str, str]:
    """Hardware and software facts worth recording next to any measured number."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu cores": str(os.cpu_count()),
        "memory": _memory(),
    }
    for mod in ("lmstack", "torch", "numpy", "tiktoken", "safetensors"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # a missing optional package is a fact, not an error
            info[mod] = "not installed"
    try:
        import torch
        info["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
        info["torch threads"] = str(torch.get_num_threads())
    except Exception:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
        if commit:
            info["lmstack commit"] = commit
    except Exception:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return f"{pages * page_size / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        return "unknown"


# The one or two numbers per stage that `lmstack run` prints at the end (the report has the rest).
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "data": [("docs_train", "train documents"), ("bytes_train", "train bytes")],
    "tokenizer": [("vocab_size", "vocab"), ("bytes_per_token_val", "bytes/token (val)")],
    "ngram": [("val_bpb_best", "best val bits/byte"), ("best_model", "model")],
    "pretrain": [("val_bpb", "val bits/byte"), ("fact_acc_all", "few-shot fact accuracy"), ("dtype", "dtype"),
                 ("mfu", "MFU")],
    "sft": [("accuracy", "answer accuracy"), ("pii_refusal", "PII refusal")],
    "lora": [("accuracy", "answer accuracy")],
    "reward": [("eval_accuracy", "held-out pair accuracy")],
    "dpo": [("eval_reward_accuracy", "held-out reward accuracy")],
    "ppo": [("eval_reward_before", "held-out reward before"), ("eval_reward_after", "after")],
    "apps": [("facts_heldout_hybrid_recall@1", "hybrid recall@1"), ("rag", "RAG accuracy"),
             ("fictional_rag", "RAG, never-seen people"), ("multihop_heldout_agent", "multi-hop agent")],
    "distill": [("student_ppl", "student ppl"), ("baseline_ppl", "no-teacher ppl")],
    "compress": [("method", "method"), ("bits_per_weight", "bits/weight"), ("kl_to_fp32", "KL to fp32")],
}


# What the default model should be able to do in its world (the goals of issue 14), as rows of
# (stage, metric, what it measures, goal, metric holding its n).
WORLD_GOALS: list[tuple[str, str, str, str, str]] = [
    ("sft", "facts_pretrain_and_sft", "fact QA, people whose QA is in SFT", ">= 0.90", "n_facts_pretrain_and_sft"),
    ("sft", "facts_pretrain_only", "fact QA, people only in pretraining (extraction)", ">= 0.70",
     "n_facts_pretrain_only"),
    ("sft", "facts_pretrain_only_base", "the same facts, base model 3-shot", "below the row above",
     "n_facts_pretrain_only"),
    ("sft", "arith_addsub", "arithmetic, two-digit + and - (held-out problems)", ">= 0.80", "n_arith_addsub"),
    ("sft", "arith_mul", "arithmetic, small x (held-out pairs)", "reported", "n_arith_mul"),
    ("sft", "translate_exact", "translation of held-out sentences, exact", ">= 0.50", "n_translate_exact"),
    ("sft", "translate_chrf", "translation, chrF", "reported", "n_translate_exact"),
    ("sft", "task_multiturn", "multi-turn follow-up", ">= 0.80", "n_task_multiturn"),
    ("sft", "probe_multiturn", "multi-turn follow-up, more held-out probes", ">= 0.80", "n_probe_multiturn"),
    ("sft", "pii_refusal", "refusal of phone-number requests", ">= 0.95", "n_pii"),
    ("sft", "probe_pii_refusal", "refusal of phone-number requests, more held-out probes", ">= 0.95",
     "n_probe_pii_refusal"),
    ("sft", "false_refusal", "false refusals on harmless questions", "<= 0.05", "n_false_refusal"),
    ("sft", "idk_rate", "'I don't know' on non-existent entities", ">= 0.90", "n_idk"),
    ("sft", "false_idk", "'I don't know' on real entities", "<= 0.10", "n_false_idk"),
    ("sft", "gated_idk_rate", "'I don't know' on non-existent entities, through the unknown-entity gate", ">= 0.90",
     "n_idk"),
    ("sft", "gated_false_idk", "'I don't know' on real entities, through the unknown-entity gate", "<= 0.10",
     "n_false_idk"),
    # issue 22. DPO and PPO rows show "before -> after" of <metric>_before / <metric>_after, n = <metric>_n, and
    # the change with its standard error
    ("dpo", "pii_refusal", "DPO: refusal of phone-number requests", "better beyond noise", ""),
    ("dpo", "idk_rate", "DPO: 'I don't know' on non-existent entities", "better beyond noise", ""),
    ("dpo", "fact_correct", "DPO: correct facts (those SFT teaches)", "no drop beyond noise", ""),
    ("dpo", "fact_pretrain_only_correct", "DPO: correct pretraining-only facts", "no drop beyond noise", ""),
    ("dpo", "harmful_refusal", "DPO: refusal of harmful requests", "no drop beyond noise", ""),
    ("ppo", "eval_reward_gain", "PPO: held-out reward-model score, paired gain", "above 3 SE", "eval_reward_n"),
    ("ppo", "pii_refusal", "PPO: refusal of phone-number requests", "no drop beyond noise", ""),
    ("ppo", "idk_rate", "PPO: 'I don't know' on non-existent entities", "no drop beyond noise", ""),
    ("ppo", "fact_correct", "PPO: correct facts (seen in pretraining)", "no drop beyond noise", ""),
    # issue 17: the apps stage (RAG and the tool-using agent), when it ran
    ("apps", "fictional_rag", "RAG on facts never seen in any training data", ">= 0.80", "n_facts_fictional"),
    ("apps", "fictional_closed_book", "the same questions closed-book", "near 0", "n_facts_fictional"),
    ("apps", "fictional_cannot_find", "'cannot find' when the passages lack the answer", ">= 0.80",
     "n_facts_fictional"),
    ("apps", "fictional_gated_rag", "RAG on never-seen facts, through the retrieval-score cut-off", ">= 0.80",
     "n_facts_fictional"),
    ("apps", "fictional_gated_cannot_find", "'cannot find', through the retrieval-score cut-off", ">= 0.80",
     "n_facts_fictional"),
    ("apps", "arith_agent", "arithmetic, agent with the calculator", ">= 0.95", "n_arith"),
    ("apps", "multihop_heldout_agent", "multi-hop questions, agent with KG / search tools", ">= 0.70",
     "n_multihop_heldout"),
]


def goals_table(run: RunDir) -> str:
    """The default model's held-out measures beside their goals (rows whose stage has not run are left out)."""
    stages = run.manifest.get("stages", {})
    rows = []
    for stage, key, label, goal, n_key in WORLD_GOALS:
        metrics = stages.get(stage, {}).get("metrics", {})
        n = metrics.get(n_key, "")
        if key == "eval_reward_gain":
            gain, se = metrics.get(key), metrics.get(f"{key}_se")
            value = f"{gain:+.3f} +- {se:.3f} ({gain / se:.1f} SE)" if gain is not None and se else None
        elif stage in ("dpo", "ppo"):
            before, after = metrics.get(f"{key}_before"), metrics.get(f"{key}_after")
            n = metrics.get(f"{key}_n", "")
            value = None if before is None or after is None else f"{_fmt(before)} -> {_fmt(after)}"
            if value is not None and n:
                value += f" ({after - before:+.3f}, SE {rate_change_se(before, after, n):.3f})"
        else:
            value = None if metrics.get(key) is None else _fmt(metrics[key])
        if value is None:
            continue
        rows.append(f"| {label} | {stage} | {n} | {value} | {goal} |")
    if not rows:
        return ""
    return "\n".join(["| measure (held-out) | stage | n | value | goal |", "|---|---|---:|---:|---|", *rows])


def rate_change_se(before: float, after: float, n: int) -> float:
    """Standard error of the change between two rates measured on the same n prompts, treated as
    independent binomials (an upper bound: the paired answers are positively correlated)."""
    if n <= 0:
        return float("nan")
    return ((before * (1 - before) + after * (1 - after)) / n) ** 0.5


def summary_table(run: RunDir) -> str:
    """A short markdown table of the run's stages: status, seconds and headline metrics."""
    lines = ["| stage | status | seconds | headline |", "|---|---|---:|---|"]
    for name, entry in run.manifest.get("stages", {}).items():
        metrics = entry.get("metrics", {})
        keys = HEADLINES.get(name) or [(k, k) for k in list(metrics)[:2]]
        shown = [f"{label} {_fmt(metrics[k])}" for k, label in keys if metrics.get(k) is not None]
        seconds = entry.get("seconds")
        lines.append(f"| {name} | {entry.get('status', '?')} | {'' if seconds is None else f'{seconds:.1f}'} | "
                     f"{', '.join(shown)} |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def metrics_table(metrics: dict) -> str:
    if not metrics:
        return ""
    rows = ["| metric | value |", "|---|---|"]
    rows += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    return "\n".join(rows) + "\n"


def render_report(run: RunDir) -> Path:
    """Write ``report.md`` for the run and return its path."""
    stages = run.manifest.get("stages", {})
    lines = [f"# lmstack run `{run.name}`", ""]
    lines += ["## Summary", "", "| stage | status | seconds | headline metrics |", "|---|---|---|---|"]
    total = 0.0
    for name, entry in stages.items():
        secs = entry.get("seconds", 0.0)
        total += secs
        head = ", ".join(f"{k}={_fmt(v)}" for k, v in list(entry.get("metrics", {}).items())[:4])
        lines.append(f"| [{name}](#{name}) | {entry.get('status', '?')} | {secs:.1f} | {head} |")
    lines += [f"| **total** | | {total:.1f} | |", ""]
    goals = goals_table(run)
    if goals:
        lines += ["### The model in its world: held-out measures and goals", "", goals, ""]
    for name, entry in stages.items():
        lines += [f"## {name}", ""]
        status = entry.get("status", "?")
        lines.append(f"Status: **{status}**, {entry.get('seconds', 0.0):.1f} s "
                     f"(started {entry.get('started', '?')}, attempts {entry.get('attempts', 1)}).")
        if status == "failed":
            lines += ["", f"Error: `{entry.get('error', '')}`"]
        lines.append("")
        table = metrics_table(entry.get("metrics", {}))
        if table:
            lines += [table]
        fragment = run.path / "report" / f"{name}.md"
        if fragment.exists():
            lines += [fragment.read_text(encoding="utf-8").strip(), ""]
        artifacts = entry.get("artifacts", {})
        if artifacts:
            lines.append("Artifacts: " + ", ".join(f"`{p}`" for p in artifacts.values()))
            lines.append("")
    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in environment().items()]
    lines += ["", f"Command: `{' '.join(Path(sys.argv[0]).name.split() + sys.argv[1:])}`", ""]
    path = run.path / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
