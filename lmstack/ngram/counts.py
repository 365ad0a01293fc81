"""Vocabularies and n-gram counting over integer ids, streaming, in numpy.

Units. A model is fitted over one of three kinds of unit:
  * ``token``: ids from lmstack's tokenizer (the shards); a document is one "sentence";
  * ``char``: Unicode characters (the right unit for Chinese); a text line is one sentence;
  * ``word``: whitespace-separated words; a text line is one sentence.
Every sentence is padded as ``<s> u1 ... uk </s>`` exactly like KenLM/SRILM: one ``<s>`` (the
context of the first unit, never predicted) and one ``</s>`` (predicted, it stands for the end of
the line/document). Internal ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``.

Storage (a reversed trie in flat sorted arrays). Table k holds every distinct k-gram seen, sorted
by the int64 key ``suffix_index * V + first_word`` where ``suffix_index`` is the row of the
(k-1)-gram ``w2..wk`` in table k-1 (table 1 is dense: row == word id). So extending a gram one
word to the LEFT is one ``np.searchsorted`` -- exactly the step a backoff query needs -- and each
table costs 16 bytes per n-gram (key + count) whatever the vocabulary size or the order.
Counting sorts int64 keys with ``np.unique``; a corpus is processed in chunks of sentences and the
chunk tables are merged, so memory is bounded by the number of distinct n-grams, not the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

UNK, BOS, EOS = 0, 1, 2
SPECIAL_SYMBOLS = ("<unk>", "<s>", "</s>")
UNITS = ("token", "char", "word")

# Whitespace cannot appear inside an ARPA word, so character models name these characters.
_CHAR_NAMES = {" ": "<sp>", "\n": "<nl>", "\t": "<tab>", "\r": "<cr>"}


def char_symbol(ch: str) -> str:
    """The ARPA word for one character (whitespace gets a visible name)."""
    if ch in _CHAR_NAMES:
        return _CHAR_NAMES[ch]
    if ch.isspace() or not ch.isprintable():
        return f"<U+{ord(ch):04X}>"
    return ch


def split_units(text: str, unit: str) -> list[str]:
    """One line of text -> the list of units (characters or words) of that line."""
    if unit == "char":
        return [char_symbol(c) for c in text]
    if unit == "word":
        # A literal "<s>" in the text must not become the sentence-start symbol.
        return [w if w not in SPECIAL_SYMBOLS else "\\" + w for w in text.split()]
    raise ValueError(f"unit {unit!r}: text can be split into 'char' or 'word' units ('token' ids come from shards)")


class Vocab:
    """Symbols of a model: ``<unk> <s> </s>`` then the units. ``size`` is the V of the key packing."""

    def __init__(self, symbols: list[str], unit: str):
        if tuple(symbols[:3]) != SPECIAL_SYMBOLS:
            raise ValueError(f"vocabulary must start with {SPECIAL_SYMBOLS}, got {symbols[:3]}")
        if unit not in UNITS:
            raise ValueError(f"unit {unit!r} is not one of {UNITS}")
        self.symbols = list(symbols)
        self.unit = unit
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if len(self.index) != len(self.symbols):
            raise ValueError("vocabulary has duplicate symbols")

    @property
    def size(self) -> int:
        return len(self.symbols)

    @property
    def num_predictable(self) -> int:
        """Words a model predicts: everything but ``<s>`` (``<unk>`` and ``</s>`` included)."""
        return self.size - 1

    @classmethod
    def for_token_ids(cls, vocab_size: int) -> "Vocab":
        """Token id t has internal id t + 3 and the ARPA word ``str(t)``."""
        return cls(list(SPECIAL_SYMBOLS) + [str(i) for i in range(vocab_size)], "token")

    @classmethod
    def from_lines(cls, lines: Iterable[str], unit: str) -> "Vocab":
        """Every unit seen in ``lines``, sorted (so a vocabulary does not depend on line order)."""
        lines = list(lines)
        seen: set[str] = set()
        if unit == "char":
            cps = np.unique(np.frombuffer("".join(lines).encode("utf-32-le"), dtype="<u4"))
            seen = {char_symbol(chr(c)) for c in cps.tolist()}
        elif unit == "word":
            for line in lines:
                seen.update(line.split())
            seen = {w if w not in SPECIAL_SYMBOLS else "\\" + w for w in seen}
        else:
            split_units("", unit)  # raises the error for an unknown unit
        return cls(list(SPECIAL_SYMBOLS) + sorted(seen - set(SPECIAL_SYMBOLS)), unit)

    def encode_units(self, units: list[str]) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(u, UNK) for u in units), dtype=np.int64, count=len(units))

    def encode_lines(self, lines: Iterable[str]) -> list[np.ndarray]:
        """Lines of text -> one id array per line (units not in the vocabulary become ``<unk>``)."""
        return [self.encode_units(split_units(line, self.unit)) for line in lines]

    def encode_padded(self, lines: Iterable[str]) -> np.ndarray:
        """Lines -> one padded id stream ``<s> l1 </s> <s> l2 </s> ...`` (int64), vectorised:
        the fast path for whole corpora (same result as ``pad_sentences(encode_lines(lines))``)."""
        lines = list(lines)
        if not lines:
            return np.zeros(0, dtype=np.int64)
        if self.unit == "char":
            text = "\n".join(lines)
            cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
            uniq, inv = np.unique(cps, return_inverse=True)
            table = np.array([EOS if c == 10 else self.index.get(char_symbol(chr(c)), UNK) for c in uniq.tolist()],
                             dtype=np.int64)
            ids = table[inv.reshape(-1)]
            # Every "\n" (a line end) becomes "</s> <s>".
            ends = np.flatnonzero(cps == 10)
            ids = np.insert(ids, ends + 1, BOS)
            return np.concatenate([[BOS], ids, [EOS]]).astype(np.int64)
        if self.unit == "word":
            joined = "\n".join(lines)
            if any(sym in joined for sym in SPECIAL_SYMBOLS):
                return pad_sentences(self.encode_lines(lines))  # rare: literal <s>/</s> words need escaping
            from itertools import repeat
            get = self.index.get
            out: list[int] = []
            for line in lines:
                out.append(BOS)
                words = line.split()
                out.extend(map(get, words, repeat(UNK, len(words))))
                out.append(EOS)
            return np.array(out, dtype=np.int64)
        raise ValueError("token units are encoded by the tokenizer; use token_stream_to_padded()")

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text for char/word units (specials dropped); token units need the tokenizer."""
        inverse = {v: k for k, v in _CHAR_NAMES.items()}
        out = []
        for i in ids:
            i = int(i)
            if i in (BOS, EOS):
                continue
            sym = self.symbols[i]
            if self.unit == "char":
                if sym.startswith("<U+") and sym.endswith(">"):
                    sym = chr(int(sym[3:-1], 16))
                out.append(inverse.get(sym, sym))
            else:
                out.append(sym)
        return ("" if self.unit == "char" else " ").join(out)


def pad_sentences(sentences: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate sentences as ``<s> s1 </s> <s> s2 </s> ...`` (int64)."""
    parts = []
    for s in sentences:
        parts.append(np.array([BOS], dtype=np.int64))
        parts.append(np.asarray(s, dtype=np.int64))
        parts.append(np.array([EOS], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def token_stream_to_padded(tokens: np.ndarray, bos_token: int) -> np.ndarray:
    """A shard stream ``BOS d1 BOS d2 ...`` (tokenizer ids) -> padded internal ids.

    The tokenizer's BOS separates documents; it becomes ``<s>`` and the end of each document
    becomes ``</s>`` (predicting it is the n-gram analogue of predicting the next BOS)."""
    ids = np.asarray(tokens, dtype=np.int64) + 3
    if ids.size == 0:
        return ids
    internal_bos = bos_token + 3
    if ids[0] != internal_bos:
        ids = np.concatenate([[internal_bos], ids])
    starts = np.flatnonzero(ids == internal_bos)
    out = np.insert(ids, starts[1:], EOS)
    out = np.append(out, EOS)
    out[out == internal_bos] = BOS
    return out


def find_rows(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each query key in the sorted ``keys`` or -1; negative queries mean "absent"."""
    if keys.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    pos = np.searchsorted(keys, query)
    np.minimum(pos, keys.size - 1, out=pos)
    ok = (query >= 0) & (keys[pos] == query)
    return np.where(ok, pos, -1)


def extend_left(keys: np.ndarray, rows: np.ndarray, left_words: np.ndarray, V: int) -> np.ndarray:
    """Rows of the grams ``(left_word, *gram(row))`` in the next table, or -1."""
    ok = (rows >= 0) & (left_words >= 0)
    query = np.where(ok, np.maximum(rows, 0) * V + np.maximum(left_words, 0), -1)
    return find_rows(keys, query)


@dataclass
class NgramCounts:
    """Counts of all 1..order-grams of a corpus (see the module docstring for the layout).

    ``keys[k]``/``counts[k]`` for k = 2..order (index 0 unused, 1 is dense: ``counts[1][w]``).
    ``n_sentences`` and ``n_events`` (predicted units, ``</s>`` included) describe the corpus."""

    vocab: Vocab
    order: int
    keys: list
    counts: list
    n_sentences: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def V(self) -> int:
        return self.vocab.size

    @property
    def n_events(self) -> int:
        return int(self.counts[1].sum() - self.counts[1][BOS])

    def num_grams(self, k: int) -> int:
        return self.V if k == 1 else int(self.keys[k].size)

    def suffix(self, k: int) -> np.ndarray:
        """Row in table k-1 of ``w2..wk`` for every row of table k (k >= 2)."""
        return self.keys[k] // self.V

    def first(self, k: int) -> np.ndarray:
        """First word of every row of table k."""
        return np.arange(self.V, dtype=np.int64) if k == 1 else self.keys[k] % self.V

    def prefix(self, k: int) -> np.ndarray:
        """Row in table k-1 of the context ``w1..w(k-1)`` of every row of table k (k >= 2)."""
        key = ("prefix", k)
        if key not in self._cache:
            if k == 2:
                out = self.first(2)
            else:
                # prefix(w1..wk) = w1 + prefix(w2..wk): one searchsorted per order.
                out = extend_left(self.keys[k - 1], self.prefix(k - 1)[self.suffix(k)], self.first(k), self.V)
                if (out < 0).any():
                    raise AssertionError("n-gram table is not prefix-closed (corrupt counts)")
            self._cache[key] = out
        return self._cache[key]

    def grams(self, k: int) -> np.ndarray:
        """The words of every row of table k as an (M, k) array (for export and tests)."""
        if k == 1:
            return np.arange(self.V, dtype=np.int64)[:, None]
        return np.concatenate([self.first(k)[:, None], self.grams(k - 1)[self.suffix(k)]], axis=1)

    def lookup(self, grams: np.ndarray) -> np.ndarray:
        """Rows of (M, k) id arrays in table k (-1 when unseen)."""
        grams = np.asarray(grams, dtype=np.int64)
        rows = grams[:, -1].copy()
        for j in range(2, grams.shape[1] + 1):
            rows = extend_left(self.keys[j], rows, grams[:, -j], self.V)
        return rows

    def count(self, gram) -> int:
        """Count of one n-gram given as symbols or ids (0 when unseen)."""
        ids = [self.vocab.index.get(g, UNK) if isinstance(g, str) else int(g) for g in gram]
        k = len(ids)
        if not 1 <= k <= self.order:
            raise ValueError(f"n-gram {gram!r} has order {k}; these counts have orders 1..{self.order}")
        row = int(self.lookup(np.array([ids]))[0])
        return 0 if row < 0 else int(self.counts[k][row] if k > 1 else self.counts[1][row])

    def truncate(self, order: int) -> "NgramCounts":
        """The same counts up to a lower order (an order-n model needs only tables 1..n)."""
        if not 1 <= order <= self.order:
            raise ValueError(f"order {order} not in 1..{self.order}")
        out = NgramCounts(self.vocab, order, self.keys[: order + 1], self.counts[: order + 1], self.n_sentences)
        out._cache = self._cache  # tables 1..order are shared, so are the arrays derived from them
        return out


def _count_padded(x: np.ndarray, order: int, V: int) -> tuple[list, list]:
    """Count one chunk of padded ids. Returns per-order (keys, counts) with chunk-local suffix rows."""
    keys: list = [None, None]
    counts: list = [None, np.bincount(x, minlength=V).astype(np.int64)]
    seg = np.cumsum(x == BOS)  # sentence number of each position: windows must not cross sentences
    rows_prev = x  # row in table k-1 of the (k-1)-gram starting at each position (-1: crosses a sentence)
    for k in range(2, order + 1):
        n = x.size - k + 1
        if n <= 0:
            keys.append(np.zeros(0, dtype=np.int64))
            counts.append(np.zeros(0, dtype=np.int64))
            rows_prev = np.zeros(0, dtype=np.int64)
            continue
        valid = seg[:n] == seg[k - 1:]
        key = rows_prev[1:n + 1] * V + x[:n]
        uniq, inv, cnt = np.unique(key[valid], return_inverse=True, return_counts=True)
        rows = np.full(n, -1, dtype=np.int64)
        rows[valid] = inv.reshape(-1)
        keys.append(uniq)
        counts.append(cnt.astype(np.int64))
        rows_prev = rows
    return keys, counts


def _merge(a: tuple[list, list], b: tuple[list, list], order: int, V: int) -> tuple[list, list]:
    """Merge two count sets whose keys use their own suffix rows into one with global rows."""
    keys: list = [None, None]
    counts: list = [None, a[1][1] + b[1][1]]
    map_a = np.arange(V, dtype=np.int64)
    map_b = map_a
    for k in range(2, order + 1):
        ka, kb = a[0][k], b[0][k]
        ga = map_a[ka // V] * V + ka % V
        gb = map_b[kb // V] * V + kb % V
        uniq, inv = np.unique(np.concatenate([ga, gb]), return_inverse=True)
        inv = inv.reshape(-1)
        c = np.bincount(inv, weights=np.concatenate([a[1][k], b[1][k]]).astype(np.float64), minlength=uniq.size)
        keys.append(uniq)
        counts.append(np.rint(c).astype(np.int64))
        map_a, map_b = inv[: ka.size], inv[ka.size:]
    return keys, counts


def count_ngrams(sentences: Iterable[np.ndarray], vocab: Vocab, order: int, *,
                 chunk_tokens: int = 4_000_000, progress: bool = False) -> NgramCounts:
    """Count all 1..order-grams of id sentences (without ``<s>``/``</s>``; they are added).

    Sentences are streamed in chunks of about ``chunk_tokens`` ids; chunk tables are merged,
    so the corpus itself is never held in memory, only its distinct n-grams."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return _count_chunks((pad_sentences(c) for c in _chunked(sentences, chunk_tokens)), vocab, order, progress)


def count_padded(padded: np.ndarray, vocab: Vocab, order: int, *, chunk_tokens: int = 4_000_000,
                 progress: bool = False) -> NgramCounts:
    """Count n-grams of a padded stream (``Vocab.encode_padded``), in chunks cut at sentence starts."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    padded = np.asarray(padded, dtype=np.int64)
    if padded.size and (padded[0] != BOS or padded[-1] != EOS):
        raise ValueError("a padded stream must start with <s> (id 1) and end with </s> (id 2)")
    return _count_chunks(_stream_chunks(padded, BOS, chunk_tokens), vocab, order, progress)


def count_token_stream(tokens: np.ndarray, bos_token: int, vocab: Vocab, order: int, *,
                       chunk_tokens: int = 4_000_000, progress: bool = False) -> NgramCounts:
    """Count n-grams of a token shard (``BOS d1 BOS d2 ...``), reading it chunk by chunk
    (chunks end at document boundaries), e.g. straight from ``read_tokens()``'s memmap."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if tokens.size and int(tokens.max()) + 3 >= vocab.size:
        raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {vocab.size - 3} tokens "
                         "(shards/meta.json vocab_size does not match the shard)")
    return _count_chunks((token_stream_to_padded(c, bos_token) for c in _stream_chunks(tokens, bos_token, chunk_tokens)),
                         vocab, order, progress)


def _stream_chunks(tokens: np.ndarray, bos_token: int, chunk_tokens: int) -> Iterator[np.ndarray]:
    """Slices of ``tokens`` of about ``chunk_tokens`` ids, each starting at a ``bos_token``."""
    start, n = 0, tokens.size
    while start < n:
        end = min(start + chunk_tokens, n)
        if end < n:
            # Extend to the next document start so that no document is split across chunks.
            nxt = np.flatnonzero(np.asarray(tokens[end:end + 1_000_000]) == bos_token)
            while nxt.size == 0 and end < n:
                end = min(end + 1_000_000, n)
                nxt = np.flatnonzero(np.asarray(tokens[end:end + 1_000_000]) == bos_token)
            end = n if nxt.size == 0 else end + int(nxt[0])
        yield np.asarray(tokens[start:end])
        start = end


def _chunked(sentences: Iterable[np.ndarray], chunk_tokens: int) -> Iterator[list]:
    chunk, size = [], 0
    for s in sentences:
        chunk.append(s)
        size += len(s) + 2
        if size >= chunk_tokens:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _count_chunks(padded_chunks: Iterable[np.ndarray], vocab: Vocab, order: int, progress: bool) -> NgramCounts:
    V = vocab.size
    if (V + 1) * V >= 2 ** 62:
        raise ValueError(f"vocabulary of {V} symbols is too large for int64 n-gram keys")
    acc = None
    n_sentences = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc=f"counting {order}-grams", unit="tok", unit_scale=True, leave=False)
    for x in padded_chunks:
        if x.size == 0:
            continue
        if x.min() < 0 or x.max() >= V:
            raise ValueError(f"id {int(x.max()) if x.max() >= V else int(x.min())} is outside the vocabulary (size {V})")
        n_sentences += int((x == BOS).sum())
        part = _count_padded(x, order, V)
        acc = part if acc is None else _merge(acc, part, order, V)
        if bar is not None:
            bar.update(x.size)
    if bar is not None:
        bar.close()
    if acc is None:
        acc = _count_padded(np.zeros(0, dtype=np.int64), order, V)
    return NgramCounts(vocab, order, acc[0], acc[1], n_sentences)
