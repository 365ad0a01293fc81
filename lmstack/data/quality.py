"""A fastText-style quality classifier (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification").

Features: a hashed bag of word unigrams and bigrams (CJK: one character = one word) and of character
trigrams, ``num_buckets`` buckets. Model: the mean of the feature embeddings (``nn.EmbeddingBag``)
followed by one linear layer giving the logit of "clean". Trained in lmstack with Adam on labelled
examples:

* by default the positives are the corpus's own clean documents (world + stdlib after the filters)
  and the negatives are noisy variants lmstack makes from them (:func:`make_noisy_variants`):
  shuffled words, random characters, boilerplate, keyword spam;
* a user can supply their own labelled examples (``positives`` / ``negatives``: jsonl files with a
  ``text`` field, or txt files with one example per blank-line block).

Precision and recall are measured on a held-out split made at the document level (the noisy variants
of a held-out document are held out too).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmstack.data.dedup import _POSITION_MULT, _mix64, _token_hashes
from lmstack.data.text import words

BOILERPLATE = [
    "Home | About Us | Contact | Privacy Policy | Terms of Service",
    "We use cookies to improve your experience. By continuing you accept our use of cookies.",
    "Copyright © 2024 All rights reserved.",
    "Click here to subscribe to our newsletter!",
    "Share on Facebook Share on Twitter Share on WhatsApp",
    "Sign in | Register | Forgot password?",
    "首页 | 关于我们 | 联系我们 | 隐私政策",
    "版权所有 © 2024 保留所有权利",
    "点击这里订阅我们的新闻！",
    "Loading... Please wait.",
    "Related posts: Top 10 tips you won't believe",
    "Skip to main content Menu Search",
]
_NOISE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@#$%^&*()_+-=[]{};:,.<>/?~|" \
               "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会"


def make_noisy_variants(text: str, rng: random.Random) -> list[str]:
    """Four kinds of low-quality text derived from a clean one."""
    ws = words(text)
    out = []
    shuffled = list(ws)
    rng.shuffle(shuffled)
    out.append(" ".join(shuffled))
    chars = list(text)
    for i in range(len(chars)):
        if not chars[i].isspace() and rng.random() < 0.35:
            chars[i] = rng.choice(_NOISE_CHARS)
    out.append("".join(chars))
    lines = [ln for ln in text.split("\n") if ln.strip()]
    fragment = rng.choice(lines)[:80] if lines else ""
    bp = [rng.choice(BOILERPLATE) for _ in range(rng.randint(3, 8))]
    bp.insert(rng.randint(0, len(bp)), fragment)
    out.append("\n".join(bp))
    if ws:
        keys = [rng.choice(ws) for _ in range(3)]
        out.append(" ".join(rng.choice(keys) for _ in range(max(20, min(200, len(ws))))))
    return out


@dataclass
class QualityConfig:
    enabled: bool = True
    min_score: float = 0.5          # documents with P(clean) below are removed
    num_buckets: int = 1 << 18
    dim: int = 16
    epochs: int = 6
    lr: float = 0.02
    batch_size: int = 64
    max_chars: int = 3000           # the classifier reads the beginning of each document
    max_train_docs: int = 3000      # clean documents sampled for training (+ their noisy variants)
    heldout_fraction: float = 0.2
    positives: str = ""             # optional user-labelled examples (jsonl with "text", or txt blocks)
    negatives: str = ""
    generate_negatives: bool = True

    def __post_init__(self):
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def featurize(text: str, num_buckets: int, max_chars: int = 3000) -> np.ndarray:
    """Bucket ids of the hashed word 1-2-grams and character 3-grams of ``text``."""
    text = text[:max_chars]
    th = _token_hashes([w.lower() for w in words(text)])
    parts = [th]
    with np.errstate(over="ignore"):
        if len(th) >= 2:
            parts.append(th[:-1] * _POSITION_MULT[0] + th[1:] * _POSITION_MULT[1])
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(cps) >= 3:
            parts.append(cps[:-2] * _POSITION_MULT[2] + cps[1:-1] * _POSITION_MULT[3] + cps[2:] * _POSITION_MULT[4]
                         + np.uint64(0x5151))
    feats = _mix64(np.concatenate(parts)) % np.uint64(num_buckets)
    if len(feats) == 0:
        feats = np.zeros(1, dtype=np.uint64)
    return feats.astype(np.int64)


def read_labelled(path: str) -> list[str]:
    """Examples from a jsonl file (``text`` field) or a txt file (one example per blank-line block)."""
    from lmstack.data.sources import DataError, resolve_path

    p = resolve_path(path)
    if not p.exists():
        raise DataError(f"quality examples file {path!r} not found")
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        out = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{i}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise DataError(f"{p}:{i}: field 'text' missing or not a string")
            out.append(rec["text"])
        return out
    return [b.strip() for b in raw.split("\n\n") if b.strip()]


class QualityClassifier:
    """fastText-style linear classifier over hashed n-grams; ``score(texts) -> P(clean)``."""

    def __init__(self, cfg: QualityConfig | None = None, seed: int = 0):
        import torch

        self.cfg = cfg or QualityConfig()
        torch.manual_seed(seed)
        self.embed = torch.nn.EmbeddingBag(self.cfg.num_buckets, self.cfg.dim, mode="mean")
        torch.nn.init.uniform_(self.embed.weight, -1.0 / self.cfg.dim, 1.0 / self.cfg.dim)
        self.linear = torch.nn.Linear(self.cfg.dim, 1)
        self.seed = seed

    def _batch(self, feats: list[np.ndarray]):
        import torch

        offsets = np.concatenate([[0], np.cumsum([len(f) for f in feats])[:-1]])
        return torch.from_numpy(np.concatenate(feats)), torch.from_numpy(offsets.astype(np.int64))

    def logits(self, feats: list[np.ndarray]):
        idx, off = self._batch(feats)
        return self.linear(self.embed(idx, off)).squeeze(-1)

    def fit(self, texts: list[str], labels: list[int], log=None) -> list[float]:
        import torch

        feats = [featurize(t, self.cfg.num_buckets, self.cfg.max_chars) for t in texts]
        y = torch.tensor(labels, dtype=torch.float32)
        params = list(self.embed.parameters()) + list(self.linear.parameters())
        opt = torch.optim.Adam(params, lr=self.cfg.lr)
        rng = np.random.default_rng(self.seed)
        losses = []
        for epoch in range(self.cfg.epochs):
            order = rng.permutation(len(feats))
            total = 0.0
            for s in range(0, len(order), self.cfg.batch_size):
                b = order[s:s + self.cfg.batch_size]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(self.logits([feats[i] for i in b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            losses.append(total / max(1, len(order)))
            if log:
                log(f"quality classifier epoch {epoch + 1}/{self.cfg.epochs}: loss {losses[-1]:.4f}")
        return losses

    def score(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(texts), batch_size):
                feats = [featurize(t, self.cfg.num_buckets, self.cfg.max_chars) for t in texts[s:s + batch_size]]
                out.append(torch.sigmoid(self.logits(feats)).numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save as st_save

        from lmstack.runs import atomic_write_bytes

        tensors = {"embed": self.embed.weight.detach().contiguous(),
                   "linear.weight": self.linear.weight.detach().contiguous(),
                   "linear.bias": self.linear.bias.detach().contiguous()}
        meta = {"num_buckets": str(self.cfg.num_buckets), "dim": str(self.cfg.dim), "max_chars": str(self.cfg.max_chars)}
        atomic_write_bytes(path, st_save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "QualityClassifier":
        import torch
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            cfg = QualityConfig(num_buckets=int(meta["num_buckets"]), dim=int(meta["dim"]), max_chars=int(meta["max_chars"]))
            clf = cls(cfg)
            with torch.no_grad():
                clf.embed.weight.copy_(f.get_tensor("embed"))
                clf.linear.weight.copy_(f.get_tensor("linear.weight"))
                clf.linear.bias.copy_(f.get_tensor("linear.bias"))
        return clf


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """P/R of the "clean" class (what the filter keeps) and of the "noisy" class (what it removes)."""
    pred = scores >= threshold
    labels = labels.astype(bool)
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    tn = int((~pred & ~labels).sum())
    return {
        "precision_clean": tp / max(1, tp + fp), "recall_clean": tp / max(1, tp + fn),
        "precision_noisy": tn / max(1, tn + fn), "recall_noisy": tn / max(1, tn + fp),
        "accuracy": (tp + tn) / max(1, len(labels)),
    }


def train_quality_classifier(clean_texts: list[str], cfg: QualityConfig, seed: int = 0, log=None
                             ) -> tuple[QualityClassifier, dict]:
    """Build the labelled set (user examples and/or clean texts + generated noise), split at the
    document level, train, and measure held-out precision/recall."""
    rng = random.Random(seed)
    pos_docs = list(clean_texts)
    if cfg.positives:
        pos_docs += read_labelled(cfg.positives)
    user_neg = read_labelled(cfg.negatives) if cfg.negatives else []
    if len(pos_docs) > cfg.max_train_docs:
        pos_docs = rng.sample(pos_docs, cfg.max_train_docs)
    if not pos_docs:
        raise ValueError("quality classifier: no clean documents to train on")
    rng.shuffle(pos_docs)
    n_held = max(1, int(len(pos_docs) * cfg.heldout_fraction))
    splits = {"held": pos_docs[:n_held], "train": pos_docs[n_held:] or pos_docs[:n_held]}
    rng.shuffle(user_neg)
    n_held_neg = int(len(user_neg) * cfg.heldout_fraction)
    neg_splits = {"held": user_neg[:n_held_neg], "train": user_neg[n_held_neg:]}
    data = {}
    for name in ("train", "held"):
        texts = [t[: cfg.max_chars] for t in splits[name]]
        labels = [1] * len(texts)
        negs = list(neg_splits[name])
        if cfg.generate_negatives:
            for t in texts:
                negs.extend(make_noisy_variants(t, rng))
        # Balance the classes: the noisy variants outnumber the clean texts 4:1.
        if len(negs) > len(texts):
            negs = rng.sample(negs, len(texts))
        data[name] = (texts + negs, labels + [0] * len(negs))
    if 0 not in data["train"][1]:
        raise ValueError("quality classifier: no negative examples (set generate_negatives=true or give negatives)")
    clf = QualityClassifier(cfg, seed)
    losses = clf.fit(*data["train"], log=log)
    held_texts, held_labels = data["held"]
    pr = precision_recall(clf.score(held_texts), np.array(held_labels), cfg.min_score)
    pr.update(train_examples=len(data["train"][0]), heldout_examples=len(held_texts), final_loss=losses[-1] if losses else float("nan"))
    return clf, pr
