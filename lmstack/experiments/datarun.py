"""The shared harness of the data experiments (data_quality, repetition, mixing, curriculum).

Each of them asks "what does THIS training data do to a small model at a fixed token budget?". The harness
gives them the same pieces, so that only the data differs between conditions:

- documents from lmstack's sources (:func:`load_source`): the synthetic world, tinyshakespeare, the Chinese
  poems and the interpreter's standard library (code), each split into train / held-out documents;
- one byte-level BPE per experiment (:func:`train_small_bpe`), trained on a sample of every source;
- a training stream of exactly ``budget`` tokens built from a list of documents (:func:`fill_budget`), cut into
  non-overlapping windows that are visited once, shuffled or in the given order (:func:`window_stream`);
- pretraining with the knowledge experiment's loop (``lmstack.train.simple.train_steps``: AdamW, warmup + cosine), with
  an optional held-out loss curve measured between steps (:func:`pretrain`);
- measurements: held-out loss per source (:func:`heldout_loss`), exact greedy continuation of prefixes
  (:func:`memorised`) and few-shot fact accuracy (``lmstack.eval.facts``).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from lmstack import DATA_DIR

SOURCES = ("world", "shakespeare", "poetry", "code")


@dataclass
class RunSize:
    """Model and budget shared by every condition of one experiment (the experiments' configs extend it)."""

    seeds: list[int] = field(default_factory=lambda: [0])
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 600              # token budget = steps x batch_size x seq_len
    lr: float = 3e-3
    eval_windows: int = 48        # held-out windows per source for the loss
    threads: int = 2

    def check(self, what: str) -> None:
        if not self.seeds:
            raise ValueError(f"{what}.seeds: give at least one seed")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len", "batch_size", "steps", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{what}.{name}={getattr(self, name)} must be >= 1")
        if self.d_model % self.n_heads:
            raise ValueError(f"{what}.d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")

    def budget(self, steps: int | None = None) -> int:
        """Training tokens (inputs) seen by a run of ``steps`` steps."""
        return (self.steps if steps is None else steps) * self.batch_size * self.seq_len


# ------------------------------------------------------------------------------------------ documents

def _chunk_lines(lines: list[str], target_chars: int) -> list[str]:
    docs, cur, size = [], [], 0
    for line in lines:
        cur.append(line)
        size += len(line) + 1
        if size >= target_chars:
            docs.append("\n".join(cur).strip())
            cur, size = [], 0
    if cur:
        docs.append("\n".join(cur).strip())
    return [d for d in docs if d]


def load_source(name: str, max_chars: int, seed: int = 0, world=None) -> list[dict]:
    """Up to ``max_chars`` of one source as documents ``{"text", "source", "lang"}`` in a seeded order.

    world: the pretraining documents of ``world`` (a built World); shakespeare: runs of lines of about
    600-2400 characters; poetry: groups of 1-6 poems; code: one standard-library module per document."""
    rng = random.Random(f"datarun:{name}:{seed}")
    if name == "world":
        if world is None:
            raise ValueError("load_source('world'): pass the built world (lmstack.data.world.build_world)")
        docs = [{"text": d["text"], "source": "world", "lang": d["lang"], "kind": d.get("kind", "")}
                for d in world.pretrain_docs()]
    elif name == "shakespeare":
        lines = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
        texts, i = [], 0
        while i < len(lines):
            n = rng.randint(20, 80)
            texts.append("\n".join(lines[i:i + n]).strip())
            i += n
        docs = [{"text": t, "source": name, "lang": "en"} for t in texts if t]
    elif name == "poetry":
        poems = []
        with open(DATA_DIR / "zh" / "poetry.jsonl", encoding="utf-8") as f:
            for line in f:
                poems.append(json.loads(line)["text"])
                if sum(len(p) for p in poems) > 3 * max_chars:
                    break
        rng.shuffle(poems)
        texts = []
        while poems:
            k = rng.randint(1, 6)
            texts.append("\n\n".join(poems[:k]))
            poems = poems[k:]
        docs = [{"text": t, "source": name, "lang": "zh"} for t in texts]
    elif name == "code":
        from lmstack.data.sources import ReadStats, read_stdlib

        docs = [{"text": d["text"][:6000], "source": name, "lang": "code"}
                for d in read_stdlib(ReadStats(), ["test", "tests", "idlelib", "site-packages"], seed,
                                     max_bytes=max(4 * max_chars, 200_000))]
    else:
        raise ValueError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
    rng.shuffle(docs)
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d)
        total += len(d["text"])
    return out


def load_sources(sources: list[str], max_chars: int, seed: int) -> tuple[object | None, list[dict]]:
    """The experiment's documents from every named source, and the world they came from (None without it)."""
    from lmstack.data.world import WorldConfig, build_world

    world = build_world(WorldConfig(), seed) if "world" in sources else None
    return world, [d for name in sources for d in load_source(name, max_chars, seed, world=world)]


def split_heldout(docs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) at the document level, deterministic given ``seed``."""
    order = list(range(len(docs)))
    random.Random(f"heldout:{seed}").shuffle(order)
    n_held = max(1, round(fraction * len(docs))) if len(docs) > 1 else 0
    held = set(order[:n_held])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def train_small_bpe(texts: list[str], vocab_size: int, sample_chars: int = 400_000):
    """A byte-level BPE on an even sample of ``texts`` (every text contributes its beginning)."""
    from lmstack.tokenizer import train_tokenizer

    per_text = max(200, sample_chars // max(1, len(texts)))
    return train_tokenizer([t[:per_text] for t in texts], vocab_size, mode="byte", progress=False)


def encode_docs(tokenizer, docs: list[dict]) -> list[list[int]]:
    """Each document as ``[bos] + tokens + [eos]``."""
    return [[tokenizer.bos_id] + tokenizer.encode(d["text"]) + [tokenizer.eos_id] for d in docs]


# ------------------------------------------------------------------------------------------ streams

def fill_budget(doc_ids: list[list[int]], n_tokens: int, seed: int | None, *, reshuffle: bool = True
                ) -> tuple[torch.Tensor, float]:
    """Concatenate documents until ``n_tokens`` (cut at the end): (stream, epochs over the documents).

    ``seed`` None keeps the given order (a curriculum); otherwise documents are shuffled, and reshuffled on each
    new pass when the budget is larger than the documents."""
    if not doc_ids or not any(doc_ids):
        raise ValueError("fill_budget: no documents to build the training stream from")
    rng = random.Random(seed)
    out: list[int] = []
    passes = 0
    total = sum(len(d) for d in doc_ids)
    while len(out) < n_tokens:
        order = list(range(len(doc_ids)))
        if seed is not None and (reshuffle or passes == 0):
            rng.shuffle(order)
        for i in order:
            out.extend(doc_ids[i])
            if len(out) >= n_tokens:
                break
        passes += 1
    return torch.tensor(out[:n_tokens], dtype=torch.long), round(n_tokens / total, 3)


def window_stream(stream: torch.Tensor, seq_len: int, batch_size: int, seed: int | None) -> Iterator:
    """Batches of consecutive non-overlapping windows (targets shifted by one), each window visited once per
    pass; ``seed`` None visits them in stream order (a curriculum), otherwise in a seeded random order."""
    n = (len(stream) - 1) // seq_len
    if n < batch_size:
        raise ValueError(f"window_stream: {len(stream)} tokens make {n} windows of {seq_len}, fewer than a batch")
    gen = torch.Generator().manual_seed(seed or 0)
    while True:
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=gen)
        for b in range(0, n - batch_size + 1, batch_size):
            starts = (order[b:b + batch_size] * seq_len).tolist()
            block = torch.stack([stream[s:s + seq_len + 1] for s in starts])
            yield block[:, :-1], block[:, 1:]


# ------------------------------------------------------------------------------------------ model

def new_model(size: RunSize, vocab_size: int, seed: int):
    from lmstack.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    mcfg = ModelConfig.preset("llama-style", vocab_size=vocab_size, d_model=size.d_model, n_layers=size.n_layers,
                              n_heads=size.n_heads, n_kv_heads=size.n_heads, max_seq_len=size.seq_len)
    return Transformer(mcfg)


def _with_probes(batches: Iterator, model, every: int, probe: Callable, curve: list) -> Iterator:
    """Pass ``batches`` through, and measure ``probe(model)`` before every ``every``-th one (and at the end
    of the last), so that the knowledge loop needs no callback argument."""
    step = 0
    for batch in batches:
        if every and step % every == 0:
            was_training = model.training
            model.eval()
            curve.append((step, probe(model)))
            model.train(was_training)
        step += 1
        yield batch


def pretrain(size: RunSize, stream: torch.Tensor, vocab_size: int, seed: int, desc: str, *, ordered: bool = False,
             curve_every: int = 0, probe: Callable | None = None):
    """A fresh model trained for ``size.steps`` steps on ``stream``'s windows: (model, train losses, curve).

    ``ordered`` keeps the stream's order (curriculum runs); ``curve`` is [(step, probe(model))] when
    ``curve_every`` and ``probe`` are given, ending with the trained model."""
    from lmstack.train.simple import train_steps

    model = new_model(size, vocab_size, seed)
    batches = window_stream(stream, size.seq_len, size.batch_size, None if ordered else seed)
    curve: list = []
    if curve_every and probe is not None:
        batches = _with_probes(batches, model, curve_every, probe, curve)
    losses = train_steps(model, batches, size.steps, size.lr, desc)
    if curve_every and probe is not None:
        curve.append((size.steps, probe(model)))
    return model, losses, curve


@torch.no_grad()
def heldout_loss(model, doc_ids: list[list[int]], seq_len: int, max_windows: int) -> float:
    """Mean next-token loss (nats/token) over up to ``max_windows`` windows of the held-out documents."""
    stream = [t for d in doc_ids for t in d]
    n = min(max_windows, (len(stream) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"heldout_loss: {len(stream)} held-out tokens are fewer than one window of {seq_len}")
    data = torch.tensor(stream[:n * seq_len + 1])
    x = torch.stack([data[i * seq_len:(i + 1) * seq_len] for i in range(n)])
    y = torch.stack([data[i * seq_len + 1:(i + 1) * seq_len + 1] for i in range(n)])
    model.eval()
    total = 0.0
    for b in range(0, n, 32):
        total += float(model(x[b:b + 32], targets=y[b:b + 32]).loss) * len(x[b:b + 32])
    return total / n


def heldout_by_source(tokenizer, held: list[dict], sources: list[str], seq_len: int) -> dict[str, list[list[int]]]:
    """Encoded held-out documents per source; sources with less than one window of held-out text are left out."""
    out = {s: encode_docs(tokenizer, [d for d in held if d["source"] == s]) for s in sources}
    return {s: ids for s, ids in out.items() if sum(map(len, ids)) > seq_len + 1}


def loss_per_source(model, heldout: dict[str, list[list[int]]], size: RunSize) -> dict[str, float]:
    return {name: round(heldout_loss(model, ids, size.seq_len, size.eval_windows), 4) for name, ids in heldout.items()}


@torch.no_grad()
def memorised(model, doc_ids: list[list[int]], prefix: int, continuation: int, batch: int = 32) -> dict:
    """Exact memorisation (Carlini et al. 2022's extractability): greedy decoding from the first ``prefix``
    tokens reproduces the next ``continuation`` tokens exactly. Documents shorter than both are skipped."""
    usable = [d[:prefix + continuation] for d in doc_ids if len(d) >= prefix + continuation]
    if not usable:
        return {"exact": float("nan"), "token_match": float("nan"), "n": 0}
    model.eval()
    context = model.config.max_seq_len
    exact = matched = 0
    for b in range(0, len(usable), batch):
        rows = torch.tensor(usable[b:b + batch])
        seq = rows[:, :prefix]
        for _ in range(continuation):
            logits = model(seq[:, -context:]).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        same = seq[:, prefix:] == rows[:, prefix:]
        exact += int(same.all(dim=1).sum())
        matched += int(same.sum())
    return {"exact": exact / len(usable), "token_match": matched / (len(usable) * continuation), "n": len(usable)}


def fact_scores(model, tokenizer, items: list[dict], seed: int, max_items: int) -> dict:
    """Few-shot fact accuracy (``lmstack.eval.facts``), overall and per language, plus ``answer_nll``: the
    mean loss of the reference answer's tokens after the same kind of prompt, which still moves when the
    greedy answers are all wrong (a tiny model's usual case)."""
    from lmstack.eval.facts import fact_accuracy

    if not items:
        return {}
    res = fact_accuracy(model, tokenizer, items, shots=3, max_new_tokens=12, seed=seed, max_items=max_items)
    scores = {k: round(v, 4) for k, v in res["accuracy"].items()}
    return scores | {"n": res["counts"].get("all", 0), "answer_nll": round(answer_nll(model, tokenizer, items, seed,
                                                                                         max_items), 4)}


@torch.no_grad()
def answer_nll(model, tokenizer, items: list[dict], seed: int, max_items: int, shots: int = 3) -> float:
    """Mean per-token loss of each item's answer after a few-shot prompt of other facts in its language."""
    from lmstack.data.world import few_shot_prompt

    rng = random.Random(f"answer-nll:{seed}")
    chosen = rng.sample(items, min(max_items, len(items)))
    context = model.config.max_seq_len
    model.eval()
    losses = []
    for item in chosen:
        pool = [f for f in items if f.get("lang") == item.get("lang") and f.get("fact") != item.get("fact")]
        prompt = [tokenizer.bos_id] + tokenizer.encode(few_shot_prompt(item, rng.sample(pool, min(shots, len(pool)))))
        sep = "" if item.get("lang") == "zh" else " "
        answer = tokenizer.encode(sep + item["answer"])
        ids = (prompt + answer)[-context:]
        x = torch.tensor([ids[:-1]])
        logp = torch.log_softmax(model(x).logits[0].float(), dim=-1)
        targets = torch.tensor(ids[1:])
        picked = logp[torch.arange(len(targets)), targets][-len(answer):]
        losses.append(float(-picked.mean()))
    return mean(losses)


# ------------------------------------------------------------------------------------------ summaries

def mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def spread(xs) -> str:
    """``mean`` or ``mean (min-max)`` over seeds."""
    xs = [float(x) for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{mean(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def write_outputs(out: Path, result: dict, report: str) -> None:
    from lmstack.runs import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "report.md", report)
