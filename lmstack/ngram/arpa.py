"""ARPA back-off files: export of backoff-form models (Katz, Kneser-Ney) and import.

Format (Doug Paul's ARPA, as read by KenLM and SRILM)::

    \\data\\
    ngram 1=V
    ngram 2=M2
    \\1-grams:
    log10(p)<TAB>w<TAB>log10(bow)
    ...
    \\end\\

``<s>`` is written with log10 p = -99 (it is never predicted). Values are written with 8 significant digits;
KenLM stores them as float32, so sentence scores agree to ~1e-5.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from lmstack.ngram.counts import SPECIAL_SYMBOLS, Vocab, extend_left
from lmstack.ngram.models import LOG10_ZERO, BackoffModel


def _fmt(values: np.ndarray) -> list[str]:
    """log10 values with 8 significant digits. Each distinct value is formatted once (float
    formatting dominates the export time and n-gram tables repeat the same values a lot)."""
    v = np.maximum(np.asarray(values, dtype=np.float64), LOG10_ZERO)
    uniq, inv = np.unique(v, return_inverse=True)
    text = np.array([f"{x:.8g}" for x in uniq.tolist()], dtype=object)
    return text[inv.reshape(-1)].tolist()


def write_arpa(model: BackoffModel, path: str | os.PathLike) -> None:
    """Write ``model`` as an ARPA file (atomically)."""
    if not isinstance(model, BackoffModel) or not model.normalised:
        raise ValueError(f"{getattr(model, 'method', model)!r}: only normalised backoff-form models (katz, "
                         "kneser_ney, modified_kneser_ney, imported ARPA) can be written as ARPA")
    from lmstack.runs import atomic_write_text

    syms = np.array(model.vocab.symbols, dtype=object)
    buf = io.StringIO()
    buf.write("\\data\\\n")
    for k in range(1, model.order + 1):
        buf.write(f"ngram {k}={model.num_grams(k)}\n")
    words = syms
    for k in range(1, model.order + 1):
        buf.write(f"\n\\{k}-grams:\n")
        if k > 1:
            # "w1 w2..wk" = w1 + " " + the already-built string of the suffix row in table k-1.
            keys = model.keys[k]
            words = (syms[keys % model.V] + " ") + words[keys // model.V]
        if k < model.order:
            lines = zip(_fmt(model.logp[k]), words.tolist(), _fmt(model.bow[k]))
        else:
            lines = zip(_fmt(model.logp[k]), words.tolist())
        buf.write("\n".join(map("\t".join, lines)))
        buf.write("\n")
    buf.write("\n\\end\\\n")
    atomic_write_text(path, buf.getvalue())


def read_arpa(path: str | os.PathLike, unit: str = "word") -> BackoffModel:
    """Load an ARPA file into a :class:`BackoffModel` (``unit`` says how to split text for scoring).

    Errors name the file and line. n-grams whose suffix is missing (not a valid backoff model)
    are rejected; a missing ``<unk>`` is added with log10 p = -99, as KenLM treats it as impossible."""
    path = Path(path)
    declared: dict[int, int] = {}
    sections: dict[int, list[tuple[float, list[str], float, int]]] = {}
    state, order = "start", 0
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            if state == "start":
                if line == "\\data\\":
                    state = "data"
                continue
            if line == "\\end\\":
                state = "end"
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                try:
                    order = int(line[1:-7])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: bad section header {line!r}") from None
                if order not in declared:
                    raise ValueError(f"{path}:{lineno}: section {line} not declared in \\data\\")
                sections[order] = []
                state = "grams"
                continue
            if state == "data":
                if not line.startswith("ngram ") or "=" not in line:
                    raise ValueError(f"{path}:{lineno}: expected 'ngram N=COUNT' in \\data\\, got {line!r}")
                k, n = line[6:].split("=", 1)
                declared[int(k)] = int(n)
                continue
            parts = line.split()
            if len(parts) < order + 1:
                raise ValueError(f"{path}:{lineno}: {order}-gram line needs a probability and {order} words: {line!r}")
            try:
                logp = float(parts[0])
                bow = float(parts[order + 1]) if len(parts) > order + 1 else 0.0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad number in {line!r}") from None
            if len(parts) > order + 2:
                raise ValueError(f"{path}:{lineno}: too many fields for a {order}-gram: {line!r}")
            sections[order].append((logp, parts[1:order + 1], bow, lineno))
    if state != "end":
        raise ValueError(f"{path}: no \\end\\ marker (truncated file?)" if state != "start"
                         else f"{path}: not an ARPA file (no \\data\\ section)")
    for k, n in declared.items():
        got = len(sections.get(k, []))
        if got != n:
            raise ValueError(f"{path}: \\data\\ declares {n} {k}-grams but the file has {got}")
    order = max(declared)
    if 1 not in sections:
        raise ValueError(f"{path}: no unigram section")
    unigram_words = [w[0] for _, w, _, _ in sections[1]]
    symbols = list(SPECIAL_SYMBOLS) + [w for w in unigram_words if w not in SPECIAL_SYMBOLS]
    vocab = Vocab(symbols, unit)
    V = vocab.size
    logp1 = np.full(V, LOG10_ZERO)
    bow1 = np.zeros(V)
    for lp, w, b, _ in sections[1]:
        i = vocab.index[w[0]]
        logp1[i], bow1[i] = lp, b
    keys, logp, bow = [None, None], [None, logp1], [None, bow1]
    for k in range(2, order + 1):
        entries = sections[k]
        ids = np.array([[vocab.index.get(w, -1) for w in ws] for _, ws, _, _ in entries], dtype=np.int64).reshape(-1, k)
        unknown = np.flatnonzero((ids < 0).any(axis=1))
        if unknown.size:
            e = entries[int(unknown[0])]
            raise ValueError(f"{path}:{e[3]}: n-gram {' '.join(e[1])!r} uses a word missing from the unigrams")
        rows = ids[:, -1].copy()
        for j in range(2, k):
            rows = extend_left(keys[j], rows, ids[:, -j], V)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            e = entries[int(missing[0])]
            raise ValueError(f"{path}:{e[3]}: n-gram {' '.join(e[1])!r} has no lower-order entry "
                             f"{' '.join(e[1][1:])!r} (not a valid backoff model)")
        key = rows * V + ids[:, 0]
        order_idx = np.argsort(key, kind="stable")
        key = key[order_idx]
        if key.size > 1 and (np.diff(key) == 0).any():
            dup = entries[int(order_idx[int(np.flatnonzero(np.diff(key) == 0)[0]) + 1])]
            raise ValueError(f"{path}:{dup[3]}: duplicate n-gram {' '.join(dup[1])!r}")
        keys.append(key)
        logp.append(np.array([e[0] for e in entries])[order_idx])
        bow.append(np.array([e[2] for e in entries])[order_idx])
    bow[order] = np.zeros(0)
    return BackoffModel(vocab, order, keys, logp, bow, "arpa")
