"""Does the order of the data matter? "由简到繁由短到长" (easy to hard, short to long) (issue 19, experiment 5).

The same documents (world, tinyshakespeare, poems, code; about one budget of tokens, so each is seen once) are
trained on in five orders at equal tokens: shuffled, short->long, long->short, easy->hard and hard->easy, where
"easy" is a low per-character perplexity under a character 4-gram Kneser-Ney model (``lmstack.ngram``) trained on
the same documents. The training windows are visited in stream order for the ordered runs. Measured: the final
held-out loss (per source and mean) and its curve during training, over several seeds, so that the differences
can be judged against the seed-to-seed spread.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.experiments import datarun as D

ORDERS = ("shuffled", "short_to_long", "long_to_short", "easy_to_hard", "hard_to_easy")


@dataclass
class CurriculumConfig(D.RunSize):
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 500                   # 5 orders x 2 seeds: a shorter budget keeps the default under 30 minutes
    orders: list[str] = field(default_factory=lambda: list(ORDERS))
    sources: list[str] = field(default_factory=lambda: ["world", "shakespeare", "poetry", "code"])
    max_chars_per_source: int = 600_000
    heldout_fraction: float = 0.05
    ngram_order: int = 4
    curve_points: int = 10

    def __post_init__(self):
        self.check("curriculum")
        bad = [o for o in self.orders if o not in ORDERS]
        if bad:
            raise ValueError(f"curriculum.orders: {bad[0]!r} is not one of {', '.join(ORDERS)}")


def ngram_perplexities(texts: list[str], order: int) -> list[float]:
    """Per-character perplexity of each text under a modified Kneser-Ney character n-gram fitted on all of them."""
    from lmstack.ngram import Vocab, count_ngrams, fit

    lines = [t.replace("\n", " ") for t in texts]
    vocab = Vocab.from_lines(lines, "char")
    encoded = vocab.encode_lines(lines)
    model = fit(count_ngrams(encoded, vocab, order=order), "modified_kneser_ney")
    return [model.score_sentences([ids]).perplexity for ids in encoded]


def prepare(cfg: CurriculumConfig, seed: int) -> dict:
    """The documents of one budget (a seeded sample of the sources), their lengths and n-gram difficulty."""
    _, docs = D.load_sources(cfg.sources, cfg.max_chars_per_source, seed)
    train, held = D.split_heldout(docs, cfg.heldout_fraction, seed)
    tok = D.train_small_bpe([d["text"] for d in train], cfg.vocab_size)
    ids = D.encode_docs(tok, train)
    order = list(range(len(train)))
    random.Random(f"curriculum:{seed}").shuffle(order)
    chosen, total = [], 0
    for i in order:  # about one budget of tokens, so every ordering sees the same documents exactly once
        if total >= cfg.budget() + 1:
            break
        chosen.append(i)
        total += len(ids[i])
    ppl = ngram_perplexities([train[i]["text"] for i in chosen], cfg.ngram_order)
    return {"tok": tok, "ids": [ids[i] for i in chosen], "ppl": ppl, "tokens": total,
            "sources": [train[i]["source"] for i in chosen],
            "heldout": D.heldout_by_source(tok, held, cfg.sources, cfg.seq_len)}


def ordering(data: dict, name: str, seed: int) -> list[int]:
    n = len(data["ids"])
    if name == "shuffled":
        idx = list(range(n))
        random.Random(f"shuffle:{seed}").shuffle(idx)
        return idx
    key = (lambda i: len(data["ids"][i])) if "long" in name else (lambda i: data["ppl"][i])
    return sorted(range(n), key=key, reverse=name in ("long_to_short", "hard_to_easy"))


def tail_sources(data: dict, order: list[int], budget: int, share: float = 0.2) -> dict[str, float]:
    """Which sources fill the last ``share`` of the training stream (trained at the lowest learning rate)."""
    counts: dict[str, int] = {}
    start, pos = (1 - share) * budget, 0
    for i in order:
        n = len(data["ids"][i])
        overlap = max(0, min(pos + n, budget) - max(pos, start))
        if overlap:
            counts[data["sources"][i]] = counts.get(data["sources"][i], 0) + int(overlap)
        pos += n
        if pos >= budget:
            break
    total = sum(counts.values()) or 1
    return {k: round(v / total, 3) for k, v in sorted(counts.items())}


def run_one(cfg: CurriculumConfig, data: dict, name: str, seed: int) -> dict:
    t0 = time.perf_counter()
    order = ordering(data, name, seed)
    stream, _ = D.fill_budget([data["ids"][i] for i in order], cfg.budget() + 1, None)
    probe_size = dataclasses.replace(cfg, eval_windows=max(4, cfg.eval_windows // 3))
    every = max(1, cfg.steps // cfg.curve_points)
    model, _, curve = D.pretrain(cfg, stream, data["tok"].vocab_size, seed, f"{name}/{seed}", ordered=True,
                                 curve_every=every,
                                 probe=lambda m: D.mean(D.loss_per_source(m, data["heldout"], probe_size).values()))
    loss = D.loss_per_source(model, data["heldout"], cfg)
    row = {"order": name, "seed": seed, "loss": loss, "final_loss": round(D.mean(loss.values()), 4),
           "last_fifth_sources": tail_sources(data, order, cfg.budget() + 1),
           "curve": [(s, round(v, 4)) for s, v in curve], "seconds": round(time.perf_counter() - t0, 1)}
    print(f"[curriculum] {name} seed {seed}: final held-out loss {row['final_loss']:.3f} ({row['seconds']:.0f}s)")
    return row


def run_experiment(cfg: CurriculumConfig, out: Path) -> dict:
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    runs, data_stats = [], {}
    for seed in cfg.seeds:
        data = prepare(cfg, seed)
        data_stats[seed] = {"documents": len(data["ids"]), "tokens": data["tokens"]}
        runs += [run_one(cfg, data, name, seed) for name in cfg.orders]
    result = {"config": dataclasses.asdict(cfg), "data": data_stats, "runs": runs, "summary": summarize(runs, cfg),
              "seconds": round(time.perf_counter() - t0, 1)}
    plot = save_plot(result, out)
    D.write_outputs(out, result, report(result, plot))
    return result


def summarize(runs: list[dict], cfg: CurriculumConfig) -> dict:
    """Per order: mean / min / max final loss, and the difference to shuffled paired by seed."""
    base = {r["seed"]: r["final_loss"] for r in runs if r["order"] == "shuffled"}
    out = {}
    for name in cfg.orders:
        rs = [r for r in runs if r["order"] == name]
        diffs = [r["final_loss"] - base[r["seed"]] for r in rs if r["seed"] in base]
        out[name] = {"mean": round(D.mean(r["final_loss"] for r in rs), 4), "min": min(r["final_loss"] for r in rs),
                     "max": max(r["final_loss"] for r in rs),
                     "vs_shuffled": round(D.mean(diffs), 4) if diffs else None,
                     "vs_shuffled_range": [round(min(diffs), 4), round(max(diffs), 4)] if diffs else None}
    return out


def overall(runs: list[dict]) -> str:
    """One-line verdict on "easy to hard, short to long": against shuffled and against the reverse order."""
    loss = {(r["order"], r["seed"]): r["final_loss"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    parts = []
    for fwd, rev in (("easy_to_hard", "hard_to_easy"), ("short_to_long", "long_to_short")):
        if not all((o, s) in loss for o in (fwd, rev, "shuffled") for s in seeds):
            continue
        beats_shuffled = all(loss[(fwd, s)] < loss[("shuffled", s)] for s in seeds)
        beats_reverse = all(loss[(fwd, s)] < loss[(rev, s)] for s in seeds)
        gap = D.mean(loss[(rev, s)] - loss[(fwd, s)] for s in seeds)
        parts.append(f"{fwd} {'beats' if beats_shuffled else 'does not beat'} shuffled in every seed and "
                     f"{'beats' if beats_reverse else 'does not beat'} its reverse in every seed (by {gap:+.3f} on average)")
    if not parts:
        return "Verdict: not enough orders run to judge."
    return "Verdict on 由简到繁、由短到长: " + "; ".join(parts) + ". " + (
        "With only one seed none of this can be told from noise." if len(seeds) < 2 else
        "The direction matters (forward beats reverse) even where the forward order is not better than shuffled."
        if all("beats its reverse" in p for p in parts) else "")


def save_plot(result: dict, out: Path) -> str:
    from lmstack.report import save_line_plot

    out.mkdir(parents=True, exist_ok=True)
    series = {}
    for name in result["config"]["orders"]:
        rs = [r for r in result["runs"] if r["order"] == name]
        steps = [s for s, _ in rs[0]["curve"]]
        series[name] = (steps, [D.mean(r["curve"][i][1] for r in rs) for i in range(len(steps))])
    save_line_plot(out / "curriculum.png", series, "Held-out loss during training, by data order", "step",
                   "held-out loss (nats/token)")
    return "curriculum.png"


def report(result: dict, plot: str) -> str:
    from lmstack.report import markdown_table

    cfg, summary = result["config"], result["summary"]
    base = [r["final_loss"] for r in result["runs"] if r["order"] == "shuffled"]
    noise = (max(base) - min(base)) if len(base) > 1 else float("nan")
    rows = [[name, f"{v['mean']:.4f} ({v['min']:.4f}-{v['max']:.4f})",
             "-" if v["vs_shuffled"] is None else f"{v['vs_shuffled']:+.4f} ({v['vs_shuffled_range'][0]:+.4f} to "
                                                  f"{v['vs_shuffled_range'][1]:+.4f})"] for name, v in summary.items()]

    def verdict(name: str) -> str:
        v = summary.get(name)
        if v is None or v["vs_shuffled"] is None:
            return f"{name}: not run"
        lo, hi = v["vs_shuffled_range"]
        scale = f" ({abs(v['vs_shuffled']) / noise:.1f}x the shuffled seed spread)" if noise > 0 else ""
        if hi < 0:
            return f"{name} beats shuffled in every seed, by {-v['vs_shuffled']:.4f} nats/token{scale}"
        if lo > 0:
            return f"{name} is WORSE than shuffled in every seed, by {v['vs_shuffled']:.4f} nats/token{scale}"
        return f"{name} vs shuffled: {v['vs_shuffled']:+.4f}, within the seed spread (signs differ across seeds)"

    sources = list(result["runs"][0]["loss"])
    per_source = []
    for name in cfg["orders"]:
        rs = [r for r in result["runs"] if r["order"] == name]
        tail = rs[0].get("last_fifth_sources", {})
        per_source.append([name] + [f"{D.mean(r['loss'][s] for r in rs):.3f}" for s in sources]
                          + [", ".join(f"{k} {v:.0%}" for k, v in tail.items()) or "-"])
    s0 = next(iter(result["data"].values()))
    lines = [
        "# Curriculum: does the order of the data matter?", "",
        f"Model d={cfg['d_model']} x {cfg['n_layers']} layers, {cfg['steps']} steps x {cfg['batch_size']} x "
        f"{cfg['seq_len']} tokens; the same {s0['documents']} documents ({s0['tokens']} tokens) in every order; "
        f"difficulty = character {cfg['ngram_order']}-gram perplexity; seeds {cfg['seeds']}; "
        f"{result['seconds'] / 60:.1f} min.", "",
        markdown_table(["order", "final held-out loss, mean (min-max)", "minus shuffled, paired by seed (range)"], rows),
        "", f"Seed-to-seed spread of the shuffled run: {noise:.4f} nats/token.", "",
        "Per source (final held-out loss, mean over seeds) and what the last fifth of the stream is made of:", "",
        markdown_table(["order"] + sources + ["last fifth of the stream"], per_source), "",
        f"![curriculum]({plot})", "",
        "## Claim: 由简到繁、由短到长 (easy to hard, short to long) helps", "",
        f"Measured: {verdict('easy_to_hard')}; {verdict('short_to_long')}; {verdict('hard_to_easy')}; "
        f"{verdict('long_to_short')}.", "", overall(result["runs"]), "",
        "Reading (hypotheses, not measured separately): (1) with a cosine schedule the data seen last is learnt "
        "at the smallest learning rate, so an ordered run's final loss depends on what its last fifth holds (table "
        "above); (2) a sorted stream makes consecutive batches homogeneous (all short poems, or all long modules), "
        "so each update follows one kind of text -- the shuffled stream mixes them. Published results (e.g. Wu et "
        "al. 2021, \"When do curricula work?\") find little benefit from curricula at a full budget and some when "
        "the budget is cut short; compare the curve (plot) with the final numbers.", ""]
    return "\n".join(lines)


def experiment_main(overrides: list[str], out: Path) -> int:
    from lmstack.experiments.cli import parse_config

    result = run_experiment(parse_config(CurriculumConfig, overrides, "experiment curriculum"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    for name, v in result["summary"].items():
        print(f"result: final_loss_{name}={v['mean']:.4f}")
        if v["vs_shuffled"] is not None:
            print(f"result: vs_shuffled_{name}={v['vs_shuffled']:+.4f}")
    return 0
