"""Can fine-tuning extract knowledge that pretraining stored? A small replication of Allen-Zhu & Li,
"Physics of Language Models: Part 3.1, Knowledge Storage and Extraction" (2023), on the synthetic world.

For each condition and seed: build the world's biographies the condition's way, pretrain a small
transformer from scratch on them, fine-tune it on question/answer pairs about HALF of the people (the
"train" half, ``pretrain+sft`` group), then ask the same questions about the OTHER half, whose facts the
model only ever read in biographies (extraction). A third group of people never appears anywhere: their
questions are the control, and should score near chance, so right answers come from the model's memory.

Conditions (cumulative, as in the paper's Section 4):

- ``single``: one biography per person, one fixed template per fact, fixed sentence order (bioS single);
- ``multi``: several biographies per person, varied templates, permuted sentences (bioS multi+permute);
- ``bilingual``: the same plus Chinese versions of the biographies;
- ``qa_mixed``: the same plus QA about the train half mixed into pretraining (the paper's "mixed training").

Every condition trains for the same number of steps, so compute is equal and only the data differs.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.data import world_text as T
from lmstack.data.world import World, WorldConfig, build_world, qa_prompt
from lmstack.eval.answers import answer_matches
from lmstack.train.simple import train_steps

CONDITIONS = ("single", "multi", "bilingual", "qa_mixed")
# The paper's QA accuracy on the held-out half of the people (its abstract and Section 4; bioS, 100k people,
# GPT-2 sized models): near 0% without knowledge augmentation, above 90% with several permuted biographies
# per person. Its mixed-training figure is also high; the exact per-attribute numbers are in its figures.
PAPER_FIGURES = {"single": "~0-10%", "multi": ">90%", "bilingual": ">90% (translation is one augmentation)",
                 "qa_mixed": "high (mixed training)"}


@dataclass
class KnowledgeConfig:
    """Sizes of the knowledge experiment; the defaults run the 4 conditions x 2 seeds in < 30 min on 2 cores."""

    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    n_people: int = 48             # pretrained people: half get QA fine-tuning, half are evaluated
    n_control_people: int = 12     # never-seen people: the control
    n_cities: int = 12
    bios_per_person: int = 6       # per language in the multi / bilingual / qa_mixed conditions
    n_quiz_docs: int = 40          # qa_mixed: quiz pages (6-8 questions each) about the train half
    vocab_size: int = 768
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 128
    batch_size: int = 16
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    sft_steps: int = 150
    sft_lr: float = 5e-4
    max_new_tokens: int = 8
    threads: int = 2                # torch threads (the default machine has 2 cores)

    def __post_init__(self):
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"knowledge.conditions: {unknown[0]!r} is not one of {', '.join(CONDITIONS)}")
        if not self.seeds:
            raise ValueError("knowledge.seeds: give at least one seed")
        if self.n_people < 4 or self.n_control_people < 1:
            raise ValueError("knowledge: need n_people >= 4 (two halves) and n_control_people >= 1")
        for name in ("pretrain_steps", "sft_steps", "batch_size", "seq_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"knowledge.{name}={getattr(self, name)} must be >= 1")


def world_config(cfg: KnowledgeConfig, condition: str) -> WorldConfig:
    """The world for one condition: biographies only (and quizzes for qa_mixed), no other documents."""
    many = condition != "single"
    bilingual = condition in ("bilingual", "qa_mixed")
    return WorldConfig(
        n_people=cfg.n_people, n_sft_only_people=cfg.n_control_people, sft_people_fraction=0.5,
        n_cities=cfg.n_cities, n_countries=min(cfg.n_cities, len(T.COUNTRIES)),
        bios_per_person=(cfg.bios_per_person * (2 if bilingual else 1)) if many else 1,
        bio_templates="varied" if many else "fixed", bio_permute=many, bio_full_names=True,
        bilingual_bios=bilingual, quiz_people="sft", n_quiz_docs=cfg.n_quiz_docs if condition == "qa_mixed" else 0,
        n_stories=0, n_geo_docs=0, n_arith_docs=0, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=0, phone_in_bio_prob=0.0,
        n_sft_train=0, n_sft_eval=0, n_prefs_train=0, n_prefs_eval=0, n_unknown_people=2, n_unknown_cities=2)


def person_qa(world: World, group: str, rng: random.Random, per_fact: int) -> list[dict]:
    """English QA about every person in ``group`` (the world's training phrasings, as the paper uses one
    question set for both halves): {"prompt", "answer", "person", "fact_type"}."""
    items = []
    for p in world.people_in(group):
        for ftype in T.PERSON_FACTS:
            fact = world.fact(f"person:{p.id}:{ftype}")
            for template in rng.sample(T.QUESTIONS_TRAIN["en"][ftype], per_fact):
                q = template.format(**world.fact_fields(fact, "en"))
                items.append({"prompt": qa_prompt(q, "en"), "answer": world.answer(fact, "en"), "person": p.id,
                              "fact_type": ftype})
    return items


def pretrain_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for text in docs:
        ids += [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id]
    return torch.tensor(ids, dtype=torch.long)


def window_batches(stream: torch.Tensor, seq_len: int, batch_size: int, gen: torch.Generator):
    n = len(stream) - seq_len - 1
    if n < 1:
        raise ValueError(f"knowledge: the pretraining corpus ({len(stream)} tokens) is shorter than seq_len+1")
    while True:
        starts = torch.randint(0, n, (batch_size,), generator=gen)
        block = torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()])
        yield block[:, :-1], block[:, 1:]


def qa_batches(tokenizer, items: list[dict], batch_size: int, rng: random.Random):
    """Question/answer sequences, loss on the answer tokens only (-100 elsewhere), right-padded."""
    encoded = []
    for it in items:
        prompt = [tokenizer.bos_id] + tokenizer.encode(it["prompt"])
        answer = tokenizer.encode(" " + it["answer"]) + tokenizer.encode("\n")
        encoded.append((prompt + answer, len(prompt)))
    while True:
        chosen = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in chosen) - 1
        x = torch.full((batch_size, width), tokenizer.eos_id, dtype=torch.long)
        y = torch.full((batch_size, width), -100, dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(chosen):
            t = torch.tensor(ids)
            x[row, :len(ids) - 1] = t[:-1]
            y[row, n_prompt - 1:len(ids) - 1] = t[n_prompt:]
        yield x, y


def qa_accuracy(model, tokenizer, items: list[dict], max_new_tokens: int) -> tuple[float, list[dict]]:
    from lmstack.generate import GenerationConfig, generate

    if not items:
        return float("nan"), []
    gcfg = GenerationConfig(max_new_tokens=max_new_tokens, strategy="greedy", stop=["\n"])
    gens = generate(model, tokenizer, [it["prompt"] for it in items], gcfg, batch_size=64)
    rows = [dict(it, output=g.text.strip(), correct=answer_matches(g.text, it["answer"])) for it, g in zip(items, gens)]
    return sum(r["correct"] for r in rows) / len(rows), rows


def pretrain_condition(cfg: KnowledgeConfig, condition: str, seed: int, tokenizer):
    """Build the condition's world and pretrain a fresh model on it: (world, model, token stream, losses)."""
    from lmstack.model import ModelConfig, Transformer

    world = build_world(world_config(cfg, condition), seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    stream = pretrain_stream(tokenizer, [d["text"] for d in world.pretrain_docs()])
    mcfg = ModelConfig.preset("llama-style", vocab_size=tokenizer.vocab_size, d_model=cfg.d_model,
                              n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads,
                              max_seq_len=cfg.seq_len)
    model = Transformer(mcfg)
    losses = train_steps(model, window_batches(stream, cfg.seq_len, cfg.batch_size, gen), cfg.pretrain_steps,
                         cfg.pretrain_lr, f"{condition}/{seed} pretrain")
    return world, model, stream, losses


def finetune_and_evaluate(cfg: KnowledgeConfig, world: World, model, tokenizer, seed: int, *, steps: int,
                          lr: float, replay=None, desc: str = "QA fine-tune") -> dict:
    """Fine-tune on QA about the train half (3 phrasings per fact), then score all three groups."""
    rng = random.Random(f"knowledge:{seed}")
    train_qa = person_qa(world, "pretrain+sft", rng, per_fact=3)
    test_qa = person_qa(world, "pretrain_only", rng, per_fact=1)
    control_qa = person_qa(world, "sft_only", rng, per_fact=1)
    losses = train_steps(model, qa_batches(tokenizer, train_qa, cfg.batch_size, rng), steps, lr, desc, replay=replay)
    train_probe = rng.sample(train_qa, min(len(train_qa), len(test_qa)))
    acc_train, _ = qa_accuracy(model, tokenizer, train_probe, cfg.max_new_tokens)
    acc_test, test_rows = qa_accuracy(model, tokenizer, test_qa, cfg.max_new_tokens)
    acc_control, control_rows = qa_accuracy(model, tokenizer, control_qa, cfg.max_new_tokens)
    return {"sft_loss": round(_mean(losses[-20:]), 4), "qa_train": acc_train, "qa_test": acc_test,
            "qa_control": acc_control,
            "qa_test_by_type": {t: _mean([r["correct"] for r in test_rows if r["fact_type"] == t])
                                for t in T.PERSON_FACTS},
            "n_train": len(train_probe), "n_test": len(test_qa), "n_control": len(control_qa),
            "samples": test_rows[:4] + control_rows[:2]}


def run_condition(cfg: KnowledgeConfig, condition: str, seed: int, tokenizer, log=print) -> dict:
    """Pretrain from scratch, fine-tune on the train half's QA, evaluate all three groups."""
    t0 = time.perf_counter()
    world, model, stream, pre_losses = pretrain_condition(cfg, condition, seed, tokenizer)
    scores = finetune_and_evaluate(cfg, world, model, tokenizer, seed, steps=cfg.sft_steps, lr=cfg.sft_lr,
                                   desc=f"{condition}/{seed} QA fine-tune")
    result = {"condition": condition, "seed": seed, "pretrain_tokens": int(len(stream)),
              "pretrain_epochs": round(cfg.pretrain_steps * cfg.batch_size * cfg.seq_len / len(stream), 1),
              "pretrain_loss": round(_mean(pre_losses[-20:]), 4), **scores,
              "seconds": round(time.perf_counter() - t0, 1)}
    log(f"[knowledge] {condition} seed {seed}: QA train {result['qa_train']:.3f}  test (extraction) "
        f"{result['qa_test']:.3f}  control {result['qa_control']:.3f}  ({result['seconds']:.0f}s, "
        f"{result['pretrain_epochs']} epochs)")
    return result


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")


def shared_tokenizer(cfg: KnowledgeConfig, seed: int):
    """One BPE for every condition of a seed, trained on all their texts plus the QA, so that names and
    answers split into the same tokens in every condition."""
    from lmstack.tokenizer import train_tokenizer

    texts = []
    for condition in cfg.conditions:
        world = build_world(world_config(cfg, condition), seed)
        texts += [d["text"] for d in world.pretrain_docs()]
        for group in ("pretrain+sft", "pretrain_only", "sft_only"):
            texts += [q["prompt"] + " " + q["answer"] for q in person_qa(world, group, random.Random(0), 1)]
    return train_tokenizer(texts, cfg.vocab_size, mode="char", progress=False)


def run_experiment(cfg: KnowledgeConfig, out_dir: str | Path, log=print) -> dict:
    """Every condition x seed; writes results.json, knowledge.png and report.md to ``out_dir``."""
    from lmstack.runs import atomic_write_json, atomic_write_text

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = []
    for seed in cfg.seeds:
        tokenizer = shared_tokenizer(cfg, seed)
        for condition in cfg.conditions:
            runs.append(run_condition(cfg, condition, seed, tokenizer, log))
    summary = summarize(runs, cfg)
    result = {"config": dataclasses.asdict(cfg), "runs": runs, "summary": summary,
              "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "results.json", result)
    plot = save_plot(summary, out / "knowledge.png")
    atomic_write_text(out / "report.md", report(result, plot))
    return result


def summarize(runs: list[dict], cfg: KnowledgeConfig) -> dict:
    """Per condition: the mean and the min..max over seeds of each accuracy."""
    out = {}
    for condition in cfg.conditions:
        rows = [r for r in runs if r["condition"] == condition]
        if not rows:
            continue
        out[condition] = {k: {"mean": _mean(r[k] for r in rows), "min": min(r[k] for r in rows),
                              "max": max(r[k] for r in rows)} for k in ("qa_train", "qa_test", "qa_control")}
        out[condition]["n_test"] = rows[0]["n_test"]
        out[condition]["n_control"] = rows[0]["n_control"]
        out[condition]["seeds"] = len(rows)
    return out


def save_plot(summary: dict, path: Path) -> str:
    from lmstack.report import pyplot

    plt = pyplot()
    conditions = list(summary)
    x = range(len(conditions))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, key, label in ((-0.27, "qa_train", "fine-tuned half"), (0.0, "qa_test", "held-out half (extraction)"),
                               (0.27, "qa_control", "never-seen people (control)")):
        means = [summary[c][key]["mean"] for c in conditions]
        err = [[m - summary[c][key]["min"] for c, m in zip(conditions, means)],
               [summary[c][key]["max"] - m for c, m in zip(conditions, means)]]
        ax.bar([i + offset for i in x], means, width=0.27, yerr=err, capsize=3, label=label)
    ax.set_xticks(list(x), conditions)
    ax.set_ylim(0, 1)
    ax.set_ylabel("QA accuracy")
    ax.set_title("Knowledge extraction after QA fine-tuning (mean, min-max over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def report(result: dict, plot: str) -> str:
    cfg, summary = result["config"], result["summary"]
    f = lambda v: f"{v['mean']:.3f} ({v['min']:.2f}-{v['max']:.2f})"  # noqa: E731
    lines = ["# Knowledge storage and extraction", "",
             f"{cfg['n_people']} people in pretraining (half get QA fine-tuning, the other half are evaluated), "
             f"{cfg['n_control_people']} never-seen control people; model d={cfg['d_model']} x {cfg['n_layers']} layers, "
             f"{cfg['pretrain_steps']} pretraining steps x {cfg['batch_size']} x {cfg['seq_len']} tokens, "
             f"{cfg['sft_steps']} QA fine-tuning steps; seeds {cfg['seeds']}; {result['seconds'] / 60:.1f} min.", "",
             "| pretraining data | QA on fine-tuned half | QA on held-out half (extraction) | n | "
             "never-seen people (control) | n | paper, held-out half |", "|---|---:|---:|---:|---:|---:|---|"]
    for c, v in summary.items():
        lines.append(f"| {c} | {f(v['qa_train'])} | **{f(v['qa_test'])}** | {v['n_test']} | {f(v['qa_control'])} | "
                     f"{v['n_control']} | {PAPER_FIGURES[c]} |")
    lines += ["", "Cells: mean over seeds (min-max). The control asks the same questions about people who appear "
              "nowhere in training, so its score is what guessing frequent answers earns.", ""]
    lines += [f"![knowledge extraction]({plot})", ""]
    lines += ["Sample answers (held-out half, then control):", "", "| condition | seed | question | answer | model | right |",
              "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        for s in r["samples"][:3]:
            q = s["prompt"].replace("\n", " ").replace("|", "\\|")
            lines.append(f"| {r['condition']} | {r['seed']} | {q} | {s['answer']} | {s['output'].replace('|', '/')} | "
                         f"{'yes' if s['correct'] else 'no'} |")
    return "\n".join(lines) + "\n"


def experiment_main(overrides: list[str], out: Path) -> int:
    """``lmstack experiment knowledge``: run, print the report and one ``result:`` line per condition."""
    from lmstack.experiments.cli import parse_config

    result = run_experiment(parse_config(KnowledgeConfig, overrides, "experiment knowledge"), out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    for condition, v in result["summary"].items():
        print(f"result: {condition}_extraction={v['qa_test']['mean']:.3f}")
    return 0
