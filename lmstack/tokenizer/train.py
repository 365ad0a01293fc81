"""BPE training (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units").

The corpus is reduced once to unique pre-token chunks with counts. The merge loop then keeps
three structures up to date instead of recounting the corpus after each merge:

* ``pair_counts``: (left, right) -> weighted count over all chunks;
* ``where``: (left, right) -> indices of chunks that contain (or once contained) the pair;
* a max-heap of (count, pair) with lazy invalidation: an entry whose count is stale is
  re-pushed with the current count when it reaches the top.

A merge only visits the chunks listed under its pair, rewrites them, and applies the
difference between their old and new pairs. Ties between equally frequent pairs go to the
smallest (left id, right id), so training is deterministic; ``tests/tokenizer/test_tokenizer_train.py``
checks the result against a naive implementation that recounts everything every step.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from tqdm import tqdm

from lmstack.tokenizer.pretokenize import compiled


@dataclass
class MergeResult:
    merges: list[tuple[int, int, int]]        # (left, right, new id) in merge order
    token_bytes: list[bytes]                   # bytes of every id, base symbols included
    merge_counts: list[int] = field(default_factory=list)   # corpus frequency of each merge
    seconds: float = 0.0


def _index_pairs(words: list[list[int]], freqs: list[int]):
    """Weighted count of every adjacent pair, the chunks each pair occurs in, and a max-heap of the counts."""
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (w, f) in enumerate(zip(words, freqs)):
        if len(w) < 2:
            continue
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, p[0], p[1]) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    return dict(pair_counts), where, heap


def _merge_once(w: list[int], i: int, pair: tuple[int, int], new_id: int, f: int, wi: int,
                delta: dict, where: dict) -> None:
    """Chunk ``w`` holds ``pair`` once, at ``i``: rewrite it in place. Only pairs touching the merged
    position change: (x, a), (a, b), (b, y) -> (x, c), (c, y)."""
    a, b = pair
    n = len(w)
    delta[pair] = delta.get(pair, 0) - f
    if i > 0:
        x = w[i - 1]
        p = (x, a)
        delta[p] = delta.get(p, 0) - f
        p = (x, new_id)
        delta[p] = delta.get(p, 0) + f
        where[p].add(wi)
    if i + 2 < n:
        y = w[i + 2]
        p = (b, y)
        delta[p] = delta.get(p, 0) - f
        p = (new_id, y)
        delta[p] = delta.get(p, 0) + f
        where[p].add(wi)
    w[i:i + 2] = (new_id,)


def _merge_all(w: list[int], pair: tuple[int, int], k: int, new_id: int, f: int, wi: int,
               delta: dict, where: dict) -> list[int] | None:
    """Chunk ``w`` holds the left symbol ``k`` times: merge every non-overlapping occurrence of ``pair``,
    left to right. Returns the new chunk, or None when the pair does not occur."""
    a, b = pair
    n = len(w)
    starts = []
    i = 0
    while k > 0:
        i = w.index(a, i)
        k -= 1
        if i + 1 < n and w[i + 1] == b:
            starts.append(i)
            i += 2
            if a == b:
                k -= 1
        else:
            i += 1
    if not starts:
        return None
    prev_b = -2
    out: list[int] = []
    new_positions = []
    last = 0
    for s0 in starts:
        if s0 > 0 and s0 - 1 != prev_b:  # (b, a) between two matches is removed once, below
            p = (w[s0 - 1], a)
            delta[p] = delta.get(p, 0) - f
        delta[pair] = delta.get(pair, 0) - f
        if s0 + 2 < n:
            p = (b, w[s0 + 2])
            delta[p] = delta.get(p, 0) - f
        prev_b = s0 + 1
        out.extend(w[last:s0])
        new_positions.append(len(out))
        out.append(new_id)
        last = s0 + 2
    out.extend(w[last:])
    m = len(out)
    for j, k in enumerate(new_positions):
        if k > 0:
            p = (out[k - 1], new_id)
            delta[p] = delta.get(p, 0) + f
            where[p].add(wi)
        if k + 1 < m and not (j + 1 < len(new_positions) and new_positions[j + 1] == k + 1):
            p = (new_id, out[k + 1])
            delta[p] = delta.get(p, 0) + f
            where[p].add(wi)
    return out


def _apply_delta(delta: dict, pair_counts: dict, heap: list) -> None:
    """Update the pair counts; a count that went up gets a fresh heap entry (decreases are found lazily)."""
    for p, d in delta.items():
        if d == 0:
            continue
        c = pair_counts.get(p, 0) + d
        if c > 0:
            pair_counts[p] = c
            if d > 0:
                heapq.heappush(heap, (-c, p[0], p[1]))
        else:
            del pair_counts[p]


def learn_merges(words: list[list[int]], freqs: list[int], token_bytes: list[bytes], n_merges: int,
                 *, progress: bool = True, desc: str = "bpe merges") -> MergeResult:
    """Learn up to ``n_merges`` new tokens from ``words`` (symbol-id sequences with counts).

    ``token_bytes[i]`` is the byte string of symbol ``i``; new tokens get the next free ids,
    except that a merge whose bytes already exist as a token reuses that token's id (it can
    happen when two different splits of one string become frequent), so ids stay unique per
    byte string. Stops early when no pair occurs any more.
    """
    t0 = time.perf_counter()
    token_bytes = list(token_bytes)
    bytes_to_id = {b: i for i, b in enumerate(token_bytes)}
    words = [list(w) for w in words]
    pair_counts, where, heap = _index_pairs(words, freqs)

    merges: list[tuple[int, int, int]] = []
    merge_counts: list[int] = []
    bar = tqdm(total=n_merges, desc=desc, unit="merge", disable=not progress, mininterval=0.5)
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        pair = (a, b)
        current = pair_counts.get(pair, 0)
        if current != -neg:
            # Stale entry: the count went down since it was pushed (increases push a fresh entry).
            if 0 < current < -neg:
                heapq.heappush(heap, (-current, a, b))
            continue
        if current <= 0:
            continue
        merged = token_bytes[a] + token_bytes[b]
        new_id = bytes_to_id.get(merged)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes.append(merged)
            bytes_to_id[merged] = new_id
        merges.append((a, b, new_id))
        merge_counts.append(current)

        delta: dict[tuple[int, int], int] = {}
        for wi in where.pop(pair, ()):
            w = words[wi]
            k = w.count(a)  # C-level scans; most chunks hold the pair once
            if not k:
                continue  # the index entry outlived the pair in this chunk
            if k == 1:
                i = w.index(a)
                if i + 1 < len(w) and w[i + 1] == b:
                    _merge_once(w, i, pair, new_id, freqs[wi], wi, delta, where)
                continue
            out = _merge_all(w, pair, k, new_id, freqs[wi], wi, delta, where)
            if out is not None:
                words[wi] = out
        _apply_delta(delta, pair_counts, heap)
        pair_counts.pop(pair, None)
        bar.update(1)
    bar.close()
    return MergeResult(merges=merges, token_bytes=token_bytes, merge_counts=merge_counts,
                       seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------- chunk counting

def _count_texts(args: tuple[list[str], str]) -> Counter:
    texts, pattern = args
    rx = compiled(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(rx.findall(text))
    return counts


def count_chunks(texts: Iterable[str], pattern: str, *, processes: int = 1, batch_chars: int = 2_000_000,
                 progress: bool = False) -> Counter:
    """Unique pre-token chunks of ``texts`` with their counts.

    With ``processes`` > 1 the regex work runs in a process pool (the GIL would serialise
    threads). Raises if the pattern does not cover the text, since BPE would silently drop
    the characters it skips.
    """
    def batches():
        batch, size = [], 0
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"count_chunks expects str texts, got {type(t).__name__}")
            batch.append(t)
            size += len(t)
            if size >= batch_chars:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    total_chars = 0

    def tracked():
        nonlocal total_chars
        for b in batches():
            total_chars += sum(map(len, b))
            yield (b, pattern)

    counts: Counter = Counter()
    bar = tqdm(desc="counting chunks", unit="batch", disable=not progress)
    if processes > 1:
        import multiprocessing as mp
        ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
        with ctx.Pool(processes) as pool:
            for part in pool.imap_unordered(_count_texts, tracked()):
                counts.update(part)
                bar.update(1)
    else:
        for job in tracked():
            counts.update(_count_texts(job))
            bar.update(1)
    bar.close()
    covered = sum(len(k) * v for k, v in counts.items())
    if covered != total_chars:
        raise ValueError(f"pre-tokenization pattern skips {total_chars - covered} of {total_chars} characters; "
                         f"a pattern must match every character (end it with an alternative like \\s+|.)")
    return counts


# ---------------------------------------------------------------- base alphabets

def byte_level_words(chunk_counts: Mapping[str, int]) -> tuple[list[list[int]], list[int]]:
    words, freqs = [], []
    for chunk, f in chunk_counts.items():
        b = chunk.encode("utf-8")
        if len(b) >= 2:
            words.append(list(b))
            freqs.append(f)
    return words, freqs


def choose_alphabet(chunk_counts: Mapping[str, int], coverage: float, max_size: int) -> list[str]:
    """The most frequent characters covering ``coverage`` of all character occurrences
    (SentencePiece's character_coverage idea), at most ``max_size``; order: frequency, then code point."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"char_coverage must be in (0, 1], got {coverage}")
    char_counts: Counter = Counter()
    for chunk, f in chunk_counts.items():
        for ch in chunk:
            char_counts[ch] += f
    total = sum(char_counts.values())
    ranked = sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    alphabet, acc = [], 0
    for ch, c in ranked:
        if acc >= coverage * total or len(alphabet) >= max_size:
            break
        alphabet.append(ch)
        acc += c
    return alphabet


def char_level_words(chunk_counts: Mapping[str, int], char_to_id: Mapping[str, int]) -> tuple[list[list[int]], list[int]]:
    """Chunks as runs of alphabet characters; a rare character (byte fallback at encode time)
    cuts the run, because byte-fallback tokens never take part in merges."""
    acc: dict[tuple[int, ...], int] = defaultdict(int)
    for chunk, f in chunk_counts.items():
        run: list[int] = []
        for ch in chunk:
            i = char_to_id.get(ch)
            if i is None:
                if len(run) >= 2:
                    acc[tuple(run)] += f
                run = []
            else:
                run.append(i)
        if len(run) >= 2:
            acc[tuple(run)] += f
    return [list(k) for k in acc], list(acc.values())


# ---------------------------------------------------------------- public entry points

def train_bpe(chunk_counts: Mapping[str, int], vocab_size: int, *, mode: str = "byte", pattern: str,
              special_tokens: Sequence[str] | None = None, char_coverage: float = 0.9995,
              progress: bool = True, metadata: dict | None = None):
    """Train a tokenizer from pre-token chunk counts (see ``count_chunks``).

    ``vocab_size`` counts everything: base symbols (256 bytes; in char mode also the
    alphabet), learned merges and special tokens, so it is the embedding size a model needs.
    """
    from lmstack.tokenizer.core import SPECIAL_TOKENS, Tokenizer, default_special_tokens

    specials = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be unique, got {specials}")
    budget = vocab_size - 256 - len(specials)
    if budget < 0:
        raise ValueError(f"vocab_size {vocab_size} is too small: 256 byte tokens and {len(specials)} special tokens "
                         f"need at least {256 + len(specials)}")
    t0 = time.perf_counter()
    base = [bytes([i]) for i in range(256)]
    alphabet: dict[str, int] = {}
    if mode == "byte":
        words, freqs = byte_level_words(chunk_counts)
    elif mode == "char":
        # At most half the budget goes to single characters, so a Han-heavy corpus still
        # learns merges; characters left out are encoded by byte fallback.
        chars = choose_alphabet(chunk_counts, char_coverage, budget // 2)
        alphabet = {ch: 256 + k for k, ch in enumerate(chars)}
        base += [ch.encode("utf-8") for ch in chars]
        budget -= len(chars)
        words, freqs = char_level_words(chunk_counts, alphabet)
    else:
        raise ValueError(f"mode must be 'byte' or 'char', got {mode!r}")
    result = learn_merges(words, freqs, base, budget, progress=progress)
    # Reused ids (a merge re-creating an existing string) do not grow the vocabulary; the
    # special tokens follow the last regular id either way.
    vocab = result.token_bytes
    seconds = time.perf_counter() - t0
    meta = dict(metadata or {})
    meta.update(mode=mode, requested_vocab_size=vocab_size, merges=len(result.merges),
                unique_chunks=len(chunk_counts), train_seconds=round(seconds, 3),
                merges_per_second=round(len(result.merges) / max(result.seconds, 1e-9), 1))
    if mode == "char":
        meta["char_coverage"] = char_coverage
    meta["merge_counts"] = result.merge_counts  # pair frequency at each merge (for the report's plot)
    tok = Tokenizer(mode=mode, pattern=pattern, vocab=vocab, merges=result.merges,
                    special_tokens=default_special_tokens(len(vocab), specials), byte_ids=list(range(256)),
                    alphabet=alphabet, metadata=meta)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, mode: str = "byte", pattern: str = "lmstack",
                    max_digits: int | None = None, special_tokens: Sequence[str] | None = None,
                    char_coverage: float = 0.9995, processes: int = 1, progress: bool = True):
    """Count chunks of ``texts`` with the named (or regex) ``pattern`` and train BPE on them."""
    from lmstack.tokenizer.pretokenize import DEFAULT_MAX_DIGITS, build_pattern

    digits = DEFAULT_MAX_DIGITS if max_digits is None else max_digits
    regex_pattern = build_pattern(pattern, digits)
    t0 = time.perf_counter()
    counts = count_chunks(texts, regex_pattern, processes=processes, progress=progress)
    count_seconds = time.perf_counter() - t0
    meta = {"pattern_name": pattern if regex_pattern != pattern else "custom", "max_digits": digits,
            "train_chars": sum(len(k) * v for k, v in counts.items()), "count_seconds": round(count_seconds, 3)}
    tok = train_bpe(counts, vocab_size, mode=mode, pattern=regex_pattern, special_tokens=special_tokens,
                    char_coverage=char_coverage, progress=progress, metadata=meta)
    tok.metadata["train_seconds"] = round(time.perf_counter() - t0, 3)
    return tok
