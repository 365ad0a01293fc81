"""Built-in tasks of ``lmstack eval``, built at eval time from the world's held-out files and the repo's data.

- ``world_facts``: the world's held-out fact questions (``facts_eval.jsonl``), few-shot, answer generated;
- ``world_facts_mc``: the same questions as 4-way multiple choice (distractors: other answers of the same
  fact type and language), scored by log-likelihood;
- ``world_fact_qa``, ``world_arith``, ``world_translate``, ``world_refusal``, ``world_idk``: the held-out chat
  conversations (``sft_eval.jsonl``) judged as the alignment stages judge them (``lmstack.eval.scoring``);
- ``shakespeare_cloze``: the last word of a held-out tinyshakespeare line against 3 other lines' last words;
- ``shakespeare_bpb``: bits per byte on the held-out tail of tinyshakespeare;
- ``poetry_completion``: the second half of a Chinese couplet given the first (``data/zh/poetry.jsonl``).

Held-out means the last 10% of tinyshakespeare's lines and the last poems of the file; these are the text a
model trained on the whole file has seen, so read those tasks as fluency checks, not generalisation.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable, Optional

from lmstack import DATA_DIR
from lmstack.eval.tasks import TaskError, TaskSpec

SFT_TASKS = {"world_fact_qa": ("fact_qa",), "world_arith": ("arith",), "world_translate": ("translate",),
             "world_refusal": ("refuse_pii",), "world_idk": ("idk",)}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise TaskError(f"{path}: not found; built-in world tasks need a run directory (its data/world) or "
                        "--world DIR with facts_eval.jsonl and sft_eval.jsonl (lmstack world --out DIR writes them)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def in_document_format(docs: list[dict]) -> list[dict]:
    """Fact items whose answer (``spaced_answer``) and choices carry the separator of the world's own QA
    documents (``QA_FORMAT``: a space after "Answer:", nothing after "答案："), for specs with
    ``target_delimiter=""``: solved examples then read exactly like the QA lists the models were pretrained
    on and like ``lmstack.data.world.few_shot_prompt``, which the other fact evaluations use. At this scale a layout the
    models never read costs more than any number of shots gains (``lmstack experiment prompting``)."""
    from lmstack.data.world_text import QA_FORMAT

    out = []
    for d in docs:
        sep = QA_FORMAT[d.get("lang") or "en"][1]
        extra = {"choices": [sep + c for c in d["choices"]]} if "choices" in d else {}
        out.append({**d, "spaced_answer": sep + str(d["answer"]), **extra})
    return out


# Question-answer pairs in the world's QA documents (and few_shot_prompt) are separated by a blank line.
QA_PAIR_DELIMITER = "\n\n"


def world_facts(world: Path, seed: int) -> tuple[TaskSpec, list[dict]]:
    docs = in_document_format(_read_jsonl(world / "facts_eval.jsonl"))
    spec = TaskSpec(name="world_facts", type="generate", template="{prompt}", target="{spaced_answer}",
                    target_delimiter="", num_fewshot=3, fewshot_delimiter=QA_PAIR_DELIMITER, fewshot_match="lang",
                    metrics=["contains", "exact_match", "f1"], max_new_tokens=16,
                    description="held-out fact questions, answer generated after 3 solved examples")
    return spec, docs


def world_facts_mc(world: Path, seed: int, n_choices: int = 4, in_document: bool = True) -> tuple[TaskSpec, list[dict]]:
    """``in_document=False``: plain choices for specs that put their own delimiter (a space) before them."""
    facts = _read_jsonl(world / "facts_eval.jsonl")
    rng = random.Random(seed)
    by_kind: dict[tuple, list[str]] = {}
    for f in facts:
        by_kind.setdefault((f.get("fact_type"), f.get("lang")), [])
        if f["answer"] not in by_kind[(f.get("fact_type"), f.get("lang"))]:
            by_kind[(f.get("fact_type"), f.get("lang"))].append(f["answer"])
    docs = []
    for f in facts:
        others = [a for a in by_kind[(f.get("fact_type"), f.get("lang"))] if a != f["answer"]]
        if len(others) < n_choices - 1:
            continue
        choices = rng.sample(others, n_choices - 1) + [f["answer"]]
        rng.shuffle(choices)
        docs.append({**f, "choices": choices, "gold": choices.index(f["answer"])})
    spec = TaskSpec(name="world_facts_mc", type="multiple_choice", template="{prompt}", choices="choices",
                    gold="gold", num_fewshot=2, fewshot_delimiter=QA_PAIR_DELIMITER if in_document else "\n",
                    fewshot_match="lang", target_delimiter="" if in_document else " ",
                    description="held-out fact questions, 4 choices of the same type, by log-likelihood")
    return spec, in_document_format(docs) if in_document else docs


def world_chat(name: str) -> Callable[[Path, int], tuple[TaskSpec, list[dict]]]:
    def build(world: Path, seed: int) -> tuple[TaskSpec, list[dict]]:
        docs = [d for d in _read_jsonl(world / "sft_eval.jsonl") if d.get("task") in SFT_TASKS[name]]
        metrics = ["world_judge", "chrf"] if name == "world_translate" else ["world_judge"]
        spec = TaskSpec(name=name, type="generate", messages="messages", target="{answer}", metrics=metrics,
                        until=["\n"], max_new_tokens=48, description=f"held-out chat conversations ({SFT_TASKS[name][0]})")
        return spec, docs
    return build


def _shakespeare_heldout() -> list[str]:
    path = DATA_DIR / "en" / "tinyshakespeare.txt"
    if not path.exists():
        raise TaskError(f"{path}: not found (the tinyshakespeare text ships with the repo)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[int(len(lines) * 0.9):]


def shakespeare_cloze(world: Optional[Path], seed: int, n_items: int = 300) -> tuple[TaskSpec, list[dict]]:
    lines = _shakespeare_heldout()
    word = re.compile(r"([A-Za-z']+)([^A-Za-z']*)$")
    candidates = []
    for prev, line in zip(lines, lines[1:]):
        m = word.search(line)
        if prev.strip() and len(line.split()) >= 4 and m and len(m.group(1)) >= 3 and not line.isupper():
            candidates.append((prev, line[:m.start(1)].rstrip(), m.group(1)))
    rng = random.Random(seed)
    vocab = sorted({w for _, _, w in candidates})
    docs = []
    for prev, head, last in rng.sample(candidates, min(n_items, len(candidates))):
        choices = rng.sample([w for w in vocab if w.lower() != last.lower()], 3) + [last]
        rng.shuffle(choices)
        docs.append({"context": f"{prev}\n{head}", "choices": choices, "gold": choices.index(last)})
    spec = TaskSpec(name="shakespeare_cloze", type="multiple_choice", template="{context}", choices="choices",
                    gold="gold", target_delimiter=" ", description="the last word of a held-out line, 4 choices")
    return spec, docs


def shakespeare_bpb(world: Optional[Path], seed: int, chunk_lines: int = 40) -> tuple[TaskSpec, list[dict]]:
    lines = _shakespeare_heldout()
    docs = [{"text": "\n".join(lines[i:i + chunk_lines])} for i in range(0, len(lines), chunk_lines)]
    spec = TaskSpec(name="shakespeare_bpb", type="perplexity", text="text",
                    description="bits per byte on the held-out tail of tinyshakespeare")
    return spec, docs


def poetry_completion(world: Optional[Path], seed: int, n_items: int = 200) -> tuple[TaskSpec, list[dict]]:
    path = DATA_DIR / "zh" / "poetry.jsonl"
    if not path.exists():
        raise TaskError(f"{path}: not found (the poetry file ships with the repo)")
    couplet = re.compile(r"^([^，。？！\n]{4,9}[，？！])([^，。？！\n]{4,9}[。？！])$")
    docs = []
    for poem in reversed(_read_jsonl(path)):  # the file's end: the shakiest-memorised part
        for line in poem["text"].split("\n"):
            m = couplet.match(line.strip())
            if m and len(m.group(1)) == len(m.group(2)):
                docs.append({"first": m.group(1), "second": m.group(2), "title": poem.get("title", "")})
                break
        if len(docs) >= n_items:
            break
    spec = TaskSpec(name="poetry_completion", type="generate", template="{first}", target="{second}",
                    target_delimiter="", num_fewshot=2, fewshot_delimiter="\n", until=["\n"], max_new_tokens=16,
                    metrics=["exact_match", "chrf"], description="second half of a Chinese couplet")
    return spec, docs


BUILTIN: dict[str, Callable] = {
    "world_facts": world_facts, "world_facts_mc": world_facts_mc,
    **{name: world_chat(name) for name in SFT_TASKS},
    "shakespeare_cloze": shakespeare_cloze, "shakespeare_bpb": shakespeare_bpb,
    "poetry_completion": poetry_completion,
}


def builtin_task(name: str, world: Optional[Path], seed: int = 1234) -> tuple[TaskSpec, list[dict]]:
    if name not in BUILTIN:
        raise TaskError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN)} (or declare it in --task-file)")
    if name.startswith("world") and world is None:
        raise TaskError(f"task {name!r} needs the world's files: evaluate a run directory or pass --world DIR")
    return BUILTIN[name](world, seed)


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path
