"""A fastText-style quality classifier (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification").

Features: a hashed bag of word unigrams and bigrams (CJK: one character = one word), of word-shape
bigrams and trigrams (capitalisation + trailing punctuation) and of character trigrams, ``num_buckets`` buckets. Model: the mean of the feature embeddings (``nn.EmbeddingBag``)
followed by one linear layer giving the logit of "clean". Trained in lmstack (numpy, sparse Adagrad) on labelled
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

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmstack.data.dedup import POSITION_MULT, mix64, token_hashes
from lmstack.data.text import words
from lmstack.runs import iter_jsonl

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
    epochs: int = 3
    lr: float = 0.2                 # Adagrad step, decayed linearly to 0 (fastText's schedule)
    batch_size: int = 32
    max_chars: int = 1500           # the classifier reads the beginning of each document
    max_train_docs: int = 2000      # clean documents sampled for training (+ their noisy variants)
    heldout_fraction: float = 0.2
    positives: str = ""             # optional user-labelled examples (jsonl with "text", or txt blocks)
    negatives: str = ""
    generate_negatives: bool = True

    def __post_init__(self):
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def _shape(word: str) -> str:
    first = word[0]
    head = "A" if first.isupper() else "a" if first.isalpha() else "0" if first.isdigit() else first
    last = word[-1]
    return head + (last if len(word) > 1 and not last.isalnum() else "")


def featurize(text: str, num_buckets: int, max_chars: int = 3000) -> np.ndarray:
    """Bucket ids of the hashed word 1-2-grams and character 3-grams of ``text``."""
    text = text[:max_chars]
    ws = words(text)
    th = token_hashes([w.lower() for w in ws])
    parts = [th]
    # Word-shape n-grams ("Aa.", "a", "0"...) generalise beyond the vocabulary: shuffled text puts
    # capitalised and sentence-final words in the wrong places even when every word is common.
    shapes = token_hashes(["\x02" + _shape(w) for w in ws])
    with np.errstate(over="ignore"):
        if len(th) >= 2:
            parts.append(th[:-1] * POSITION_MULT[0] + th[1:] * POSITION_MULT[1])
        if len(shapes) >= 3:
            parts.append(shapes[:-1] * POSITION_MULT[5] + shapes[1:] * POSITION_MULT[6])
            parts.append(shapes[:-2] * POSITION_MULT[7] + shapes[1:-1] * POSITION_MULT[8] + shapes[2:] * POSITION_MULT[9])
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(cps) >= 3:
            parts.append(cps[:-2] * POSITION_MULT[2] + cps[1:-1] * POSITION_MULT[3] + cps[2:] * POSITION_MULT[4]
                         + np.uint64(0x5151))
    feats = mix64(np.concatenate(parts)) % np.uint64(num_buckets)
    if len(feats) == 0:
        feats = np.zeros(1, dtype=np.uint64)
    return feats.astype(np.int64)


def read_labelled(path: str) -> list[str]:
    """Examples from a jsonl file (``text`` field) or a txt file (one example per blank-line block)."""
    from lmstack.data.sources import DataError, resolve_path

    p = resolve_path(path)
    if not p.exists():
        raise DataError(f"quality examples file {path!r} not found")
    if p.suffix == ".jsonl":
        out = []
        for i, rec in iter_jsonl(p, DataError):
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise DataError(f"{p}:{i}: field 'text' missing or not a string")
            out.append(rec["text"])
        return out
    raw = p.read_text(encoding="utf-8")
    return [b.strip() for b in raw.split("\n\n") if b.strip()]


class QualityClassifier:
    """fastText-style linear classifier over hashed n-grams; ``score(texts) -> P(clean)``.

    Implemented in numpy (it is one embedding table and one dot product): the forward pass averages
    the embedding rows of a document's buckets, the backward pass scatters the gradient back to those
    rows only (sparse Adagrad with a linearly decaying learning rate, the decay as in fastText)."""

    def __init__(self, cfg: QualityConfig | None = None, seed: int = 0):
        self.cfg = cfg or QualityConfig()
        rng = np.random.default_rng(seed)
        d = self.cfg.dim
        self.embed = rng.uniform(-1.0 / d, 1.0 / d, size=(self.cfg.num_buckets, d)).astype(np.float32)
        self.weight = (rng.standard_normal(d) / np.sqrt(d)).astype(np.float32)
        self.bias = np.float32(0.0)
        self.seed = seed

    def _hidden(self, feats: list[np.ndarray]):
        counts = np.array([len(f) for f in feats], dtype=np.int64)
        idx = np.concatenate(feats)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        hidden = np.add.reduceat(self.embed[idx], starts, axis=0) / counts[:, None]
        return hidden, idx, counts

    def logits_of(self, feats: list[np.ndarray]) -> np.ndarray:
        hidden, _, _ = self._hidden(feats)
        return hidden @ self.weight + self.bias

    def fit(self, texts: list[str], labels: list[int], log=None) -> list[float]:
        feats = [featurize(t, self.cfg.num_buckets, self.cfg.max_chars) for t in texts]
        y = np.asarray(labels, dtype=np.float32)
        rng = np.random.default_rng(self.seed)
        self._acc_embed = np.zeros_like(self.embed)
        self._acc_w = np.zeros_like(self.weight)
        self._acc_b = np.float32(0.0)
        total_steps = self.cfg.epochs * ((len(feats) + self.cfg.batch_size - 1) // self.cfg.batch_size)
        step = 0
        losses = []
        for epoch in range(self.cfg.epochs):
            order = rng.permutation(len(feats))
            total = 0.0
            for s in range(0, len(order), self.cfg.batch_size):
                b = order[s:s + self.cfg.batch_size]
                lr = self.cfg.lr * (1.0 - step / max(1, total_steps))
                step += 1
                hidden, idx, counts = self._hidden([feats[i] for i in b])
                z = hidden @ self.weight + self.bias
                p = 1.0 / (1.0 + np.exp(-z))
                yb = y[b]
                # binary cross-entropy, numerically stable form
                total += float(np.sum(np.maximum(z, 0) - z * yb + np.log1p(np.exp(-np.abs(z)))))
                dz = (p - yb) / len(b)
                grad_hidden = (dz[:, None] * self.weight[None, :]) / counts[:, None]
                g_w = (hidden.T @ dz).astype(np.float32)
                g_b = np.float32(dz.sum())
                rows, inverse = np.unique(idx, return_inverse=True)
                g_rows = np.zeros((len(rows), self.cfg.dim), dtype=np.float32)
                np.add.at(g_rows, inverse, np.repeat(grad_hidden, counts, axis=0).astype(np.float32))
                # Adagrad (Duchi et al. 2011): rare buckets keep large steps; a document's gradient is
                # spread over thousands of buckets (mean pooling), which plain SGD would barely move.
                self._acc_embed[rows] += g_rows ** 2
                self.embed[rows] -= lr * g_rows / (np.sqrt(self._acc_embed[rows]) + 1e-8)
                self._acc_w += g_w ** 2
                self.weight -= lr * g_w / (np.sqrt(self._acc_w) + 1e-8)
                self._acc_b += g_b ** 2
                self.bias -= np.float32(lr * g_b / (np.sqrt(self._acc_b) + 1e-8))
            losses.append(total / max(1, len(order)))
            if log:
                log(f"quality classifier epoch {epoch + 1}/{self.cfg.epochs}: loss {losses[-1]:.4f}")
        return losses

    def score(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for s in range(0, len(texts), batch_size):
            feats = [featurize(t, self.cfg.num_buckets, self.cfg.max_chars) for t in texts[s:s + batch_size]]
            out.append(1.0 / (1.0 + np.exp(-self.logits_of(feats))))
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save as st_save

        from lmstack.runs import atomic_write_bytes

        tensors = {"embed": self.embed, "linear.weight": self.weight, "linear.bias": np.array([self.bias], np.float32)}
        meta = {"num_buckets": str(self.cfg.num_buckets), "dim": str(self.cfg.dim), "max_chars": str(self.cfg.max_chars)}
        atomic_write_bytes(path, st_save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "QualityClassifier":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            cfg = QualityConfig(num_buckets=int(meta["num_buckets"]), dim=int(meta["dim"]), max_chars=int(meta["max_chars"]))
            clf = cls(cfg)
            clf.embed = f.get_tensor("embed")
            clf.weight = f.get_tensor("linear.weight")
            clf.bias = np.float32(f.get_tensor("linear.bias")[0])
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
