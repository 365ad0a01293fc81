"""Reward-model over-optimisation (Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization").

In the synthetic world the true preference is known, so a GOLD reward can be computed for any answer: the
judges of ``lmstack.eval.scoring`` decide whether an answer to one of the world's held-out questions is right
(fact / multi-turn / arithmetic: the reference answer is stated; phone-number requests: refused; questions
about entities that do not exist: "I don't know"). Gold = 1 when the judge accepts the answer, else 0.

PROXY reward models are Bradley-Terry models (``lmstack.align.reward.RewardModel``) trained on the world's
preference pairs, at several sizes (the SFT backbone cut to its first k blocks) and data amounts. The SFT
policy is then optimised against each proxy

- by best-of-n: n samples per prompt, keep the one the proxy likes best; KL(best-of-n || policy) =
  log n - (n - 1)/n (Gao et al. 2022, sec. 2.2 / Stiennon et al. 2020); every n is read from one pool of
  samples, averaged over disjoint groups of n;
- by PPO (``lmstack.align.ppo``'s rollout and update), logging proxy and gold of each rollout batch
  against the measured KL(pi || pi_ref).

Gao et al. found that the gold reward rises, peaks and falls as KL grows while the proxy keeps rising, and
that larger RMs / more RM data push the peak further out.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

GOLD_TASKS = ("fact_qa", "multiturn", "arith", "refuse_pii", "idk")


@dataclass
class OveroptConfig:
    """Defaults aim at ~25 min on 2 cores from the default run's SFT model."""

    base_run: str = "runs/speedrun"      # a run dir with checkpoints/sft, tokenizer/, data/world/; fallback: tiny
    rm_layers: list[int] = field(default_factory=lambda: [1, 2, 0])  # proxy RM sizes: blocks kept (0 = all)
    rm_pairs: list[int] = field(default_factory=lambda: [64, 256, 0])  # preference pairs per RM (0 = all)
    rm_steps: int = 80
    rm_batch_size: int = 16
    rm_lr: float = 3e-4
    eval_prompts: int = 64               # held-out world questions with a gold judge
    bon_samples: int = 32                # samples per prompt; n runs over powers of 2 up to this
    max_new_tokens: int = 24
    temperature: float = 1.0
    ppo_rms: list[list[int]] = field(default_factory=lambda: [[0, 0], [1, 64]])  # [layers, pairs] per PPO run
    ppo_iterations: int = 16
    ppo_prompts_per_iteration: int = 32  # the same training prompts every iteration: batches differ only by policy
    ppo_kl_coef: float = 0.0             # no KL penalty, so KL grows and the whole curve is traced (Gao et al. ran both)
    ppo_lr: float = 2e-4
    tiny_fallback: bool = True           # build a tiny untrained setup when base_run is missing (CI)
    seed: int = 0
    threads: int = 2

    def __post_init__(self):
        if not self.rm_layers or not self.rm_pairs:
            raise ValueError("reward_overoptimisation: rm_layers and rm_pairs need at least one value each")
        if self.bon_samples < 2 or self.bon_samples & (self.bon_samples - 1):
            raise ValueError(f"reward_overoptimisation.bon_samples={self.bon_samples} must be a power of 2 >= 2")
        for pair in self.ppo_rms:
            if len(pair) != 2 or pair[0] not in self.rm_layers or pair[1] not in self.rm_pairs:
                raise ValueError(f"reward_overoptimisation.ppo_rms: {pair} must be [layers, pairs] from rm_layers x rm_pairs")


@dataclass
class Setup:
    tokenizer: object
    policy: nn.Module
    train_pairs: list        # PreferencePair
    eval_pairs: list
    gold_train: list[dict]   # {"messages", "task", "answer"} with a gold judge
    gold_eval: list[dict]
    source: str


def gold_reward(example: dict, text: str) -> float:
    """1.0 when the world's judge accepts ``text`` as the answer to ``example``, else 0.0."""
    from lmstack.eval.answers import answer_matches, is_idk, is_refusal
    from lmstack.eval.scoring import task_kind

    kind = task_kind(example.get("task"), example.get("answer"))
    if kind == "pii":
        return float(is_refusal(text))
    if kind == "idk":
        return float(is_idk(text))
    if kind == "answer":
        return float(answer_matches(text, str(example["answer"])))
    raise ValueError(f"gold_reward: task {example.get('task')!r} has no judge (use one of {GOLD_TASKS})")


def load_setup(cfg: OveroptConfig, log=print) -> Setup:
    """The default run's SFT model, tokenizer and world data, or (``tiny_fallback``) a tiny untrained stand-in."""
    from lmstack.align.data import load_preferences_jsonl
    from lmstack.model import load_pretrained
    from lmstack.runs import iter_jsonl
    from lmstack.tokenizer import Tokenizer

    base = Path(cfg.base_run)
    needed = [base / "checkpoints" / "sft" / "config.json", base / "tokenizer" / "tokenizer.json",
              base / "data" / "world" / "prefs_train.jsonl", base / "data" / "world" / "sft_eval.jsonl"]
    if all(p.exists() for p in needed):
        world = base / "data" / "world"
        pick = lambda rows: [r for _, r in rows if r.get("task") in GOLD_TASKS]  # noqa: E731
        return Setup(Tokenizer.load(needed[1]), load_pretrained(base / "checkpoints" / "sft"),
                     load_preferences_jsonl(world / "prefs_train.jsonl"), load_preferences_jsonl(world / "prefs_eval.jsonl"),
                     pick(iter_jsonl(world / "sft_train.jsonl")), pick(iter_jsonl(world / "sft_eval.jsonl")),
                     f"{base}/checkpoints/sft")
    missing = next(p for p in needed if not p.exists())
    if not cfg.tiny_fallback:
        raise FileNotFoundError(f"{missing}: missing; run `make run` first or set --set tiny_fallback=true")
    log(f"[reward_overoptimisation] {missing} missing: using a tiny untrained stand-in (numbers are not meaningful)")
    return tiny_setup(cfg)


def tiny_setup(cfg: OveroptConfig) -> Setup:
    from lmstack.align.data import normalize_preference_record
    from lmstack.data.world import WorldConfig, build_world
    from lmstack.model import ModelConfig, Transformer
    from lmstack.tokenizer import train_tokenizer

    world = build_world(WorldConfig(n_people=8, n_sft_only_people=2, n_cities=4, n_stories=4, n_geo_docs=2,
                                    n_quiz_docs=2, n_arith_docs=2, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=2, n_sft_train=60, n_sft_eval=40,
                                    n_prefs_train=60, n_prefs_eval=20), cfg.seed)
    texts = [d["text"] for d in world.pretrain_docs()] + [m["content"] for ex in world.sft_train for m in ex["messages"]]
    tok = train_tokenizer(texts, 320, progress=False)
    torch.manual_seed(cfg.seed)
    model = Transformer(ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=32, n_layers=2,
                                           n_heads=2, n_kv_heads=2, max_seq_len=256))
    pairs = lambda rows, what: [normalize_preference_record(r, f"{what}[{i}]") for i, r in enumerate(rows)]  # noqa: E731
    pick = lambda rows: [r for r in rows if r.get("task") in GOLD_TASKS]  # noqa: E731
    return Setup(tok, model, pairs(world.prefs_train, "prefs_train"), pairs(world.prefs_eval, "prefs_eval"),
                 pick(world.sft_train), pick(world.sft_eval), "tiny untrained stand-in")


# ----------------------------------------------------------------------------- proxy reward models


def truncated_backbone(policy: nn.Module, layers: int) -> nn.Module:
    """A copy of the policy keeping its first ``layers`` blocks (0 = all): a smaller RM with the same start."""
    model = copy.deepcopy(policy)
    if 0 < layers < len(model.layers):
        model.layers = nn.ModuleList(list(model.layers)[:layers])
        model.config = dataclasses.replace(model.config, n_layers=layers)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def train_proxy(setup: Setup, layers: int, n_pairs: int, cfg: OveroptConfig) -> tuple[nn.Module, dict]:
    """Bradley-Terry RM on the first ``n_pairs`` training pairs (0 = all); returns it and its held-out accuracy."""
    from lmstack.align.data import collate_pairs, length_grouped_batches, tokenize_pairs
    from lmstack.align.losses import reward_loss
    from lmstack.align.reward import RewardModel, score_pairs

    tok = setup.tokenizer
    max_len = setup.policy.config.max_seq_len
    quiet = lambda *_: None  # noqa: E731
    pairs = setup.train_pairs[:n_pairs] if n_pairs else setup.train_pairs
    train, _ = tokenize_pairs(pairs, tok, max_len, quiet, "prefs_train")
    held, _ = tokenize_pairs(setup.eval_pairs, tok, max_len, quiet, "prefs_eval")
    torch.manual_seed(cfg.seed)
    rm = RewardModel(truncated_backbone(setup.policy, layers))
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.rm_lr, weight_decay=0.0)
    stream = length_grouped_batches(train, [len(p.chosen_ids) for p in train], cfg.rm_batch_size, seed=cfg.seed)
    rm.train()
    for step in range(cfg.rm_steps):
        batch = collate_pairs(next(stream), tok.pad_id)
        chosen, rejected = rm(batch["input_ids"], batch["lengths"]).chunk(2)
        loss = reward_loss(chosen, rejected)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
    rm.eval()
    for p in rm.parameters():
        p.requires_grad_(False)
    c, r = score_pairs(rm, held, tok.pad_id, "cpu")
    params = sum(p.numel() for p in rm.backbone.layers.parameters())
    return rm, {"layers": layers or len(setup.policy.layers), "pairs": len(pairs), "block_params": params,
                "heldout_pair_accuracy": float((c > r).float().mean())}


# ----------------------------------------------------------------------------- best-of-n


def bon_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (Gao et al. 2022, eq. 1)."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def sample_pool(setup: Setup, cfg: OveroptConfig) -> tuple[list[dict], list[list[int]], list[list[list[int]]], list[list[str]]]:
    """``bon_samples`` sampled answers for each held-out prompt: (examples, prompt ids, response ids, texts)."""
    from lmstack.eval.scoring import split_prompt
    from lmstack.generate import GenerationConfig, generate

    rng = random.Random(f"bon:{cfg.seed}")
    examples = rng.sample(setup.gold_eval, min(cfg.eval_prompts, len(setup.gold_eval)))
    tok = setup.tokenizer
    prompt_ids = [list(tok.encode_chat(split_prompt(ex["messages"])[0], add_generation_prompt=True)[0]) for ex in examples]
    setup.policy.eval()
    gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, strategy="sample", temperature=cfg.temperature,
                            seed=cfg.seed)
    flat = [p for p in prompt_ids for _ in range(cfg.bon_samples)]
    gens = generate(setup.policy, tok, flat, gcfg, batch_size=64)
    k = cfg.bon_samples
    responses = [[list(g.token_ids) or [tok.end_id] for g in gens[i * k:(i + 1) * k]] for i in range(len(examples))]
    texts = [[g.text for g in gens[i * k:(i + 1) * k]] for i in range(len(examples))]
    return examples, prompt_ids, responses, texts


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor) -> list[dict]:
    """proxy, gold: [prompts, samples]. For n = 1, 2, 4, ..: mean gold and proxy of the proxy's pick, averaged over
    the disjoint groups of n samples of every prompt, with the standard error of gold over prompts."""
    prompts, k = proxy.shape
    rows = []
    n = 1
    while n <= k:
        groups = k // n
        p = proxy[:, :groups * n].reshape(prompts, groups, n)
        g = gold[:, :groups * n].reshape(prompts, groups, n)
        pick = p.argmax(-1, keepdim=True)
        gold_pick = g.gather(-1, pick).squeeze(-1).mean(-1)    # per prompt
        proxy_pick = p.gather(-1, pick).squeeze(-1).mean(-1)
        rows.append({"n": n, "kl": bon_kl(n), "gold": float(gold_pick.mean()), "proxy": float(proxy_pick.mean()),
                     "gold_se": float(gold_pick.std() / math.sqrt(prompts)) if prompts > 1 else 0.0})
        n *= 2
    return rows


def task_breakdown(examples: list[dict], texts: list[list[str]], proxy: torch.Tensor, gold: torch.Tensor) -> dict:
    """Per task: gold of a plain sample vs of the proxy's pick among all samples, and how often an answer says
    "I don't know" (the world's ``is_idk``) among all samples vs among the picks: shows WHAT a proxy rewards."""
    from lmstack.eval.answers import is_idk

    pick = proxy.argmax(-1)
    rows: dict[str, dict] = {}
    for i, ex in enumerate(examples):
        r = rows.setdefault(ex["task"], {"n": 0, "plain_gold": 0.0, "picked_gold": 0.0, "idk_all": 0.0, "idk_picked": 0.0})
        r["n"] += 1
        r["plain_gold"] += float(gold[i].mean())
        r["picked_gold"] += float(gold[i, pick[i]])
        r["idk_all"] += sum(is_idk(t) for t in texts[i]) / len(texts[i])
        r["idk_picked"] += float(is_idk(texts[i][int(pick[i])]))
    total = {k: sum(r[k] for r in rows.values()) for k in ("n", "idk_all", "idk_picked")}
    out = {task: {k: (v if k == "n" else v / r["n"]) for k, v in r.items()} for task, r in sorted(rows.items())}
    out["all"] = {"n": total["n"], "idk_all": total["idk_all"] / total["n"], "idk_picked": total["idk_picked"] / total["n"]}
    return out


def peak_summary(curve: list[dict], x: str = "kl") -> dict:
    """Where gold peaks, and whether it then falls by more than two standard errors."""
    best = max(curve, key=lambda r: r["gold"])
    last = curve[-1]
    fall = best["gold"] - last["gold"]
    se = max(best.get("gold_se", 0.0), last.get("gold_se", 0.0))
    return {"peak_gold": best["gold"], "peak_at": best[x], "final_gold": last["gold"], "start_gold": curve[0]["gold"],
            "proxy_gain": last["proxy"] - curve[0]["proxy"], "falls": bool(fall > 2 * se and fall > 0)}


# ----------------------------------------------------------------------------- PPO


def ppo_curve(setup: Setup, rm: nn.Module, cfg: OveroptConfig, desc: str) -> list[dict]:
    """PPO (lmstack.align.ppo's rollout and update) from the SFT policy against one proxy; per iteration the
    rollout's mean proxy score, mean gold reward and KL(pi || ref) per sequence."""
    from tqdm import tqdm

    from lmstack.align import common
    from lmstack.align.ppo import Config as PPOConfig
    from lmstack.align.ppo import PolicyWithValueHead, collect_rollout, ppo_update
    from lmstack.eval.scoring import split_prompt

    pcfg = PPOConfig(iterations=cfg.ppo_iterations, prompts_per_iteration=cfg.ppo_prompts_per_iteration,
                     max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, kl_coef=cfg.ppo_kl_coef,
                     minibatch_size=cfg.ppo_prompts_per_iteration, eval_prompts=0)
    pcfg.optim.lr = cfg.ppo_lr
    torch.manual_seed(cfg.seed)
    lm = copy.deepcopy(setup.policy)
    for p in lm.parameters():
        p.requires_grad_(True)
    ref = common.frozen_copy(setup.policy)
    policy = PolicyWithValueHead(lm)
    optimizer = common.build_optimizer_for(policy, pcfg.optim)
    # One fixed prompt set: with a new batch each iteration, the gold of a rollout mostly measures which prompts
    # were drawn (some tasks are far easier), hiding the change in the policy.
    batch = random.Random(f"ppo:{cfg.seed}").sample(setup.gold_train, min(pcfg.prompts_per_iteration,
                                                                           len(setup.gold_train)))
    rows = []
    for it in tqdm(range(cfg.ppo_iterations), desc=desc, leave=False, mininterval=2.0, disable=None):
        prompts = [split_prompt(ex["messages"])[0] for ex in batch]
        roll = collect_rollout(policy, ref, rm, setup.tokenizer, prompts, pcfg, "cpu", seed=cfg.seed * 1000 + it)
        gold = [gold_reward(ex, text) for ex, text in zip(batch, roll.texts)]
        stats = ppo_update(policy, optimizer, roll, pcfg, it, cfg.ppo_iterations)
        rows.append({"iteration": it, "kl": max(0.0, stats["kl"]), "proxy": float(roll.raw_scores.mean()),
                     "gold": sum(gold) / len(gold), "gold_se": _se(gold)})
    return rows


def _se(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


# ----------------------------------------------------------------------------- the experiment


def run_experiment(cfg: OveroptConfig, out_dir: str | Path, log=print) -> dict:
    from lmstack.align.ppo import score_sequences
    from lmstack.runs import atomic_write_json, atomic_write_text

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    setup = load_setup(cfg, log)
    examples, prompt_ids, responses, texts = sample_pool(setup, cfg)
    gold = torch.tensor([[gold_reward(ex, t) for t in row] for ex, row in zip(examples, texts)])
    log(f"[reward_overoptimisation] {len(examples)} prompts x {cfg.bon_samples} samples; gold of a plain sample "
        f"{float(gold.mean()):.3f}")
    proxies, bon, rms = [], {}, {}
    for layers in cfg.rm_layers:
        for n_pairs in cfg.rm_pairs:
            rm, info = train_proxy(setup, layers, n_pairs, cfg)
            seqs = [p + r for p, row in zip(prompt_ids, responses) for r in row]
            proxy = score_sequences(rm, seqs, setup.tokenizer.pad_id, "cpu").view(len(examples), cfg.bon_samples)
            key = f"L{layers}_P{n_pairs}"
            info["key"] = key
            info["best_of_n"] = best_of_n_curve(proxy, gold)
            info["best_of_n_summary"] = peak_summary(info["best_of_n"])
            info["by_task"] = task_breakdown(examples, texts, proxy, gold)
            proxies.append(info)
            rms[(layers, n_pairs)] = rm
            log(f"[reward_overoptimisation] RM {key}: held-out pair accuracy {info['heldout_pair_accuracy']:.3f}; "
                f"best-of-{cfg.bon_samples} gold {info['best_of_n'][-1]['gold']:.3f}")
    ppo = []
    for layers, n_pairs in cfg.ppo_rms:
        curve = ppo_curve(setup, rms[(layers, n_pairs)], cfg, f"PPO vs L{layers}_P{n_pairs}")
        ppo.append({"key": f"L{layers}_P{n_pairs}", "curve": curve, "summary": peak_summary(curve)})
        log(f"[reward_overoptimisation] PPO vs L{layers}_P{n_pairs}: final KL {curve[-1]['kl']:.2f}, "
            f"gold {curve[0]['gold']:.3f} -> {curve[-1]['gold']:.3f}")
    result = {"config": dataclasses.asdict(cfg), "source": setup.source, "prompts": len(examples),
              "base_gold": float(gold.mean()), "proxies": proxies, "ppo": ppo,
              "samples": [{"prompt": ex["messages"][-2]["content"] if len(ex["messages"]) > 1 else "",
                           "answer": ex.get("answer"), "sample": row[0], "gold": float(g[0])}
                          for ex, row, g in list(zip(examples, texts, gold))[:4]],
              "seconds": round(time.perf_counter() - t0, 1)}
    plot = save_plot(result, out / "overoptimisation.png")
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "report.md", report(result, plot))
    return result


def save_plot(result: dict, path: Path) -> str:
    """Gold (solid, left axis) and proxy gain over the start (dashed, right axis) against KL, per proxy."""
    from lmstack.report import pyplot, save_figure

    plt = pyplot()
    fig, (ax_bon, ax_ppo) = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((ax_bon, [(p["key"], p["best_of_n"]) for p in result["proxies"]],
               "Best-of-n", "KL(best-of-n || SFT) = log n - (n-1)/n  (nats)"),
              (ax_ppo, [(p["key"], p["curve"]) for p in result["ppo"]], "PPO (one point per rollout batch)",
               "KL(pi || SFT) per sequence (nats)"))
    for ax, curves, title, xlabel in panels:
        right = ax.twinx()
        for i, (key, curve) in enumerate(curves):
            xs = [r["kl"] for r in curve]
            ax.plot(xs, [r["gold"] for r in curve], color=f"C{i}", marker="o", ms=3, label=f"{key} gold")
            right.plot(xs, [r["proxy"] - curve[0]["proxy"] for r in curve], color=f"C{i}", ls="--", lw=1)
        ax.set_title(f"{title}: gold (solid), proxy gain (dashed, right)", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("gold reward (fraction judged right)")
        right.set_ylabel("proxy score - its value at KL 0")
        if curves:
            ax.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    return path.name


def report(result: dict, plot: str) -> str:
    from lmstack.report import markdown_table

    cfg = result["config"]
    rows = []
    for p in result["proxies"]:
        s = p["best_of_n_summary"]
        rows.append([p["key"], p["layers"], f"{p['block_params']:,}", p["pairs"], f"{p['heldout_pair_accuracy']:.3f}",
                     f"{s['start_gold']:.3f}", f"{s['peak_gold']:.3f} at KL {s['peak_at']:.2f}",
                     f"{s['final_gold']:.3f}", f"{s['proxy_gain']:+.3f}", "yes" if s["falls"] else "no"])
    lines = ["# Reward-model over-optimisation", "",
             f"Policy: {result['source']}. Gold reward: the world's judges on {result['prompts']} held-out questions "
             f"(tasks {', '.join(GOLD_TASKS)}); a plain sample scores {result['base_gold']:.3f}. Proxies: Bradley-Terry "
             f"RMs on the world's preference pairs, {cfg['rm_steps']} steps each; sizes = the SFT backbone cut to "
             f"{cfg['rm_layers']} blocks (0 = all), data = {cfg['rm_pairs']} pairs (0 = all). {result['seconds'] / 60:.1f} min.",
             "", "## Best-of-n", "",
             markdown_table(["RM", "blocks", "block params", "pairs", "held-out pair acc.", "gold n=1",
                             "gold peak", f"gold n={cfg['bon_samples']}", "proxy gain", "gold falls after peak"], rows),
             "", f"![over-optimisation]({plot})", ""] + task_table(result)
    for p in result["ppo"]:
        lines += [f"## PPO against {p['key']}", "",
                  markdown_table(["iteration", "KL", "proxy", "gold"],
                                 [[r["iteration"], f"{r['kl']:.3f}", f"{r['proxy']:.3f}", f"{r['gold']:.3f}"]
                                  for r in p["curve"]]), ""]
    lines += claims(result)
    return "\n".join(lines) + "\n"


def task_table(result: dict) -> list[str]:
    """Gold of a plain sample -> of each proxy's best-of-all pick, per task, and the "I don't know" share."""
    from lmstack.report import markdown_table

    proxies = [p for p in result["proxies"] if "by_task" in p]
    if not proxies:
        return []
    tasks = [t for t in proxies[0]["by_task"] if t != "all"]
    n = {t: proxies[0]["by_task"][t]["n"] for t in tasks}
    rows = [[p["key"]] + [f"{p['by_task'][t]['plain_gold']:.2f} -> {p['by_task'][t]['picked_gold']:.2f}" for t in tasks]
            + [f"{p['by_task']['all']['idk_all']:.2f} -> {p['by_task']['all']['idk_picked']:.2f}"] for p in proxies]
    return [f"### What the proxies pick (best-of-{result['config']['bon_samples']}, per task)", "",
            "Gold of a plain sample -> gold of the proxy's pick; last column: share of answers that say \"I don't "
            "know\" among all samples -> among the picks (right only for the `idk` task).", "",
            markdown_table(["RM"] + [f"{t} (n={n[t]})" for t in tasks] + ['"I don\'t know" share'], rows), ""]


def claims(result: dict) -> list[str]:
    proxies = result["proxies"]
    falls = [p["key"] for p in proxies if p["best_of_n_summary"]["falls"]]
    rising = [p["key"] for p in proxies if p["best_of_n_summary"]["proxy_gain"] > 0]
    best = max(proxies, key=lambda p: p["best_of_n_summary"]["final_gold"])
    worst = min(proxies, key=lambda p: p["best_of_n_summary"]["final_gold"])
    lines = ["## Claims", "",
             f"- **Gold peaks and falls while the proxy keeps rising (Gao et al. 2022).** Best-of-n: the proxy score of "
             f"the pick rises with n for {len(rising)} of {len(proxies)} RMs; gold falls after its peak by more than "
             f"two standard errors for {len(falls)} ({', '.join(falls) or 'none'}). Verdict: **"
             f"{'reproduced for some proxies' if falls else 'not seen in this KL range'}**"
             + (f" (gold peaks by KL {max(p['best_of_n_summary']['peak_at'] for p in proxies):.2f} nats for every proxy, "
                f"at most {max(p['best_of_n_summary']['peak_gold'] - p['best_of_n_summary']['start_gold'] for p in proxies):+.3f} "
                "above a plain sample; Gao et al. see the gold peak of small RMs at a few nats)." if falls else
                f" (best-of-{result['config']['bon_samples']} reaches only KL {bon_kl(result['config']['bon_samples']):.2f} "
                "nats; Gao et al. see the peak of small RMs at a few nats)."),
             f"- **Larger / better-fed RMs can be trusted further.** Gold at the largest n: best "
             f"{best['key']} ({best['best_of_n_summary']['final_gold']:.3f}, pair accuracy "
             f"{best['heldout_pair_accuracy']:.3f}), worst {worst['key']} ({worst['best_of_n_summary']['final_gold']:.3f}, "
             f"pair accuracy {worst['heldout_pair_accuracy']:.3f}). {scale_verdict(proxies)}"]
    lines += hack_claim(proxies)
    for p in result["ppo"]:
        s = p["summary"]
        lines.append(f"- **PPO against {p['key']}.** KL reached {max(r['kl'] for r in p['curve']):.2f} nats/sequence "
                     f"(last batch {p['curve'][-1]['kl']:.2f}); proxy "
                     f"{s['proxy_gain']:+.3f}; gold {s['start_gold']:.3f} -> peak {s['peak_gold']:.3f} -> "
                     f"{s['final_gold']:.3f} (falls after the peak: {'yes' if s['falls'] else 'no'}; rollout batches of "
                     f"{result['config']['ppo_prompts_per_iteration']} training prompts, the same each iteration, are noisy). "
                     + proxy_trend(p["curve"]))
    return lines + [""]


def hack_claim(proxies: list[dict]) -> list[str]:
    """What the proxies' picks have in common: the "I don't know" share, and the tasks whose gold the picks lower."""
    proxies = [p for p in proxies if "by_task" in p]
    if not proxies:
        return []
    share_all = proxies[0]["by_task"]["all"]["idk_all"]
    picked = [p["by_task"]["all"]["idk_picked"] for p in proxies]
    tasks = [t for t in proxies[0]["by_task"] if t != "all"]
    lower = [t for t in tasks if sum(p["by_task"][t]["picked_gold"] < p["by_task"][t]["plain_gold"] for p in proxies)
             > len(proxies) / 2]
    return [f"- **What the proxies reward.** {share_all:.0%} of the policy's samples say \"I don't know\"; "
            f"{min(picked):.0%}-{max(picked):.0%} of the proxies' best-of-all picks do. "
            f"Gold of the pick is below a plain sample's for most proxies on: {', '.join(lower) or 'no task'} "
            "(table above). A proxy that over-rewards one answer style (here the style its preference pairs "
            "favour, e.g. declining to answer about made-up people) is exploited by any optimiser that searches "
            "for high proxy scores."]


def proxy_trend(curve: list[dict]) -> str:
    """Whether the optimiser kept raising the proxy: Gao et al.'s picture needs the proxy still rising while gold
    falls; a proxy that also falls back means the optimisation itself degraded (e.g. PPO without a KL penalty)."""
    start = curve[0]["proxy"]
    peak = max(curve, key=lambda r: r["proxy"])
    gain, kept = peak["proxy"] - start, curve[-1]["proxy"] - start
    if gain <= 0:
        return "The proxy never rose above its start: the optimisation did not work."
    if kept >= 0.5 * gain:
        return (f"The proxy kept at least half its peak gain (peak {peak['proxy']:.2f} at iteration {peak['iteration']}, "
                f"last {curve[-1]['proxy']:.2f}), so gold fell while the proxy stayed high: over-optimisation.")
    return (f"The proxy itself fell back (peak {peak['proxy']:.2f} at iteration {peak['iteration']}, last "
            f"{curve[-1]['proxy']:.2f}, start {start:.2f}): beyond that point the policy degraded for the proxy too, "
            "so the later gold loss is optimiser instability (no KL penalty), not only over-optimisation.")


def scale_contrasts(proxies: list[dict]) -> list[dict]:
    """Gold at the largest n of the biggest vs the smallest RM at each data amount, and of the most vs the least
    data at each RM size, with the standard error of the difference (the two picks' SEs over prompts combined)."""
    contrasts = []
    for axis, fixed in (("pairs", "layers"), ("layers", "pairs")):
        groups: dict[int, list[dict]] = {}
        for p in proxies:
            groups.setdefault(p[fixed], []).append(p)
        for value, group in sorted(groups.items()):
            lo, hi = min(group, key=lambda p: p[axis]), max(group, key=lambda p: p[axis])
            if lo[axis] == hi[axis]:
                continue
            a, b = lo["best_of_n"][-1], hi["best_of_n"][-1]
            contrasts.append({"axis": axis, "fixed": f"{fixed}={value}", "low": lo["key"], "high": hi["key"],
                              "diff": b["gold"] - a["gold"], "se": math.hypot(a["gold_se"], b["gold_se"])})
    return contrasts


def scale_verdict(proxies: list[dict]) -> str:
    """Holds when every larger-RM / more-data contrast is >= 0 and one is beyond 2 SE; contradicted when one is
    below -2 SE; otherwise not resolved."""
    contrasts = scale_contrasts(proxies)
    if not contrasts:
        return "Verdict: **not tested** (one RM size and one data amount)."
    text = "; ".join(f"{c['high']} - {c['low']} = {c['diff']:+.3f} ± {c['se']:.3f}" for c in contrasts)
    if any(c["diff"] < -2 * c["se"] for c in contrasts):
        verdict = "contradicted here (a larger or better-fed RM does significantly worse)"
    elif all(c["diff"] >= 0 for c in contrasts) and any(c["diff"] > 2 * c["se"] for c in contrasts):
        verdict = "holds"
    else:
        verdict = "not resolved within noise"
    return f"Larger minus smaller RM, more minus less data: {text}. Verdict: **{verdict}**."


def experiment_main(overrides: list[str], out: Path) -> int:
    """``lmstack experiment reward-overoptimisation``: proxies, best-of-n and PPO; report and ``result:`` lines."""
    from lmstack.experiments.cli import parse_config

    result = run_experiment(parse_config(OveroptConfig, overrides, "experiment reward-overoptimisation"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    print(f"result: base_gold={result['base_gold']:.4f}")
    for p in result["proxies"]:
        s = p["best_of_n_summary"]
        print(f"result: bon_{p['key']}_final_gold={s['final_gold']:.4f}")
        print(f"result: bon_{p['key']}_gold_falls={s['falls']}")
    for p in result["ppo"]:
        print(f"result: ppo_{p['key']}_final_gold={p['summary']['final_gold']:.4f}")
    return 0
