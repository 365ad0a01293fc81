"""Does the model know this name? An unknown-entity gate from the chat model's own likelihood (issue 14).

Asked about a person who does not exist, the 1.3M default model invents an answer about half the time:
"I don't know" trades against the facts of people it has read about (SFT that teaches more "I don't know"
also teaches it for real people whose names SFT never shows). Yet its next-token predictions tell the two
apart. After the first token of a name it has read, the rest of the name is predictable (" Weber" after
"David"); after the first token of an invented name it is not. On r2s8's default run, the summed negative
log-likelihood of a name's tokens after its first separates the held-out invented names from the real
ones with AUROC 0.999 when the name's tokens are known. This is a membership signal in the sense of loss-based
membership inference (Yeom et al. 2018; Carlini et al. 2021), and what Ferrando et al. 2024 ("Do I know this
entity?") find models represent internally; the model just does not act on it.

The gate acts on it:

- ``NameTagger`` finds the tokens of a user message that belong to a name: a logistic regression over hashed
  features of a five-token window (token ids; token shapes: capitalised, lower case, digit, CJK, UTF-8 fragment;
  the characters a token overlaps and the character bigrams at its edges). It trains on the world's training
  conversations and pretraining paragraphs, with the names of ``world.json`` labelled, plus questions about
  freshly invented names (``fresh_questions``), alone and between random stretches of text, so that it learns
  what a name looks like and where it ends, not a list of names. The held-out invented names are never used.
- ``name_surprise`` runs the chat model over the conversation and returns, per conversation, the largest
  summed NLL of a tagged span's tokens after its first (and the span's text).
- ``FamiliarityGate`` holds a tagger and a threshold. ``fit_gate`` sets the threshold so that ``keep`` of the
  training questions about real people and places pass, and reports how many questions about fresh invented
  names it stops. Above the threshold the reply is "I don't know." without asking the model.

The threshold is in the model's own nats, so it belongs to one checkpoint; ``fit_gate`` with ``tagger=``
recalibrates a saved tagger for another model.
"""

from __future__ import annotations

import json
import random
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lmstack.data.text import lang_of

IDK_REPLY = {"en": "I don't know.", "zh": "我不知道。"}
# training conversations about real people and places only (phone-number requests also name invented people)
ENTITY_TASKS = ("fact_qa", "multiturn")
N_BUCKETS = 1 << 17
WINDOW = (-2, -1, 0, 1, 2)


# ----------------------------------------------------------------------------- the tagger


def token_shape(b: bytes) -> str:
    """A coarse class of a token's bytes: leading space, then capitalised / lower / digit / cjk / punct,
    or frag for a piece of a multi-byte character."""
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return "_frag" if b[:1] == b" " else "frag"
    lead = "_" if s[:1] == " " else ""
    c = s.strip()[:1]
    if not c:
        return lead + "space"
    if c.isdigit():
        return lead + "digit"
    if c.isupper():
        return lead + "upper"
    if c.islower():
        return lead + "lower"
    return lead + ("cjk" if "\u2e80" <= c <= "\u9fff" else "punct")


def _token_chars(pieces: Sequence[bytes]) -> list[tuple[str, str, str]]:
    """Per token: the characters it overlaps (a piece of a multi-byte character gets the whole character), and
    the characters just before and just after those in the text."""
    text = b"".join(pieces).decode("utf-8", errors="replace")
    starts, pos = [], 0
    for ch in text:
        starts.append(pos)
        pos += len(ch.encode("utf-8", errors="replace"))
    out, pos, c = [], 0, 0
    for piece in pieces:
        end = pos + len(piece)
        while c + 1 < len(starts) and starts[c + 1] <= pos:
            c += 1
        k = c
        while k < len(starts) and starts[k] < end:
            k += 1
        out.append((text[c:k], text[c - 1] if c > 0 else "^", text[k] if k < len(text) else "$"))
        pos = end
    return out


def _features(tokenizer, ids: Sequence[int]) -> list[list[int]]:
    """Hashed feature buckets per token: ids and shapes of the window, the shape trigram, the characters of the
    token and its neighbours (so both pieces of a split character carry the character), and the character
    bigrams at the token's edges in the text."""
    pieces = [tokenizer.token_bytes(t) for t in ids]
    shapes = [token_shape(b) for b in pieces]
    chars = _token_chars(pieces)
    n = len(ids)
    out = []
    for i in range(n):
        names = []
        for d in WINDOW:
            j = i + d
            ok = 0 <= j < n
            names.append(f"t{d}={ids[j] if ok else '-'}")
            names.append(f"s{d}={shapes[j] if ok else '-'}")
            if ok and abs(d) <= 1:
                names += [f"c{d}={ch}" for ch in chars[j][0]]
        own, before, after = chars[i]
        if own:  # character bigrams across the token's edges: "谢谢" (thanks) is not "谢敏" (a name)
            names += [f"L={before}{own[0]}", f"R={own[-1]}{after}"]
        names.append(f"sss={shapes[i - 1] if i else '-'}|{shapes[i]}|{shapes[i + 1] if i + 1 < n else '-'}")
        out.append([zlib.crc32(x.encode()) % N_BUCKETS for x in names])
    return out


class NameTagger(nn.Module):
    """P(token belongs to a name) from hashed window features (a linear model: one weight per bucket)."""

    def __init__(self):
        super().__init__()
        self.weights = nn.EmbeddingBag(N_BUCKETS, 1, mode="sum")
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _bags(feats: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.tensor([b for f in feats for b in f], dtype=torch.long)
        offsets = torch.tensor([0] + [len(f) for f in feats[:-1]], dtype=torch.long).cumsum(0)
        return flat, offsets

    def logits(self, bags: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.weights(*bags).squeeze(-1) + self.bias

    @torch.no_grad()
    def proba(self, tokenizer, ids: Sequence[int]) -> list[float]:
        if not ids:
            return []
        return torch.sigmoid(self.logits(self._bags(_features(tokenizer, ids)))).tolist()

    def fit(self, tokenizer, examples: list[tuple[list[int], list[bool]]], steps: int = 300, lr: float = 0.05,
            l2: float = 1e-5) -> float:
        """Full-batch Adam on the mean logistic loss over the tokens of ``examples`` ((ids, is-name labels) per
        message) plus ``l2`` times the squared weights; returns the training accuracy. The gradient is one
        sparse product per step (tokens x buckets, a handful of ones per row)."""
        feats, labels = [], []
        for ids, lab in examples:
            feats += _features(tokenizer, ids)
            labels += lab
        y = torch.tensor(labels, dtype=torch.float32)[:, None]
        flat, offsets = self._bags(feats)
        rows = torch.repeat_interleave(torch.arange(len(feats)), torch.tensor([len(f) for f in feats]))
        x = torch.sparse_coo_tensor(torch.stack([rows, flat]), torch.ones(len(flat)), (len(feats), N_BUCKETS),
                                    check_invariants=True).coalesce()
        with warnings.catch_warnings():  # CSR products are ~7x faster than COO here; torch calls CSR "beta"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            x, xt = x.to_sparse_csr(), x.t().coalesce().to_sparse_csr()
        w, b = self.weights.weight, self.bias
        opt = torch.optim.Adam([w, b], lr=lr)
        with torch.no_grad():
            for _ in range(steps):
                r = (torch.sigmoid(x @ w + b) - y) / len(feats)  # d(mean loss)/dz
                w.grad = xt @ r + 2 * l2 * w
                b.grad = r.sum().reshape(1)
                opt.step()
            return float((((x @ w + b) > 0) == (y > 0.5)).float().mean())


# ----------------------------------------------------------------------------- conversations and names


def _user_token_ranges(tokenizer, messages: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
    """The chat prompt's ids and, per user message, (first token, end token): the tokens that lie inside the
    message's text."""
    ids, _ = tokenizer.encode_chat(messages, add_generation_prompt=True)
    pieces = [tokenizer.token_bytes(t) for t in ids]
    starts, pos = [], 0
    for b in pieces:
        starts.append(pos)
        pos += len(b)
    full = b"".join(pieces)
    ranges, start = [], 0
    for m in messages:
        content = m["content"].encode()
        s = full.find(content, start)
        if s < 0:
            continue
        start = s + len(content)
        if m["role"] != "user":
            continue
        toks = [i for i, (a, b) in enumerate(zip(starts, pieces)) if a >= s and a + len(b) <= start]
        if toks:
            ranges.append((toks[0], toks[-1] + 1))
    return list(ids), ranges


def _name_labels(tokenizer, text: str, ids: Sequence[int], names: Sequence[str]) -> list[bool]:
    """Which tokens of ``text`` (encoded as ``ids``) overlap one of ``names`` (longest names first)."""
    taken = [False] * len(text)
    spans = []
    for name in sorted(names, key=len, reverse=True):
        k = text.find(name)
        while k >= 0:
            if not any(taken[k:k + len(name)]):
                taken[k:k + len(name)] = [True] * len(name)
                b0 = len(text[:k].encode())
                spans.append((b0, b0 + len(name.encode())))
            k = text.find(name, k + 1)
    out, pos = [], 0
    for t in ids:
        n = len(tokenizer.token_bytes(t))
        out.append(any(pos < b1 and pos + n > b0 for b0, b1 in spans))
        pos += n
    return out


def world_names(w) -> list[str]:
    """Every name the world ``w`` (``lmstack.data.world.World``) defines for training: people, cities, countries
    and capitals, and the invented names of the training split (never the held-out invented ones)."""
    names = {n for e in w.people + w.cities for n in (e.name_en, e.name_zh)}
    names |= {e[k] for e in w.unknown_people["train"] + w.unknown_cities["train"] for k in ("name_en", "name_zh")}
    for c in w.countries:
        names |= {c.name_en.removeprefix("the "), c.name_zh, c.capital_en, c.capital_zh}
    return sorted(names)


def fresh_questions(w, n: int, seed: int) -> list[tuple[list[dict], list[str]]]:
    """``n`` questions in the training phrasings of the world ``w`` about people and places invented here, with
    no name equal to or inside any name of the world (its held-out invented names included)."""
    from lmstack.data.world.dialogues import DialogBuilder
    from lmstack.data.world.entities import UnseenNames

    builder, names = DialogBuilder(w), UnseenNames(w)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lang = rng.choice(("en", "zh"))
        kind, entity = ("person", names.person(rng)) if rng.random() < 0.7 else ("city", names.city(rng))
        question = builder.unknown_question(rng, "train", kind, entity, lang)[0]
        out.append(([{"role": "user", "content": question}], [entity["name_en"], entity["name_zh"]]))
    return out


# ----------------------------------------------------------------------------- the model's surprise


@torch.no_grad()
def _token_nll(model: nn.Module, tokenizer, seqs: list[list[int]], batch_size: int = 32) -> list[list[float]]:
    """Per sequence, the NLL of each token given the ones before it (0 for the first), right-padded batches."""
    from lmstack.align.common import model_max_len

    limit = model_max_len(model) or max(len(s) for s in seqs)
    device = next(model.parameters()).device
    pad = tokenizer.pad_id
    out = []
    for b in range(0, len(seqs), batch_size):
        chunk = [s[-limit:] for s in seqs[b:b + batch_size]]
        width = max(len(s) for s in chunk)
        x = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=device)
        logp = torch.log_softmax(model(x).logits.float(), -1)
        nll = -logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
        for s, full, row in zip(chunk, seqs[b:b + batch_size], nll.tolist()):
            cut = len(full) - len(s)  # tokens dropped on the left when a conversation overflows the context
            out.append([0.0] * (cut + 1) + row[:len(s) - 1])
    return out


def name_surprise(model: nn.Module, tokenizer, tagger: NameTagger, conversations: list[list[dict]],
                  min_prob: float = 0.8) -> list[tuple[float, str]]:
    """Per conversation: the largest summed NLL of the tokens after the first of a tagged span (a maximal run
    of user-message tokens the tagger gives at least ``min_prob``), and that span's text ("" when none)."""
    prepared = [_user_token_ranges(tokenizer, c) for c in conversations]
    nlls = _token_nll(model, tokenizer, [ids for ids, _ in prepared])
    out = []
    for (ids, ranges), nll in zip(prepared, nlls):
        best, best_span = 0.0, ""
        for a, b in ranges:
            probs = tagger.proba(tokenizer, ids[a:b])
            i = 0
            while i < len(probs):
                if probs[i] < min_prob:
                    i += 1
                    continue
                j = i
                while j < len(probs) and probs[j] >= min_prob:
                    j += 1
                score = sum(nll[a + k] for k in range(i + 1, j))
                if score > best or not best_span:
                    best, best_span = score, tokenizer.decode(ids[a + i:a + j]).strip()
                i = j
        out.append((best, best_span))
    return out


# ----------------------------------------------------------------------------- the gate


@dataclass
class FamiliarityGate:
    tagger: NameTagger
    threshold: float
    min_prob: float = 0.8
    keep: float = 0.97  # the share of training questions about real entities the threshold was set to let through

    def check(self, model: nn.Module, tokenizer, conversations: list[list[dict]]) -> list[tuple[bool, float, str]]:
        """Per conversation: (stopped, surprise in nats, the most surprising name)."""
        return [(s > self.threshold, s, span)
                for s, span in name_surprise(model, tokenizer, self.tagger, conversations, self.min_prob)]

    @staticmethod
    def reply(conversation: list[dict]) -> str:
        """The answer in place of the model's: "I don't know." in the language of the last user message."""
        last = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
        return IDK_REPLY[lang_of(last)]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        save_file({"weights": self.tagger.weights.weight.detach().contiguous(), "bias": self.tagger.bias.detach()},
                  str(path / "tagger.safetensors"))
        (path / "gate.json").write_text(json.dumps({"threshold": self.threshold, "min_prob": self.min_prob,
                                                    "keep": self.keep, "n_buckets": N_BUCKETS}, indent=1) + "\n",
                                        encoding="utf-8")

    @classmethod
    def beside(cls, checkpoint: Path) -> "FamiliarityGate | None":
        """The gate saved beside a checkpoint (``checkpoint/familiarity``), or None when it has none."""
        path = checkpoint / "familiarity"
        return cls.load(path) if (path / "gate.json").exists() else None

    @classmethod
    def load(cls, path: Path) -> "FamiliarityGate":
        from safetensors.torch import load_file

        meta_path = path / "gate.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(path / "tagger.safetensors"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a familiarity gate ({e})") from e
        if meta.get("n_buckets") != N_BUCKETS or tuple(tensors["weights"].shape) != (N_BUCKETS, 1):
            raise ValueError(f"{meta_path}: tagger has {meta.get('n_buckets')} buckets, this code uses {N_BUCKETS}")
        tagger = NameTagger()
        with torch.no_grad():
            tagger.weights.weight.copy_(tensors["weights"])
            tagger.bias.copy_(tensors["bias"])
        return cls(tagger, float(meta["threshold"]), float(meta["min_prob"]), float(meta.get("keep", 0.97)))


def world_paragraphs(w, n: int, seed: int) -> list[str]:
    """``n`` paragraphs of the world ``w``'s pretraining documents that name only its own entities (biographies,
    stories, quizzes, geography, parallel text; not the copy pages of invented words): the contexts around
    names are far more varied there than in the SFT questions."""
    from lmstack.data.world.documents import make_pretrain_docs

    make_pretrain_docs(w)
    paragraphs = [p for d in w.docs if d["kind"] in ("bio", "story", "quiz", "geo", "parallel")
                  for p in d["text"].split("\n") if p.strip()]
    return random.Random(seed).sample(paragraphs, min(n, len(paragraphs)))


def _random_stretch(rng: random.Random, text: str, lang: str) -> str:
    """A few characters (zh) or words (en) from a random place in ``text``."""
    units = list(text) if lang == "zh" else text.split()
    n = rng.randint(1, 4)
    k = rng.randrange(max(1, len(units) - n))
    return ("" if lang == "zh" else " ").join(units[k:k + n])


def train_tagger(tokenizer, w, train_conversations: list[dict], seed: int,
                 n_conversations: int = 2500, n_fresh: int = 1500, n_paragraphs: int = 1500) -> tuple[NameTagger, dict]:
    """A tagger from the world ``w``'s training conversations and pretraining paragraphs (its names labelled)
    and questions about ``n_fresh`` freshly invented names."""
    names = world_names(w)
    rng = random.Random(seed)
    convs = rng.sample(train_conversations, min(n_conversations, len(train_conversations)))
    examples = []

    def add(text: str, extra: Sequence[str] = ()):
        ids = tokenizer.encode(text)
        examples.append((ids, _name_labels(tokenizer, text, ids, list(names) + list(extra))))

    for c in convs:
        for m in c["messages"]:
            if m["role"] == "user":
                add(m["content"])
    paragraphs = world_paragraphs(w, n_paragraphs, seed)
    for text in paragraphs:
        add(text)
    fresh = fresh_questions(w, n_fresh, seed + 1)
    for messages, new_names in fresh:
        add(messages[0]["content"], new_names)
    # Names between random stretches of the world's text: where a name ends does not depend on the template
    # around it (a held-out question puts words after a name that no training question does).
    for messages, new_names in fresh:
        for name in new_names:
            lang = lang_of(name)
            source = [p for p in rng.sample(paragraphs, 8) if lang_of(p) == lang] or paragraphs
            before, after = (_random_stretch(rng, rng.choice(source), lang) for _ in range(2))
            sep = "" if lang == "zh" else " "
            add(f"{before}{sep}{name}{sep}{after}".strip(), new_names)
    tagger = NameTagger()
    acc = tagger.fit(tokenizer, examples)
    return tagger, {"tagger_messages": len(examples), "tagger_train_accuracy": round(acc, 4)}


def fit_gate(model: nn.Module, tokenizer, world_dir: Path, train_conversations: list[dict], seed: int,
             keep: float = 0.97, tagger: NameTagger | None = None, n_calibration: int = 600, n_fresh: int = 1500,
             min_prob: float = 0.8) -> tuple[FamiliarityGate, dict]:
    """Train a tagger (unless given; ``n_fresh`` invented-name questions) and set the threshold so that ``keep``
    of ``n_calibration`` training questions about real people and places pass. Also reports the share of
    other fresh invented-name questions (training phrasings) it stops."""
    from lmstack.data.world import load_world
    from lmstack.eval.scoring import split_prompt

    w = load_world(world_dir)
    info: dict = {}
    if tagger is None:
        tagger, info = train_tagger(tokenizer, w, train_conversations, seed, n_fresh=n_fresh)
    rng = random.Random(seed + 2)
    real = [c for c in train_conversations if c.get("task") in ENTITY_TASKS]
    real = rng.sample(real, min(n_calibration, len(real)))
    if not real:
        raise ValueError("fit_gate: the training conversations have no questions about real entities "
                         f"(tasks {', '.join(ENTITY_TASKS)}) to calibrate on")
    real_scores = sorted(s for s, _ in name_surprise(model, tokenizer, tagger,
                                                     [split_prompt(c["messages"])[0] for c in real], min_prob))
    threshold = real_scores[min(len(real_scores) - 1, int(keep * len(real_scores)))]
    fresh = fresh_questions(w, max(50, n_calibration // 2), seed + 3)
    fresh_scores = [s for s, _ in name_surprise(model, tokenizer, tagger, [m for m, _ in fresh], min_prob)]
    info.update(gate_threshold=round(threshold, 3), gate_keep=keep,
                gate_train_real_kept=round(sum(s <= threshold for s in real_scores) / len(real_scores), 4),
                gate_train_fresh_stopped=round(sum(s > threshold for s in fresh_scores) / len(fresh_scores), 4))
    return FamiliarityGate(tagger, threshold, min_prob, keep), info


def carry_over(model: nn.Module, tokenizer, run_path: Path, out_dir: Path, seed: int) -> dict:
    """Recalibrate the SFT stage's gate (its tagger, a new threshold) for a later stage's model and save it in
    ``out_dir/familiarity``, so that `lmstack chat` on that checkpoint uses it too. Nothing (and {}) when the
    run has no SFT gate or no world."""
    from lmstack.align.data import load_chat_jsonl

    base = FamiliarityGate.beside(run_path / "checkpoints" / "sft")
    world_dir = run_path / "data" / "world"
    if base is None or not (world_dir / "sft_train.jsonl").exists():
        return {}
    train = [{"messages": e.messages, **e.meta} for e in load_chat_jsonl(world_dir / "sft_train.jsonl")]
    gate, info = fit_gate(model, tokenizer, world_dir, train, seed, keep=base.keep, tagger=base.tagger,
                          min_prob=base.min_prob)
    gate.save(out_dir / "familiarity")
    return info
