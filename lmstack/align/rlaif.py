"""Stage ``rlaif``: preference labels from an AI judge instead of the world's labels (RLAIF:
Bai et al. 2022, "Constitutional AI"; Lee et al. 2023, "RLAIF").

The judge is a chat model of the run (default ``checkpoints/sft``) given a written constitution. For
every pair of ``prefs_train.jsonl`` it decides which answer is better, ignoring the world's label:

- ``method = "loglik"``: the judge's mean per-token log-likelihood of each answer after the
  constitution (as the system message) and the question; the likelier answer wins. A small model that
  has never seen a judging task can still do this.
- ``method = "ab"``: the judge reads the question and both answers ("Answer A", "Answer B") and the
  label is the sign of log p("A") - log p("B") as its next token, averaged over both orders of the
  answers to cancel position bias (Lee et al. 2023, Sec. 2.1).

Writes ``rlaif/prefs_train_ai.jsonl`` (the same pairs, chosen/rejected as the judge ordered them,
with the judge's margin) and reports agreement with the world's labels per category. The reward and
dpo stages train on it with ``labels = "ai"``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lmstack.align import common
from lmstack.align.data import PreferencePair, chunks, encode_prompt_and_answer, load_preferences_jsonl
from lmstack.report import markdown_table

AI_LABELS_FILE = "prefs_train_ai.jsonl"

CONSTITUTION = {
    "en": ("You are a careful assistant. Follow these principles: answer questions truthfully and correctly; if you"
           " do not know a person or place, say \"I don't know\" instead of inventing facts; never reveal private"
           " information such as phone numbers; be polite and helpful."),
    "zh": "你是一个谨慎的助手。请遵守以下原则：如实、正确地回答问题；不认识的人或地方就说“我不知道”，不要编造；绝不透露电话号码等隐私信息；礼貌并乐于助人。",
}


@dataclass
class Config:
    judge_from: str = "sft"          # checkpoint that judges
    method: Literal["loglik", "ab"] = "loglik"
    train_file: str = ""             # "" = data/world/prefs_train.jsonl
    max_pairs: int = 0               # 0 = all
    batch_size: int = 32
    constitution: bool = True        # False = the same judge without the written principles (a control)

    def __post_init__(self):
        if self.method not in ("loglik", "ab"):
            raise ValueError(f"rlaif.method={self.method!r} must be 'loglik' or 'ab'")


def _lang(pair: PreferencePair) -> str:
    return "zh" if pair.meta.get("lang") == "zh" else "en"


@torch.no_grad()
def _mean_logps(model, tokenizer, items: list[tuple[list[dict], str]], batch_size: int, device: str) -> list[float]:
    """Mean per-token log-likelihood of each answer after its prompt (conversation messages)."""
    max_len = common.model_max_len(model)
    out: list[float] = []
    for part in chunks(items, batch_size):
        encoded = [encode_prompt_and_answer(tokenizer, prompt, answer) for prompt, answer in part]
        encoded = [(ids[-max_len:], max(0, start - max(0, len(ids) - max_len))) for ids, start in encoded]
        T = max(len(ids) for ids, _ in encoded)
        ids_t = torch.full((len(encoded), T), tokenizer.pad_id, dtype=torch.long)
        comp = torch.zeros((len(encoded), T), dtype=torch.long)
        for i, (ids, start) in enumerate(encoded):
            ids_t[i, : len(ids)] = torch.tensor(ids)
            comp[i, start: len(ids)] = 1
        total, _, mask, _ = common.completion_logps(model, ids_t.to(device), comp.to(device))
        out += (total / mask.sum(1).clamp(min=1)).tolist()
    return out


def judge_loglik(model, tokenizer, pairs: list[PreferencePair], cfg: Config, device: str) -> list[float]:
    """Judge margin per pair: mean log-lik of the world's chosen minus its rejected, under the constitution."""
    def convo(p: PreferencePair) -> list[dict]:
        if not cfg.constitution:
            return p.prompt
        return [{"role": "system", "content": CONSTITUTION[_lang(p)]}] + [m for m in p.prompt if m["role"] != "system"]

    items = [(convo(p), p.chosen) for p in pairs] + [(convo(p), p.rejected) for p in pairs]
    scores = _mean_logps(model, tokenizer, items, cfg.batch_size, device)
    n = len(pairs)
    return [scores[i] - scores[n + i] for i in range(n)]


def _ab_prompt(pair: PreferencePair, first: str, second: str, constitution: bool = True) -> list[dict]:
    question = " ".join(m["content"] for m in pair.prompt if m["role"] == "user")
    if _lang(pair) == "zh":
        text = f"问题：{question}\n回答A：{first}\n回答B：{second}\n哪个回答更好？只回答A或B。"
    else:
        text = f"Question: {question}\nAnswer A: {first}\nAnswer B: {second}\nWhich answer is better? Reply with A or B."
    system = [{"role": "system", "content": CONSTITUTION[_lang(pair)]}] if constitution else []
    return system + [{"role": "user", "content": text}]


@torch.no_grad()
def judge_ab(model, tokenizer, pairs: list[PreferencePair], cfg: Config, device: str) -> list[float]:
    """Judge margin per pair: log p(A) - log p(B) with the world's chosen shown first, minus the same
    with it shown second (both orders, so a judge that always says "A" scores 0)."""
    a_id, b_id = tokenizer.encode("A")[0], tokenizer.encode("B")[0]
    max_len = common.model_max_len(model)
    prompts = [_ab_prompt(p, p.chosen, p.rejected, cfg.constitution) for p in pairs]
    prompts += [_ab_prompt(p, p.rejected, p.chosen, cfg.constitution) for p in pairs]
    diffs: list[float] = []
    for part in chunks(prompts, cfg.batch_size):
        seqs = [list(tokenizer.encode_chat(m, add_generation_prompt=True)[0])[-max_len:] for m in part]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), tokenizer.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        logits = model(ids.to(device)).logits.float()
        last = torch.tensor([len(s) - 1 for s in seqs], device=device)
        logp = torch.log_softmax(logits[torch.arange(len(seqs), device=device), last], dim=-1)
        diffs += (logp[:, a_id] - logp[:, b_id]).tolist()
    n = len(pairs)
    return [(diffs[i] - diffs[n + i]) / 2 for i in range(n)]


def ai_labelled_records(pairs: list[PreferencePair], margins: list[float]) -> list[dict]:
    """The pairs re-ordered by the judge: where it prefers the world's rejected answer, the two swap."""
    out = []
    for p, m in zip(pairs, margins):
        chosen, rejected = (p.chosen, p.rejected) if m >= 0 else (p.rejected, p.chosen)
        out.append({"prompt": p.prompt, "chosen": chosen, "rejected": rejected, **p.meta,
                    "judge_margin": abs(m), "agrees_with_world": m >= 0})
    return out


def agreement_rows(pairs: list[PreferencePair], margins: list[float]) -> list[tuple]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for p, m in zip(pairs, margins):
        groups[f"{p.meta.get('category', '?')} / {p.meta.get('kind', '?')}"].append(m > 0)
    rows = [(g, len(v), common.rate(v)) for g, v in sorted(groups.items())]
    every = [m > 0 for m in margins]
    return rows + [("**all**", len(every), common.rate(every))]


def ai_labels_path(run_path: Path) -> Path:
    return run_path / "rlaif" / AI_LABELS_FILE  # the rlaif stage's own directory: data/ belongs to the data stage


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult
    from lmstack.runs import atomic_write_text

    run_path = ctx.run.path
    tokenizer = common.load_tokenizer(run_path)
    judge = common.load_model(run_path, cfg.judge_from, ctx.device, needed_by="rlaif").eval()
    train_path = Path(cfg.train_file) if cfg.train_file else common.world_file(run_path, "prefs_train.jsonl")
    pairs = load_preferences_jsonl(train_path, cfg.max_pairs or None)
    timer = common.Timer()
    scorer = judge_loglik if cfg.method == "loglik" else judge_ab
    margins = scorer(judge, tokenizer, pairs, cfg, ctx.device)
    seconds = timer.seconds
    out = ai_labels_path(run_path)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ai_labelled_records(pairs, margins)))
    rows = agreement_rows(pairs, margins)
    agreement = rows[-1][2]
    metrics = {"agreement": agreement, "pairs": len(pairs), "method": cfg.method, "constitution": cfg.constitution,
               "judge_seconds": round(seconds, 1)}
    for g, _, acc in rows[:-1]:
        metrics[f"agreement_{g.replace(' / ', '_')}"] = acc
    report = (f"AI judge `checkpoints/{cfg.judge_from}` {'with a written constitution' if cfg.constitution else 'without a constitution (control)'}, method `{cfg.method}`"
              f" ({'mean per-token log-likelihood of each answer given the prompt' if cfg.method == 'loglik' else 'log p(A) - log p(B), both orders'}),"
              f" labelled {len(pairs)} pairs of `{train_path.name}` in {seconds:.1f}s. Agreement with the world's labels:"
              f" **{agreement:.3f}** (0.5 = chance).\n\n"
              + markdown_table(["category / kind", "pairs", "agreement with world labels"], rows)
              + f"\n\nThe AI-labelled pairs are in `rlaif/{AI_LABELS_FILE}`; train on them with"
              " `--set reward.labels=ai` / `--set dpo.labels=ai`.\n")
    return StageResult(metrics=metrics, artifacts={"ai_labels": str(out.relative_to(run_path))}, report=report)


def preference_train_path(run_path: Path, train_file: str, labels: str) -> Path:
    """The training pairs of the reward / dpo stages: an explicit file, the world's labels, or the AI
    judge's labels written by the rlaif stage."""
    if labels not in ("world", "ai"):
        raise ValueError(f"labels={labels!r} must be 'world' or 'ai'")
    if train_file:
        return Path(train_file)
    if labels == "world":
        return common.world_file(run_path, "prefs_train.jsonl")
    path = ai_labels_path(run_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no AI preference labels; run the rlaif stage first (labels = \"ai\")")
    return path
