"""Prompting at small scale: in-context learning curves, trained chain of thought, prompt sensitivity.

Models: ``sizes`` transformers (same recipe, same data, same steps) pretrained on the synthetic world, each
then fine-tuned on the world's chat data (SFT). Optionally the default run's own pretrain / SFT checkpoints
(``speedrun = "runs/speedrun"``) join the ICL and template measurements on their own world's questions.

1. ICL curves. Held-out fact questions with 0/1/2/4/8 solved examples in the prompt, scored by exact match
   (the answer generated) AND by a continuous metric, the log-probability of the right answer, and by
   4-way multiple choice. Schaeffer et al. 2023 ("Are Emergent Abilities of LLMs a Mirage?") argue that
   abrupt "emergence" often comes from discontinuous metrics like exact match; the log-probability
   shows whether the shots help smoothly where exact match stays flat.
2. Chain of thought. ``(a + b) * c - d`` problems; every base model is fine-tuned twice on the same
   problems, once on direct answers and once on step-by-step scratchpads, then evaluated greedily and with
   self-consistency (k sampled answers, majority vote; Wang et al. 2023). Wei et al. 2022 report that
   chain-of-thought PROMPTING helps only at ~100B parameters; here the steps are TRAINED (as in Nye et
   al. 2021's scratchpads), which is the setting where small models can use them.
3. Prompt sensitivity. The same fact questions in 5 paraphrased templates; the spread of accuracy over the
   templates is the uncertainty a single prompt hides.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.eval.backends import LocalBackend
from lmstack.eval.builtin import QA_PAIR_DELIMITER, in_document_format, world_facts_mc, write_jsonl
from lmstack.eval.harness import evaluate_task
from lmstack.eval.metrics import binomial_se
from lmstack.eval.tasks import TaskSpec

TEMPLATES = {
    "qa": "Question: {question}\nAnswer:",
    "q_a": "Q: {question}\nA:",
    "answer_is": "{question} The answer is",
    "quiz": "Quiz time. {question}\nYour answer:",
    "arrow": "{question} ->",
}


@dataclass
class PromptingConfig:
    """Default: 3 sizes, < 30 min on 2 idle cores. ``--set d_models=[16] --set n_layers=[1]`` etc. shrink it."""

    d_models: list[int] = field(default_factory=lambda: [32, 64, 128])
    n_layers: list[int] = field(default_factory=lambda: [1, 2, 4])
    seed: int = 0
    n_people: int = 24
    vocab_size: int = 768
    seq_len: int = 256
    batch_size: int = 16
    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    sft_steps: int = 200
    sft_lr: float = 1e-3
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    eval_items: int = 120
    cot_train: int = 2000
    cot_steps: int = 300
    cot_lr: float = 1e-3
    cot_eval: int = 100
    cot_samples: int = 5
    cot_temperature: float = 0.7
    template_shots: int = 3
    speedrun: str = ""             # a trained default run dir: its pretrain/sft models join the ICL + template tables
    threads: int = 2

    def __post_init__(self):
        if len(self.d_models) != len(self.n_layers) or not self.d_models:
            raise ValueError("prompting: d_models and n_layers must be non-empty lists of the same length")
        for name in ("pretrain_steps", "batch_size", "seq_len", "eval_items", "cot_eval", "cot_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"prompting.{name}={getattr(self, name)} must be >= 1")
        if self.speedrun and not (Path(self.speedrun) / "checkpoints").is_dir():
            raise ValueError(f"prompting.speedrun={self.speedrun!r}: not a run directory with checkpoints/")


# ------------------------------------------------------------------------------------------ data

def arith_problem(rng: random.Random) -> dict:
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 5)
    d = rng.randint(1, (a + b) * c)
    s, p = a + b, (a + b) * c
    return {"q": f"({a} + {b}) * {c} - {d}", "answer": str(p - d),
            "direct": f"The answer is {p - d}.",
            "steps": f"{a} + {b} = {s}. {s} * {c} = {p}. {p} - {d} = {p - d}. The answer is {p - d}."}


def arith_split(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and test problems with no expression in common."""
    rng = random.Random(f"cot:{seed}")
    seen, test, train = set(), [], []
    while len(test) < n_eval:
        p = arith_problem(rng)
        if p["q"] not in seen:
            seen.add(p["q"])
            test.append(p)
    while len(train) < n_train:
        p = arith_problem(rng)
        if p["q"] not in seen:
            train.append(p)
    return train, test


def cot_prompt(q: str) -> str:
    return f"Compute {q}.\nSolution:"


def chat_batches(tokenizer, conversations: list[list[dict]], batch_size: int, seq_len: int, rng: random.Random):
    """SFT batches: loss on the assistant turns only (the tokenizer's chat mask)."""
    encoded = []
    for messages in conversations:
        ids, mask = tokenizer.encode_chat(messages)
        encoded.append((ids[:seq_len + 1], mask[:seq_len + 1]))
    while True:
        chosen = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in chosen) - 1
        x = torch.full((batch_size, width), tokenizer.eos_id, dtype=torch.long)
        y = torch.full((batch_size, width), -100, dtype=torch.long)
        for row, (ids, mask) in enumerate(chosen):
            t = torch.tensor(ids)
            x[row, :len(ids) - 1] = t[:-1]
            y[row, :len(ids) - 1] = torch.where(torch.tensor(mask[1:]) == 1, t[1:], torch.tensor(-100))
        yield x, y


# ------------------------------------------------------------------------------------------ models

def train_models(cfg: PromptingConfig, world, tokenizer, log) -> list[dict]:
    """Pretrain every size on the world's documents, then SFT a copy on its chat data."""
    from lmstack.experiments.knowledge import pretrain_stream, window_batches
    from lmstack.train.simple import train_steps
    from lmstack.model import ModelConfig, Transformer

    stream = pretrain_stream(tokenizer, [d["text"] for d in world.pretrain_docs()])
    convs = [item["messages"] for item in world.sft_train]
    models = []
    for d_model, n_layers in zip(cfg.d_models, cfg.n_layers):
        torch.manual_seed(cfg.seed)
        heads = max(1, d_model // 32)
        mcfg = ModelConfig.preset("llama-style", vocab_size=tokenizer.vocab_size, d_model=d_model, n_layers=n_layers,
                                  n_heads=heads, n_kv_heads=heads, max_seq_len=cfg.seq_len)
        base = Transformer(mcfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        t0 = time.perf_counter()
        pre = train_steps(base, window_batches(stream, cfg.seq_len, cfg.batch_size, gen), cfg.pretrain_steps,
                          cfg.pretrain_lr, f"d{d_model}x{n_layers} pretrain")
        sft = Transformer(mcfg)
        sft.load_state_dict(base.state_dict())
        post = train_steps(sft, chat_batches(tokenizer, convs, cfg.batch_size, cfg.seq_len, random.Random(cfg.seed)),
                           cfg.sft_steps, cfg.sft_lr, f"d{d_model}x{n_layers} SFT") if cfg.sft_steps else []
        name = f"d{d_model}x{n_layers}"
        log(f"[prompting] {name}: {base.num_params():,} params, pretrain loss {_tail(pre):.3f}, "
            f"SFT loss {_tail(post):.3f} ({time.perf_counter() - t0:.0f}s)")
        models.append({"name": name, "params": base.num_params(), "base": base.eval(), "sft": sft.eval(),
                       "pretrain_loss": _tail(pre), "sft_loss": _tail(post)})
    return models


def _tail(losses: list[float]) -> float:
    tail = losses[-20:]
    return sum(tail) / len(tail) if tail else float("nan")


def speedrun_models(run: Path) -> list[dict]:
    from lmstack.model import load_pretrained
    from lmstack.tokenizer import Tokenizer

    tok = Tokenizer.load(run / "tokenizer" / "tokenizer.json")
    base, sft = load_pretrained(run / "checkpoints" / "pretrain"), load_pretrained(run / "checkpoints" / "sft")
    return [{"name": "speedrun", "params": base.num_params(), "base": base.eval(), "sft": sft.eval(),
             "tokenizer": tok, "world": run / "data" / "world"}]


# ------------------------------------------------------------------------------------------ measurements

def fact_items(world_dir: Path, n: int, seed: int) -> list[dict]:
    import json

    items = [json.loads(x) for x in (world_dir / "facts_eval.jsonl").read_text(encoding="utf-8").splitlines() if x]
    items = [it for it in items if it.get("in_pretrain")] or items
    return random.Random(seed).sample(items, min(n, len(items)))


def icl_generation_spec(seed: int) -> TaskSpec:
    """Generated answers to fact questions (items from ``in_document_format``), scored by containment and by
    the answer's log-probability."""
    return TaskSpec(name="icl_facts", type="generate", template="{prompt}", target="{spaced_answer}",
                    target_delimiter="", fewshot_delimiter=QA_PAIR_DELIMITER, fewshot_match="lang",
                    metrics=["contains", "answer_logprob"], max_new_tokens=12, seed=seed)


def icl_curves(cfg: PromptingConfig, model: dict, tokenizer, world_dir: Path) -> list[dict]:
    """0..k-shot fact questions, with the solved examples laid out as in the world's own QA documents."""
    gen_spec = icl_generation_spec(cfg.seed)
    mc_spec, mc_docs = world_facts_mc(world_dir, cfg.seed)  # laid out as the world's QA documents
    mc_docs = random.Random(cfg.seed).sample(mc_docs, min(cfg.eval_items, len(mc_docs)))
    items = in_document_format(fact_items(world_dir, cfg.eval_items, cfg.seed))
    pool = in_document_format(fact_items(world_dir, 10 ** 6, cfg.seed + 1))
    rows = []
    for kind in ("base", "sft"):
        backend = LocalBackend(model[kind], tokenizer, batch_size=32)
        for shots in cfg.shots:
            g = evaluate_task(gen_spec, backend, items, num_fewshot=shots, pool=pool)
            m = evaluate_task(mc_spec, backend, mc_docs, num_fewshot=shots)
            rows.append({"model": model["name"], "params": model["params"], "kind": kind, "shots": shots,
                         "exact": g["metrics"]["contains"], "logprob": g["metrics"]["answer_logprob"],
                         "mc_acc": m["metrics"]["acc"],
                         "per_item": {"exact": [it["scores"]["contains"] for it in g["items"]],
                                      "logprob": [it["answer_logprob"] for it in g["items"]],
                                      "mc_acc": [float(it["pred"] == it["gold"]) for it in m["items"]]}})
    return rows


def paired_gain(after: list[float], before: list[float]) -> dict:
    """Mean per-item difference and its standard error (the same items, so the pairing removes item difficulty)."""
    from lmstack.eval.metrics import mean_se

    diffs = [a - b for a, b in zip(after, before)]
    return {"value": sum(diffs) / len(diffs), "se": mean_se(diffs)}


def significant(m: dict, sign: int = 1) -> bool:
    """At least two standard errors away from zero, in the direction ``sign``."""
    se = m["se"] if m["se"] == m["se"] else 0.0
    return sign * m["value"] > 2 * se and m["value"] != 0


def chain_of_thought(cfg: PromptingConfig, model: dict, tokenizer) -> list[dict]:
    """Fine-tune copies of the base model on direct answers and on scratchpads; greedy and voted accuracy."""
    from lmstack.experiments.knowledge import qa_batches
    from lmstack.train.simple import train_steps
    from lmstack.model import Transformer

    train, test = arith_split(cfg.cot_train, cfg.cot_eval, cfg.seed)
    spec = TaskSpec(name="arith_cot", type="generate", template="Compute {q}.\nSolution:", target="{answer}", cot=True,
                    metrics=["exact_match"], max_new_tokens=48, seed=cfg.seed)
    rows = []
    for style in ("direct", "steps"):
        tuned = Transformer(model["base"].config)
        tuned.load_state_dict(model["base"].state_dict())
        items = [{"prompt": cot_prompt(p["q"]), "answer": p[style]} for p in train]
        losses = train_steps(tuned, qa_batches(tokenizer, items, cfg.batch_size, random.Random(cfg.seed)),
                             cfg.cot_steps, cfg.cot_lr, f"{model['name']} CoT {style}")
        backend = LocalBackend(tuned.eval(), tokenizer, batch_size=32)
        greedy = evaluate_task(spec, backend, test)
        voted = evaluate_task(spec, backend, test, samples=cfg.cot_samples, temperature=cfg.cot_temperature,
                              seed=cfg.seed)
        rows.append({"model": model["name"], "params": model["params"], "style": style, "loss": _tail(losses),
                     "greedy": greedy["metrics"]["exact_match"], "voted": voted["metrics"]["exact_match"],
                     "sample": greedy["items"][0]["output"].strip()})
    return rows


def template_sensitivity(cfg: PromptingConfig, model: dict, tokenizer, world_dir: Path) -> list[dict]:
    """English fact questions in each paraphrased template, few-shot, generated answer and 4-way choice."""
    mc_spec, mc_docs = world_facts_mc(world_dir, cfg.seed, in_document=False)
    mc_docs = [d for d in mc_docs if d.get("lang") == "en" and d.get("question")]
    mc_docs = random.Random(cfg.seed).sample(mc_docs, min(cfg.eval_items, len(mc_docs)))
    rows = []
    for kind in ("base", "sft"):
        backend = LocalBackend(model[kind], tokenizer, batch_size=32)
        for name, template in TEMPLATES.items():
            gen = TaskSpec(name=f"template_{name}", type="generate", template=template, target="{answer}",
                           fewshot_delimiter="\n", metrics=["contains"], max_new_tokens=12, seed=cfg.seed)
            mc = dataclasses.replace(mc_spec, template=template, fewshot_match="")
            g = evaluate_task(gen, backend, mc_docs, num_fewshot=cfg.template_shots)
            m = evaluate_task(mc, backend, mc_docs, num_fewshot=cfg.template_shots)
            rows.append({"model": model["name"], "kind": kind, "template": name, "n": m["n"],
                         "exact": g["metrics"]["contains"]["value"], "mc_acc": m["metrics"]["acc"]["value"],
                         "mc_items": [float(it["pred"] == it["gold"]) for it in m["items"]]})
    return rows


# ------------------------------------------------------------------------------------------ run + report

def run_experiment(cfg: PromptingConfig, out_dir: str | Path, log=print) -> dict:
    from lmstack.data.world import WorldConfig, build_world
    from lmstack.runs import atomic_write_json, atomic_write_text
    from lmstack.tokenizer import train_tokenizer

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world = build_world(WorldConfig(n_people=cfg.n_people, n_sft_only_people=max(2, cfg.n_people // 6),
                                    n_sft_train=600, n_sft_eval=100, n_prefs_train=0, n_prefs_eval=0), cfg.seed)
    world_dir = out / "world"
    world.write(world_dir)
    texts = [d["text"] for d in world.pretrain_docs()]
    texts += [cot_prompt(p["q"]) + " " + p["steps"] for p in arith_split(200, 0, cfg.seed + 7)[0]]
    tokenizer = train_tokenizer(texts, cfg.vocab_size, progress=False)
    models = train_models(cfg, world, tokenizer, log)
    icl, cot, templates = [], [], []
    for m in models:
        icl += icl_curves(cfg, m, tokenizer, world_dir)
        cot += chain_of_thought(cfg, m, tokenizer)
        templates += template_sensitivity(cfg, m, tokenizer, world_dir)
        log(f"[prompting] {m['name']} measured ({time.perf_counter() - t0:.0f}s)")
    if cfg.speedrun:
        for m in speedrun_models(Path(cfg.speedrun)):
            icl += icl_curves(cfg, m, m["tokenizer"], m["world"])
            templates += template_sensitivity(cfg, m, m["tokenizer"], m["world"])
    result = {"config": dataclasses.asdict(cfg), "models": [{k: v for k, v in m.items() if k not in ("base", "sft")}
                                                             for m in models],
              "icl": icl, "cot": cot, "templates": templates, "seconds": round(time.perf_counter() - t0, 1)}
    result["summary"] = summarize(result)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "report.md", report(result, save_plots(result, out)))
    return result


def summarize(result: dict) -> dict:
    icl = result["icl"]
    shots = sorted({r["shots"] for r in icl})
    lo, hi = shots[0], shots[-1]
    gains = {}
    for r in icl:
        if r["shots"] == hi:
            start = next(x for x in icl if x["model"] == r["model"] and x["kind"] == r["kind"] and x["shots"] == lo)
            gains[f"{r['model']}/{r['kind']}"] = {key: paired_gain(r["per_item"][key], start["per_item"][key])
                                                  for key in ("exact", "logprob", "mc_acc")}
    spread = {}
    for r in result["templates"]:
        spread.setdefault(f"{r['model']}/{r['kind']}", []).append(r)
    spread = {k: template_spread(v) for k, v in spread.items()}
    cot = {}
    for r in result["cot"]:
        cot.setdefault(r["model"], {})[r["style"]] = {"greedy": r["greedy"], "voted": r["voted"]}
    for m in cot.values():
        if "direct" in m and "steps" in m:
            d, s = m["direct"]["greedy"], m["steps"]["greedy"]
            m["steps_minus_direct"] = {"value": s["value"] - d["value"], "se": (s["se"] ** 2 + d["se"] ** 2) ** 0.5}
    return {"icl_gain": gains, "template_spread": spread, "cot": cot, "shots": [lo, hi]}


def template_spread(rows: list[dict]) -> dict:
    """Spread of one model's accuracy over the templates. ``mc_range_se``: the standard error of the best minus
    the worst template, paired over the same questions (the questions' difficulty cancels; the pair is chosen
    after the fact, so 2 of these SEs is a lenient bar)."""
    best, worst = max(rows, key=lambda x: x["mc_acc"]), min(rows, key=lambda x: x["mc_acc"])
    paired = (paired_gain(best["mc_items"], worst["mc_items"])["se"]
              if "mc_items" in best and len(best["mc_items"]) > 1 else float("nan"))
    return {"exact_range": max(x["exact"] for x in rows) - min(x["exact"] for x in rows),
            "mc_range": best["mc_acc"] - worst["mc_acc"], "mc_std": statistics.pstdev([x["mc_acc"] for x in rows]),
            "mc_se": max(binomial_se(x["mc_acc"], x["n"]) for x in rows), "mc_range_se": paired,
            "best": best["template"], "worst": worst["template"]}


def save_plots(result: dict, out: Path) -> dict[str, str]:
    from lmstack.report import pyplot, save_line_plot

    plots = {}
    for key, label in (("exact", "exact match (answer generated)"), ("logprob", "log p(right answer)"),
                       ("mc_acc", "4-way multiple-choice accuracy")):
        series = {}
        for r in result["icl"]:
            xs, ys = series.setdefault(f"{r['model']} {r['kind']}", ([], []))
            xs.append(r["shots"])
            ys.append(r[key]["value"])
        name = f"icl_{key}.png"
        save_line_plot(out / name, series, f"In-context learning: {label}", "shots in the prompt", label)
        plots[key] = name
    if result["cot"]:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for style in ("direct", "steps"):
            rows = [r for r in result["cot"] if r["style"] == style]
            params = [r["params"] for r in rows]
            ax.plot(params, [r["greedy"]["value"] for r in rows], marker="o", label=f"{style}, greedy")
            ax.plot(params, [r["voted"]["value"] for r in rows], marker="x", linestyle="--", label=f"{style}, voted")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("accuracy on (a + b) * c - d")
        ax.set_title("Trained scratchpads vs direct answers")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "cot.png", dpi=110)
        plt.close(fig)
        plots["cot"] = "cot.png"
    return plots


def _signed(m: dict, digits: int = 3) -> str:
    return f"{m['value']:+.{digits}f} ± {m['se']:.{digits}f}"


def _pm(m: dict, digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} ± {m['se']:.{digits}f}"


def report(result: dict, plots: dict[str, str]) -> str:
    cfg, summary = result["config"], result["summary"]
    sizes = ", ".join(f"{m['name']} ({m['params']:,} params)" for m in result["models"])
    speedrun_note = (f"; plus the default run {cfg['speedrun']}, whose rows use its own world's questions (their "
                     "levels do not compare with the other rows)") if cfg["speedrun"] else ""
    lines = ["# Prompting: in-context learning, chain of thought, prompt sensitivity", "",
             f"Models: {sizes}; each pretrained {cfg['pretrain_steps']} steps x {cfg['batch_size']} x {cfg['seq_len']} "
             f"tokens on the synthetic world, then SFT {cfg['sft_steps']} steps on its chat data"
             f"{speedrun_note}. Seed {cfg['seed']}; "
             f"{result['seconds'] / 60:.1f} min. Cells: value ± standard error (binomial for accuracies, "
             "per-item for log-probabilities).", "",
             "## 1. In-context learning curves", "",
             "Claim (GPT-3, Brown et al. 2020): solved examples in the prompt raise accuracy, and the ability "
             "emerges with scale. Schaeffer et al. 2023: such emergence can be an artefact of a discontinuous "
             "metric. Measured: held-out fact questions the models read in pretraining, with k solved examples.", "",
             "| model | kind | shots | exact match | log p(answer) | 4-way MC acc |", "|---|---|---:|---:|---:|---:|"]
    for r in result["icl"]:
        lines.append(f"| {r['model']} | {r['kind']} | {r['shots']} | {_pm(r['exact'])} | {_pm(r['logprob'], 2)} | "
                     f"{_pm(r['mc_acc'])} |")
    lo, hi = summary["shots"]
    lines += ["", f"Gain from {lo} to {hi} shots (paired over the same questions, ± SE):", "",
              "| model | exact match | log p(answer) | MC acc |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {_signed(v['exact'])} | {_signed(v['logprob'], 2)} | {_signed(v['mc_acc'])} |"
              for k, v in summary["icl_gain"].items()]
    lines += ["", verdict_icl(summary), ""] + [f"![{k}]({v})" for k, v in plots.items() if k != "cot"]
    lines += ["", "## 2. Chain of thought (trained scratchpads)", "",
              "Claim (Wei et al. 2022): chain-of-thought PROMPTING helps only around 100B parameters. Here each base "
              "model is fine-tuned on the same (a + b) * c - d problems with direct answers or with step-by-step "
              f"scratchpads, then tested on unseen problems; voted = majority of {cfg['cot_samples']} samples at "
              f"temperature {cfg['cot_temperature']} (self-consistency).", "",
              "| model | params | trained on | greedy acc | voted acc | sample output |", "|---|---:|---|---:|---:|---|"]
    for r in result["cot"]:
        sample = r["sample"].replace("|", "/").replace("\n", " ")[:70]
        lines.append(f"| {r['model']} | {r['params']:,} | {r['style']} | {_pm(r['greedy'])} | {_pm(r['voted'])} | {sample} |")
    lines += ["", verdict_cot(summary), ""] + ([f"![cot]({plots['cot']})", ""] if "cot" in plots else [])
    lines += ["## 3. Prompt sensitivity", "",
              f"The same English fact questions in {len(TEMPLATES)} paraphrased templates, {cfg['template_shots']}-shot: "
              + "; ".join(f"`{k}` = {v!r}" for k, v in TEMPLATES.items()), "",
              "| model | " + " | ".join(TEMPLATES) + " | range ± paired SE | std |", "|---|" + "---:|" * (len(TEMPLATES) + 2)]
    for key, spread in summary["template_spread"].items():
        accs = {r["template"]: r["mc_acc"] for r in result["templates"] if f"{r['model']}/{r['kind']}" == key}
        lines.append(f"| {key} (MC acc) | " + " | ".join(f"{accs[t]:.3f}" for t in TEMPLATES) +
                     f" | {spread['mc_range']:.3f} ± {spread['mc_range_se']:.3f} | {spread['mc_std']:.3f} |")
    lines += ["", template_verdict(summary["template_spread"])]
    return "\n".join(lines) + "\n"


def template_verdict(spreads: dict) -> str:
    """Which models' best-minus-worst template gap exceeds 2 paired SEs."""
    widest_key, widest = max(spreads.items(), key=lambda kv: kv[1]["mc_range"])
    real = [k for k, v in spreads.items() if v["mc_range"] > 2 * v["mc_range_se"]]
    return (f"Verdict: the template alone moves MC accuracy by up to {widest['mc_range']:.3f} ({widest_key}: "
            f"`{widest['best']}` vs `{widest['worst']}`, paired SE {widest['mc_range_se']:.3f}) on the same questions. "
            f"The best-minus-worst gap exceeds 2 paired SEs for {', '.join(real) or 'no model'}"
            + ("; there a single-prompt score hides real prompt dependence." if real else
               "; no prompt dependence beyond noise is shown here."))


def verdict_icl(summary: dict) -> str:
    """Which models gain from the shots on each metric, counting only gains beyond 2 paired SEs."""
    gains = summary["icl_gain"]
    up = {key: [k for k, v in gains.items() if significant(v[key])] for key in ("exact", "logprob", "mc_acc")}
    down = {key: [k for k, v in gains.items() if significant(v[key], -1)] for key in ("exact", "logprob", "mc_acc")}
    text = (f"Verdict: shots raise exact match beyond noise for {', '.join(up['exact']) or 'no model'}; "
            f"the answer's log-probability for {', '.join(up['logprob']) or 'no model'}; "
            f"multiple-choice accuracy for {', '.join(up['mc_acc']) or 'no model'}.")
    if any(down.values()):
        text += (f" Shots LOWER them beyond noise for: exact match {', '.join(down['exact']) or 'none'}; log-probability "
                 f"{', '.join(down['logprob']) or 'none'}; multiple choice {', '.join(down['mc_acc']) or 'none'}, "
                 "against the GPT-3 claim.")
    hidden = [k for k in up["logprob"] if k not in up["exact"]]
    if hidden:
        text += (f" Where exact match shows no gain but log p(answer) does ({', '.join(hidden)}), the discrete "
                 "metric hides a smooth improvement, as Schaeffer et al. 2023 argue for 'emergence'.")
    return text


def verdict_cot(summary: dict) -> str:
    """Scratchpads vs direct answers per size, a difference counting only beyond 2 SEs."""
    better, worse, same = [], [], []
    for model, m in summary["cot"].items():
        if "steps_minus_direct" in m:
            diff = m["steps_minus_direct"]
            (better if significant(diff) else worse if significant(diff, -1) else same).append(model)
    text = (f"Verdict: trained scratchpads beat direct answers for {', '.join(better) or 'no size'}, lose for "
            f"{', '.join(worse) or 'no size'}, and are within noise for {', '.join(same) or 'no size'}.")
    if better:
        text += " Trained steps help without the ~100B scale Wei et al. needed for prompted chain of thought."
    else:
        text += (" Where both styles score low, the models have not learned the multi-step arithmetic either way "
                 "at this size and training length (--set cot_steps=... trains longer), so the comparison says little.")
    return text


def experiment_main(overrides: list[str], out: Path) -> int:
    """``lmstack experiment prompting``: run, print the report and ``result:`` lines."""
    from lmstack.experiments.cli import parse_config

    result = run_experiment(parse_config(PromptingConfig, overrides, "experiment prompting"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    for key, v in result["summary"]["icl_gain"].items():
        print(f"result: icl_exact_gain[{key}]={v['exact']['value']:.3f} "
              f"icl_logprob_gain[{key}]={v['logprob']['value']:.3f} icl_mc_gain[{key}]={v['mc_acc']['value']:.3f}")
    for model, v in result["summary"]["cot"].items():
        for style in ("direct", "steps"):
            if style in v:
                print(f"result: cot_greedy[{model}/{style}]={v[style]['greedy']['value']:.3f} "
                      f"cot_voted[{model}/{style}]={v[style]['voted']['value']:.3f}")
    for key, v in result["summary"]["template_spread"].items():
        print(f"result: template_mc_range[{key}]={v['mc_range']:.3f}")
    return 0
