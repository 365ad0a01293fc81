"""Can a small language model recommend? Next-item recommendation on the world's synthetic catalogue.

One catalogue of films and books and its users (``lmstack.data.world.catalogue``), split leave-last-out.
Every method ranks all items a user has not consumed yet, for the same evaluation users:

- baselines: popularity, item-kNN (cosine on co-occurrence), implicit ALS (Hu, Koren & Volinsky 2008);
- prompt-based: a base LM that has read the catalogue (descriptions and genre shelves, no user data)
  ranks every title by its likelihood after the history written as text;
- title SFT: the same LM fine-tuned on "history as titles -> next title";
- item-ID: the same LM with one new token per item (rows initialised from the mean embedding of the item's
  description, P5 / TIGER style), fine-tuned on item-token sequences; and the same with random rows.

The issue's goal: the item-ID model beats popularity and item-kNN on NDCG@10.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmstack.apps import recommend as R
from lmstack.data.world.catalogue import Catalogue, CatalogueConfig, build_catalogue
from lmstack.train.simple import train_steps

METHODS = ("popularity", "item-kNN", "ALS", "prompt (base LM)", "title SFT", "item-ID (description init)",
           "item-ID (random init)")


@dataclass
class RecsysConfig:
    """Default sizes (not yet timed on an idle machine: a run from the speedrun checkpoint took over 21 CPU-minutes)."""

    seed: int = 0
    n_items: int = 120
    n_users: int = 600
    min_history: int = 8
    max_history: int = 20
    n_eval_users: int = 200        # users whose last item is predicted (every method, the same users)
    k: int = 10
    base: str = "auto"             # auto | scratch | a checkpoint directory (its tokenizer two levels up)
    vocab_size: int = 768          # scratch tokenizer / model
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 192
    batch_size: int = 16
    pretrain_steps: int = 600      # on the catalogue texts (continued pretraining when base is a checkpoint)
    pretrain_lr: float = 3e-3
    sft_steps: int = 500
    sft_lr: float = 1e-3
    id_steps: int = 500
    id_lr: float = 1e-3
    history_window: int = 10       # most recent items an LM sees
    random_init_ablation: bool = True
    als_factors: int = 8
    als_regularization: float = 10.0
    als_alpha: float = 1.0      # factors/reg/alpha: the best of a small grid on seed 0
    als_iterations: int = 15
    knn_neighbours: int = 0        # 0 = all
    threads: int = 2

    def __post_init__(self):
        for name in ("n_eval_users", "k", "pretrain_steps", "sft_steps", "id_steps", "batch_size", "history_window"):
            if getattr(self, name) < 0 or (name not in ("pretrain_steps", "sft_steps", "id_steps")
                                           and getattr(self, name) < 1):
                raise ValueError(f"recsys.{name}={getattr(self, name)} is out of range")
        if self.n_eval_users > self.n_users:
            raise ValueError(f"recsys.n_eval_users={self.n_eval_users} > n_users={self.n_users}")

    def catalogue(self) -> CatalogueConfig:
        return CatalogueConfig(n_items=self.n_items, n_users=self.n_users, min_history=self.min_history,
                               max_history=self.max_history)


def base_checkpoint(cfg: RecsysConfig) -> Path | None:
    """The checkpoint to start from: ``base``, or the default run's pretrain checkpoint for ``auto``."""
    from lmstack import REPO_ROOT

    if cfg.base == "scratch":
        return None
    path = REPO_ROOT / "runs/speedrun/checkpoints/pretrain" if cfg.base == "auto" else Path(cfg.base)
    if cfg.base != "auto" and not (path / "config.json").exists():
        raise ValueError(f"recsys.base={cfg.base!r}: no config.json there (give a checkpoint directory, "
                         "'auto' or 'scratch')")
    return path if (path / "config.json").exists() and (path.parent.parent / "tokenizer/tokenizer.json").exists() \
        else None


def base_language_model(cfg: RecsysConfig, cat: Catalogue, log=print):
    """(tokenizer, model, pretraining losses, where it came from): pretrained on the catalogue texts."""
    from lmstack.model import ModelConfig, Transformer, load_pretrained
    from lmstack.tokenizer import Tokenizer, train_tokenizer

    rng = random.Random(f"recsys:{cfg.seed}")
    docs = cat.documents(rng)
    path = base_checkpoint(cfg)
    torch.manual_seed(cfg.seed)
    if path is not None:
        tokenizer = Tokenizer.load(path.parent.parent / "tokenizer/tokenizer.json")
        model = load_pretrained(path)
        origin = f"{path} + {cfg.pretrain_steps} steps on the catalogue"
    else:
        prompts = [R.history_prompt([it.title["en"] for it in cat.items[:5]])]
        tokenizer = train_tokenizer(docs + prompts, cfg.vocab_size, mode="char", progress=False)
        mcfg = ModelConfig.preset("llama-style", vocab_size=tokenizer.vocab_size, d_model=cfg.d_model,
                                  n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads,
                                  max_seq_len=cfg.seq_len)
        model = Transformer(mcfg)
        origin = f"scratch, {cfg.pretrain_steps} steps on the catalogue"
    log(f"[recsys] base LM: {origin}")
    stream = []
    for text in docs:
        stream += [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id]
    stream = torch.tensor(stream)
    seq = min(cfg.seq_len, model.config.max_seq_len, len(stream) - 2)
    gen = torch.Generator().manual_seed(cfg.seed)

    def windows():
        while True:
            starts = torch.randint(0, len(stream) - seq - 1, (cfg.batch_size,), generator=gen).tolist()
            block = torch.stack([stream[s:s + seq + 1] for s in starts])
            yield block[:, :-1], block[:, 1:]

    losses = train_steps(model, windows(), cfg.pretrain_steps, cfg.pretrain_lr, "catalogue pretrain")
    return tokenizer, model, losses, origin


def baseline_scores(cfg: RecsysConfig, cat: Catalogue, train, eval_users) -> dict[str, np.ndarray]:
    n_items = len(cat.items)
    hist = [train[u] for u in eval_users]
    counts = R.interaction_matrix(train, n_items)
    als = R.ImplicitALS(cfg.als_factors, cfg.als_regularization, cfg.als_alpha, cfg.als_iterations, cfg.seed).fit(counts)
    return {"popularity": R.popularity_scores(train, n_items, len(eval_users)),
            "item-kNN": R.item_knn_scores(train, n_items, hist, cfg.knn_neighbours),
            "ALS": als.user_factors[eval_users] @ als.item_factors.T}


def lm_scores(cfg: RecsysConfig, cat: Catalogue, train, eval_users, log=print) -> tuple[dict, dict]:
    """Scores of the four LM recommenders, and their training losses."""
    tokenizer, base, pre_losses, origin = base_language_model(cfg, cat, log)
    titles = [it.title["en"] for it in cat.items]
    hist = [train[u] for u in eval_users]
    scores, info = {}, {"base": origin, "pretrain_loss": _tail(pre_losses)}
    scores["prompt (base LM)"] = R.text_scores(base, tokenizer, titles, hist, cfg.history_window)

    sft = copy.deepcopy(base)
    rng = random.Random(f"recsys-sft:{cfg.seed}")
    examples = R.text_examples(train, cfg.history_window)
    batches = R.prompt_and_answer_batches(tokenizer, examples, titles, cfg.batch_size, rng)
    info["sft_loss"] = _tail(train_steps(sft, batches, cfg.sft_steps, cfg.sft_lr, "title SFT"))
    scores["title SFT"] = R.text_scores(sft, tokenizer, titles, hist, cfg.history_window)
    del sft

    inits = ["description"] + (["random"] if cfg.random_init_ablation else [])
    for init in inits:
        model = copy.deepcopy(base)
        first = R.add_item_tokens(model, tokenizer, [it.description("en") for it in cat.items], init)
        rng = random.Random(f"recsys-id:{cfg.seed}")
        torch.manual_seed(cfg.seed)
        batches = R.item_id_batches(tokenizer, first, train, cfg.history_window, cfg.batch_size, rng)
        losses = train_steps(model, batches, cfg.id_steps, cfg.id_lr, f"item-ID ({init})",
                             loss_fn=R.item_loss(first, len(cat.items)))
        info[f"id_loss_{init}"] = _tail(losses)
        scores[f"item-ID ({init} init)"] = R.item_id_scores(model, tokenizer, first, len(cat.items), hist,
                                                            cfg.history_window)
    return scores, info


def _tail(losses: list[float]) -> float:
    tail = losses[-20:]
    return round(sum(tail) / len(tail), 4) if tail else float("nan")


def run_experiment(cfg: RecsysConfig, out_dir: str | Path, log=print) -> dict:
    from lmstack.runs import atomic_write_json, atomic_write_text

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cat = build_catalogue(cfg.catalogue(), cfg.seed)
    train, targets = cat.split()
    eval_users = sorted(random.Random(f"recsys-eval:{cfg.seed}").sample(range(len(cat.users)), cfg.n_eval_users))
    scores = baseline_scores(cfg, cat, train, eval_users)
    lm, info = lm_scores(cfg, cat, train, eval_users, log)
    scores.update(lm)
    hist, held_out = [train[u] for u in eval_users], [targets[u] for u in eval_users]
    metrics = {name: R.evaluate_scores(s, hist, held_out, cfg.k) for name, s in scores.items()}
    for name, m in metrics.items():
        log(f"[recsys] {name:28s} recall@{cfg.k} {m[f'recall@{cfg.k}']:.3f}  ndcg@{cfg.k} {m[f'ndcg@{cfg.k}']:.3f}")
    result = {"config": dataclasses.asdict(cfg), "metrics": metrics, "training": info,
              "data": {"n_items": len(cat.items), "n_users": len(cat.users),
                       "interactions": sum(len(u.history) for u in cat.users),
                       "mean_history": round(float(np.mean([len(u.history) for u in cat.users])), 2)},
              "goal": goal_verdict(metrics, cfg.k), "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "results.json", result)
    plot = save_plot(metrics, cfg.k, out / "recsys.png")
    atomic_write_text(out / "report.md", report(result, plot, cat))
    return result


def goal_verdict(metrics: dict, k: int) -> dict:
    key = f"ndcg@{k}"
    ours = metrics["item-ID (description init)"][key]
    best_simple = max(metrics["popularity"][key], metrics["item-kNN"][key])
    se = metrics["item-ID (description init)"][key + "_se"]
    return {"item_id_ndcg": ours, "best_of_popularity_and_knn": best_simple, "met": ours > best_simple,
            "margin": ours - best_simple, "item_id_se": se, "clear": ours - best_simple > se}


def save_plot(metrics: dict, k: int, path: Path) -> str:
    from lmstack.report import pyplot, save_figure

    plt = pyplot()
    names = list(metrics)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for offset, key in ((-0.2, f"recall@{k}"), (0.2, f"ndcg@{k}")):
        ax.bar([i + offset for i in range(len(names))], [metrics[n][key] for n in names], width=0.4,
               yerr=[metrics[n][key + "_se"] for n in names], capsize=3, label=key)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_title("Next-item recommendation (held-out last item, mean ± s.e. over users)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path.name


def goal_margin_text(goal: dict) -> str:
    """How far the item-ID model is ahead of (or behind) the best simple baseline, in its standard errors."""
    se = goal["item_id_se"]
    if goal["met"]:
        return "." if goal["clear"] else f", but by less than one standard error ({se:.3f}): not a clear win at this size."
    behind = -goal["margin"]
    return f": behind by {behind:.3f}" + (f" ({behind / se:.1f} standard errors)." if se > 0 else ".")


def report(result: dict, plot: str, cat: Catalogue) -> str:
    from lmstack.report import markdown_table

    cfg, k, data, goal = result["config"], result["config"]["k"], result["data"], result["goal"]
    rows = [[name, f"{m[f'recall@{k}']:.3f} ± {m[f'recall@{k}_se']:.3f}", f"{m[f'ndcg@{k}']:.3f} ± {m[f'ndcg@{k}_se']:.3f}"]
            for name, m in result["metrics"].items()]
    sample = cat.items[0]
    verdict = "met" if goal["met"] else "NOT met"
    lines = ["# Recommendation with a language model", "",
             f"{data['n_items']} items, {data['n_users']} users, {data['interactions']} interactions "
             f"(mean history {data['mean_history']}); the last item of {cfg['n_eval_users']} users is held out "
             f"and every method ranks all items the user has not consumed. Base LM: {result['training']['base']}. "
             f"Seed {cfg['seed']}; {result['seconds'] / 60:.1f} min.", "",
             f"Item example: {sample.description('en')} / {sample.description('zh')}", "",
             markdown_table(["method", f"Recall@{k}", f"NDCG@{k}"], rows), "",
             f"![recommendation]({plot})", "",
             f"**Goal** (item-ID model beats popularity and item-kNN on NDCG@{k}): {goal['item_id_ndcg']:.3f} "
             f"against {goal['best_of_popularity_and_knn']:.3f} -> **{verdict}**{goal_margin_text(goal)}", "",
             f"Training losses (mean of the last 20 steps): {result['training']}.", "",
             f"Chance level: Recall@{k} ≈ {k / (data['n_items'] - data['mean_history']):.3f} "
             "(k over the unseen items)."]
    return "\n".join(lines) + "\n"


def experiment_main(overrides: list[str], out: Path) -> int:
    """``lmstack experiment recsys``: run, print the report and ``result:`` lines."""
    from lmstack.experiments.cli import parse_config

    result = run_experiment(parse_config(RecsysConfig, overrides, "experiment recsys"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    k = result["config"]["k"]
    for name, m in result["metrics"].items():
        key = name.split(" (")[0].replace(" ", "_") + ("_" + name.split("(")[1].split()[0] if "(" in name else "")
        print(f"result: {key}_ndcg@{k}={m[f'ndcg@{k}']:.4f}")
    print(f"result: goal_met={result['goal']['met']}")
    return 0
