"""Does a little data repeated many times pollute the model, and does dedup remove the effect? (issue 19, exp. 3)

Anchor: Hernandez et al. 2022, "Scaling Laws and Interpretability of Learning from Repeated Data": repeating
0.1% of the data 100 times (10% of the tokens) degraded an 800M model to the level of a 400M one, with the damage
largest at an intermediate number of repetitions.

Every run trains on the same token budget. ``repeated_fraction`` of it is a small subset of documents repeated
k times (subset size = repeated tokens / k); the rest is unique documents seen once. k = 1 is the no-repetition
baseline. Each copy of a repeated document is either exact or lightly edited (a header line or one changed word),
as web duplicates are, so that exact dedup alone does not catch them all. Measured: held-out loss per source,
memorisation of the repeated documents (greedy continuation of ``prefix`` tokens reproduces the next
``continuation`` exactly; the same on never-seen documents is the control) and few-shot fact accuracy.
Then the data stage's dedup (exact hash, then MinHash-LSH) runs on the most repeated corpus; the model is retrained
on what it keeps, topped up with fresh unique documents to the same budget.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmstack.experiments import datarun as D

HEADERS = ["Posted by admin", "Reprinted from the archive", "Shared from a forum thread", "转载自网络", "Mirror copy"]


@dataclass
class RepetitionConfig(D.RunSize):
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 400                   # 6 runs x 2 seeds: a shorter budget keeps the default under 30 minutes
    sources: list[str] = field(default_factory=lambda: ["world", "shakespeare", "poetry", "code"])
    max_chars_per_source: int = 700_000
    heldout_fraction: float = 0.05
    repeats: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256])
    repeated_fraction: float = 0.1     # share of the budget spent on the repeated subset (Hernandez: 10%)
    near_duplicate_prob: float = 0.5   # chance a copy is edited slightly instead of exact
    prefix: int = 50
    continuation: int = 50
    fact_items: int = 120

    def __post_init__(self):
        self.check("repetition")
        if not 0.0 < self.repeated_fraction < 1.0:
            raise ValueError(f"repetition.repeated_fraction={self.repeated_fraction} must be between 0 and 1")
        if not self.repeats or min(self.repeats) < 1:
            raise ValueError("repetition.repeats: give repetition counts >= 1, e.g. [1, 4, 16]")


def perturbed_copy(text: str, rng: random.Random, prob: float) -> str:
    """An exact copy, or with probability ``prob`` a near copy: a header line added or one word replaced."""
    if rng.random() >= prob:
        return text
    if rng.random() < 0.5:
        return rng.choice(HEADERS) + "\n" + text
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = rng.choice(["indeed", "also", "的", "then"])
    return " ".join(words)


def prepare(cfg: RepetitionConfig, seed: int) -> dict:
    world, docs = D.load_sources(cfg.sources, cfg.max_chars_per_source, seed)
    train, held = D.split_heldout(docs, cfg.heldout_fraction, seed)
    tok = D.train_small_bpe([d["text"] for d in train], cfg.vocab_size)
    ids = D.encode_docs(tok, train)
    order = list(range(len(train)))
    random.Random(f"repeat-order:{seed}").shuffle(order)
    return {"world": world, "tok": tok, "train": train, "ids": ids, "order": order,
            "heldout": D.heldout_by_source(tok, held, cfg.sources, cfg.seq_len),
            "held_ids": D.encode_docs(tok, held)}


def choose_subset(data: dict, n_tokens: int, min_len: int) -> tuple[list[int], list[list[int]]]:
    """Documents from the front of the seeded order (long enough to probe memorisation), the last one cut so
    that the subset holds about ``n_tokens``: (indices, their token ids as used)."""
    chosen, kept, total = [], [], 0
    for i in data["order"]:
        if total >= n_tokens:
            break
        ids = data["ids"][i]
        if len(ids) >= min_len:
            ids = ids[:max(min_len, n_tokens - total)]
            chosen.append(i)
            kept.append(ids)
            total += len(ids)
    return chosen, kept


def repeated_corpus(cfg: RepetitionConfig, data: dict, k: int, seed: int) -> tuple[list[dict], list[list[int]], list[int]]:
    """(the repeated part as texts, the subset's token ids, unique-pool indices)."""
    budget = cfg.budget() + 1
    subset, subset_ids = choose_subset(data, max(1, round(cfg.repeated_fraction * budget / k)),
                                       cfg.prefix + cfg.continuation)
    taken = set(subset)
    unique = [i for i in data["order"] if i not in taken]
    rng = random.Random(f"copies:{seed}:{k}")
    texts = [data["tok"].decode(ids[1:]) for ids in subset_ids]
    copies = [{"text": t if c == 0 else perturbed_copy(t, rng, cfg.near_duplicate_prob), "of": n}
              for n, t in enumerate(texts) for c in range(k)]
    return copies, subset_ids, unique


def build_stream(cfg: RepetitionConfig, data: dict, copies: list[dict], unique: list[int], seed: int):
    """The repeated copies plus unique documents up to the budget (windows are shuffled during training)."""
    budget = cfg.budget() + 1
    rep = [t for ids in D.encode_docs(data["tok"], copies) for t in ids][:budget]
    unique_stream, epochs = D.fill_budget([data["ids"][i] for i in unique], max(1, budget - len(rep)), seed)
    return torch.cat([torch.tensor(rep, dtype=torch.long), unique_stream])[:budget], epochs, len(rep)


def probes(doc_ids: list[list[int]], width: int) -> list[list[int]]:
    """Every non-overlapping ``width``-token chunk of each document, so long documents give several probes."""
    return [d[s:s + width] for d in doc_ids for s in range(0, len(d) - width + 1, width)]


def evaluate(cfg: RepetitionConfig, data: dict, model, subset: list[list[int]], seed: int) -> dict:
    """Held-out loss per source, memorisation of the subset (``subset``: its token ids) and of unseen documents."""
    width = cfg.prefix + cfg.continuation
    per_source = D.loss_per_source(model, data["heldout"], cfg)
    mem = D.memorised(model, probes(subset, width)[:256], cfg.prefix, cfg.continuation)
    control = D.memorised(model, probes(data["held_ids"], width)[:128], cfg.prefix, cfg.continuation)
    facts = D.fact_scores(model, data["tok"], data["world"].facts_eval, seed, cfg.fact_items) if "world" in cfg.sources else {}
    return {"loss": per_source, "heldout_loss": round(D.mean(per_source.values()), 4), "memorised": mem,
            "memorised_control": control, "facts": facts}


def run_k(cfg: RepetitionConfig, data: dict, k: int, seed: int) -> dict:
    t0 = time.perf_counter()
    copies, subset, unique = repeated_corpus(cfg, data, k, seed)
    stream, epochs, n_rep = build_stream(cfg, data, copies, unique, seed)
    model, losses, _ = D.pretrain(cfg, stream, data["tok"].vocab_size, seed, f"k={k}/{seed}")
    row = {"k": k, "seed": seed, "subset_docs": len(subset), "repeated_tokens": n_rep,
           "subset_share_of_data": round(sum(map(len, subset)) / len(stream), 5),
           "unique_epochs": epochs, **evaluate(cfg, data, model, subset, seed), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"[repetition] k={k} seed {seed}: held-out loss {row['heldout_loss']:.3f}, memorised "
          f"{row['memorised']['exact']:.2f} ({row['seconds']:.0f}s)")
    return row


def dedup_counts(texts: list[str]) -> tuple[np.ndarray, dict]:
    """The data stage's dedup on ``texts``: exact text hash first, then MinHash-LSH on what is left."""
    from lmstack.data.dedup import ExactDeduplicator, MinHashDeduplicator, text_hash

    exact = ExactDeduplicator()
    keep = np.array([exact.keep(text_hash(t)) for t in texts], dtype=bool)
    survivors = np.nonzero(keep)[0]
    near = MinHashDeduplicator()
    near_keep, _ = near.find_duplicates(near.signatures([texts[i] for i in survivors]))
    keep[survivors[~near_keep]] = False
    return keep, {"documents": len(texts), "exact_removed": int(exact.removed),
                  "minhash_removed": int((~near_keep).sum()), "kept": int(keep.sum())}


def run_dedup(cfg: RepetitionConfig, data: dict, k: int, seed: int) -> dict:
    """Dedup the k-times-repeated corpus (copies + the unique documents it used), retrain on what is kept."""
    t0 = time.perf_counter()
    copies, subset, unique = repeated_corpus(cfg, data, k, seed)
    _, _, n_rep = build_stream(cfg, data, copies, unique, seed)
    unique_tokens, used_unique = cfg.budget() + 1 - n_rep, []
    for i in unique:
        if unique_tokens <= 0:
            break
        used_unique.append(i)
        unique_tokens -= len(data["ids"][i])
    texts = [c["text"] for c in copies] + [data["train"][i]["text"] for i in used_unique]
    keep, counts = dedup_counts(texts)
    kept_copies = [c for c, kk in zip(copies, keep[:len(copies)]) if kk]
    counts["copies_removed"] = len(copies) - len(kept_copies)
    counts["copies_total"] = len(copies)
    stream, epochs, _ = build_stream(cfg, data, kept_copies, unique, seed)
    model, _, _ = D.pretrain(cfg, stream, data["tok"].vocab_size, seed, f"k={k} deduped/{seed}")
    row = {"k": k, "seed": seed, "dedup": counts, "unique_epochs": epochs,
           **evaluate(cfg, data, model, subset, seed), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"[repetition] k={k} after dedup: removed {counts['copies_removed']}/{len(copies)} copies, held-out loss "
          f"{row['heldout_loss']:.3f}")
    return row


def run_experiment(cfg: RepetitionConfig, out: Path) -> dict:
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    runs, dedup = [], []
    for seed in cfg.seeds:
        data = prepare(cfg, seed)
        runs += [run_k(cfg, data, k, seed) for k in cfg.repeats]
        dedup.append(run_dedup(cfg, data, max(cfg.repeats), seed))
    result = {"config": dataclasses.asdict(cfg), "runs": runs, "dedup": dedup, "seconds": round(time.perf_counter() - t0, 1)}
    plot = save_plot(result, out)
    D.write_outputs(out, result, report(result, plot))
    return result


def _by_k(result: dict, key) -> tuple[list[int], list[float]]:
    ks = sorted({r["k"] for r in result["runs"]})
    return ks, [D.mean(key(r) for r in result["runs"] if r["k"] == k) for k in ks]


def save_plot(result: dict, out: Path) -> str:
    from lmstack.report import save_line_plot

    out.mkdir(parents=True, exist_ok=True)
    save_line_plot(out / "repetition.png", {"held-out loss": _by_k(result, lambda r: r["heldout_loss"])},
                   "Repeating a subset k times in a fixed budget", "k (repetitions of the subset)",
                   "held-out loss (nats/token)",
                   secondary={"memorised (exact)": _by_k(result, lambda r: r["memorised"]["exact"])},
                   secondary_label="share of repeated-doc probes memorised")
    return "repetition.png"


def report(result: dict, plot: str) -> str:
    from lmstack.report import markdown_table

    cfg = result["config"]
    rows = []
    for k in sorted({r["k"] for r in result["runs"]}):
        rs = [r for r in result["runs"] if r["k"] == k]
        rows.append([k, rs[0]["subset_docs"], f"{rs[0]['subset_share_of_data']:.3%}",
                     D.spread(r["heldout_loss"] for r in rs), D.spread(r["memorised"]["exact"] for r in rs),
                     D.spread(r["memorised"]["token_match"] for r in rs),
                     D.spread(r["memorised_control"]["exact"] for r in rs),
                     D.spread(r["facts"].get("all", float("nan")) for r in rs) if rs[0]["facts"] else "-"])
    ks, losses = _by_k(result, lambda r: r["heldout_loss"])
    worst = ks[int(np.argmax(losses))]
    d = result["dedup"][0]
    base = losses[0]
    k1 = [r["heldout_loss"] for r in result["runs"] if r["k"] == ks[0]]
    noise = max(k1) - min(k1) if len(k1) > 1 else 0.0
    noise_text = (f"k={ks[0]} seed spread {noise:.3f}" if len(k1) > 1 else
                  "one seed, so seed noise is not measured: rerun with --set seeds=[0,1]")
    dd_rows = [[f"k={d['k']} deduped (seed {d['seed']})", d["dedup"]["exact_removed"], d["dedup"]["minhash_removed"],
                f"{d['dedup']['copies_removed']}/{d['dedup']['copies_total']}", f"{d['heldout_loss']:.3f}",
                f"{d['memorised']['exact']:.3f}"] for d in result["dedup"]]
    lines = [
        "# Repeated data", "",
        f"Model d={cfg['d_model']} x {cfg['n_layers']} layers, {cfg['steps']} steps x {cfg['batch_size']} x "
        f"{cfg['seq_len']} tokens; {cfg['repeated_fraction']:.0%} of the budget is the repeated subset; seeds "
        f"{cfg['seeds']}; {result['seconds'] / 60:.1f} min.", "",
        "## Claim: a little data repeated many times pollutes the model (Hernandez et al. 2022)", "",
        markdown_table(["k", "subset docs", "subset's share of the tokens", "held-out loss", "memorised (exact 50)",
                        "memorised (token match)", "control: unseen docs memorised", "fact accuracy"], rows), "",
        f"![repetition]({plot})", "",
        f"Measured: held-out loss {base:.3f} at k=1, worst {max(losses):.3f} at k={worst} "
        f"({max(losses) - base:+.3f} nats/token). Hernandez et al. found the damage peaks at an intermediate k; "
        f"here the worst k is {worst}. Verdict: "
        + (f"{max(losses) - base:+.3f} at the worst k with one seed; seed noise is not measured (rerun with "
           "--set seeds=[0,1]), so this is not evidence either way." if len(k1) < 2 else
           f"repetition hurts held-out loss here (+{(max(losses) - base) / base:.1%}), by more than the "
           f"seed-to-seed spread ({noise:.3f})." if max(losses) - base > max(noise, 0.01)
           else f"no damage to held-out loss beyond the seed noise ({noise_text}) -- contradicts the paper at this "
                "size; the likely reason is that a model this small and this briefly trained is far from fitting its "
                "unique data, so the repeated tokens cost little capacity, while the paper's 800M model memorises "
                "them (see the memorisation columns)."), "",
        "## Dedup removes the effect", "",
        markdown_table(["corpus", "exact removed", "MinHash removed", "copies removed", "held-out loss",
                        "memorised (exact)"], dd_rows), "",
        f"Measured (mean over seeds): after dedup and retraining on the same budget the held-out loss is "
        f"{D.mean(x['heldout_loss'] for x in result['dedup']):.3f} (k=1 baseline {base:.3f}, k={d['k']} before dedup "
        f"{losses[ks.index(d['k'])]:.3f}) and the memorised share of the subset is "
        f"{D.mean(x['memorised']['exact'] for x in result['dedup']):.3f}. " + dedup_verdict(result, noise), ""]
    return "\n".join(lines)


def dedup_verdict(result: dict, noise: float) -> str:
    """Did dedup remove the copies, and was there an effect (loss above k=1, or memorisation) for it to remove?"""
    d = result["dedup"]
    k = d[0]["k"]
    seeds = sorted({x["seed"] for x in d})
    loss = {(r["k"], r["seed"]): r["heldout_loss"] for r in result["runs"]}
    mem = {(r["k"], r["seed"]): r["memorised"]["exact"] for r in result["runs"]}
    if not all((kk, s) in loss for kk in (1, k) for s in seeds):
        return "Verdict: needs the k=1 and k=%d runs of the same seeds." % k
    removed = D.mean(x["dedup"]["copies_removed"] / max(1, x["dedup"]["copies_total"]) for x in d)
    before = D.mean(loss[(k, s)] - loss[(1, s)] for s in seeds)
    after = D.mean(x["heldout_loss"] - loss[(1, x["seed"])] for x in d)
    mem_before = D.mean(mem[(k, s)] for s in seeds)
    mem_after = D.mean(x["memorised"]["exact"] for x in d)
    bar = max(noise if noise == noise else 0.0, 0.01)
    text = (f"Dedup removed {removed:.0%} of the copies. Held-out loss minus k=1 (paired by seed): k={k} "
            f"{before:+.3f} before dedup, {after:+.3f} after; memorised {mem_before:.2f} before, {mem_after:.2f} after. ")
    if len(seeds) < 2:
        text += "(One seed: seed noise is not measured, so read the verdict as provisional.) "
    effects = [name for name, present in (("held-out loss", before > bar), ("memorisation", mem_before > 0)) if present]
    if effects:
        fixed = after <= bar and mem_after <= 0.5 * mem_before
        what = " and ".join(effects)
        return text + (f"Verdict: **dedup removes the effect** (on {what})." if fixed else
                       f"Verdict: **dedup does not fully remove the effect** (on {what}; compare the rows above).")
    return text + (f"Verdict: **nothing to remove** at this size: k={k} was not worse than k=1 beyond "
                   f"{bar:.3f} and nothing was memorised, so dedup works on the data (copies removed) but cannot "
                   "show a benefit here.")


def experiment_main(overrides: list[str], out: Path) -> int:
    from lmstack.experiments.cli import parse_config

    result = run_experiment(parse_config(RepetitionConfig, overrides, "experiment repetition"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    ks, losses = _by_k(result, lambda r: r["heldout_loss"])
    _, mem = _by_k(result, lambda r: r["memorised"]["exact"])
    for k, loss, m in zip(ks, losses, mem):
        print(f"result: heldout_loss_k{k}={loss:.4f}")
        print(f"result: memorised_k{k}={m:.3f}")
    d = result["dedup"][0]
    print(f"result: dedup_removed_copies={d['dedup']['copies_removed']}/{d['dedup']['copies_total']}")
    print(f"result: heldout_loss_deduped={d['heldout_loss']:.4f}")
    return 0
