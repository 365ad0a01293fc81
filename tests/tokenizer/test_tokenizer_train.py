"""The fast BPE trainer against a naive reference that recounts every pair after every merge."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from lmstack import DATA_DIR
from lmstack.tokenizer import build_pattern, count_chunks, learn_merges, train_bpe, train_tokenizer
from lmstack.tokenizer.train import byte_level_words



def naive_merge_word(word, pair, new):
    out, i = [], 0
    while i < len(word):
        if tuple(word[i:i + 2]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def naive_merges(words, freqs, token_bytes, n_merges):
    """Textbook BPE: recount all pairs, merge the most frequent (ties: smallest ids)."""
    words = [list(w) for w in words]
    token_bytes = list(token_bytes)
    merges = []
    while len(merges) < n_merges:
        counts = Counter()
        for w, f in zip(words, freqs):
            for p in zip(w, w[1:]):
                counts[p] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merged = token_bytes[best[0]] + token_bytes[best[1]]
        if merged in token_bytes:
            new = token_bytes.index(merged)
        else:
            new = len(token_bytes)
            token_bytes.append(merged)
        merges.append((best[0], best[1], new))
        words = [naive_merge_word(w, best, new) for w in words]
    return merges, token_bytes


def _sample_text():
    parts = []
    en = DATA_DIR / "en" / "tinyshakespeare.txt"
    zh = DATA_DIR / "zh" / "poetry.jsonl"
    if en.exists():
        parts.append(en.read_text(encoding="utf-8")[:12_000])
    if zh.exists():
        with zh.open(encoding="utf-8") as f:
            parts.extend(json.loads(next(f))["text"] for _ in range(30))
    parts.append(Path(json.__file__).read_text(encoding="utf-8")[:6_000])
    return parts


@pytest.mark.parametrize("pattern", ["lmstack", "gpt2"])
def test_fast_trainer_equals_naive_on_real_text(pattern):
    counts = count_chunks(_sample_text(), build_pattern(pattern))
    words, freqs = byte_level_words(counts)
    base = [bytes([i]) for i in range(256)]
    fast = learn_merges(words, freqs, base, 200, progress=False)
    ref_merges, ref_bytes = naive_merges(words, freqs, base, 200)
    assert fast.merges == ref_merges
    assert fast.token_bytes == ref_bytes


def test_fast_trainer_equals_naive_on_adversarial_words():
    # Tiny alphabets make runs like "aaaa" and "abab" (overlapping and repeated pairs), many
    # exact ties and merges that re-create an existing string, which stress the incremental updates.
    rng = random.Random(0)
    for trial in range(30):
        alphabet = rng.randint(2, 4)
        words = [[rng.randrange(alphabet) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 25))]
        freqs = [rng.randint(1, 5) for _ in words]
        base = [bytes([97 + i]) for i in range(alphabet)]
        fast = learn_merges(words, freqs, base, 40, progress=False)
        ref_merges, ref_bytes = naive_merges(words, freqs, base, 40)
        assert fast.merges == ref_merges, f"trial {trial}"
        assert fast.token_bytes == ref_bytes


def test_training_is_deterministic_and_respects_vocab_size():
    texts = _sample_text()
    a = train_tokenizer(texts, 600, progress=False)
    b = train_tokenizer(list(reversed(texts)), 600, progress=False)
    assert a.merges == b.merges
    assert a.vocab_size == 600
    c = train_tokenizer(texts, 700, mode="char", progress=False)
    assert c.vocab_size == 700


def test_pattern_that_skips_characters_is_rejected():
    with pytest.raises(ValueError, match="skips"):
        count_chunks(["hello, world"], r"\w+")


def test_vocab_too_small_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        train_bpe(Counter({"ab": 3}), 100, pattern=build_pattern("lmstack"))


def test_fast_trainer_equals_naive_on_char_level_words():
    from lmstack.tokenizer.train import char_level_words, choose_alphabet
    counts = count_chunks(_sample_text(), build_pattern("lmstack"))
    alphabet = choose_alphabet(counts, 0.99, 400)
    char_to_id = {ch: 256 + k for k, ch in enumerate(alphabet)}
    words, freqs = char_level_words(counts, char_to_id)
    base = [bytes([i]) for i in range(256)] + [ch.encode("utf-8") for ch in alphabet]
    fast = learn_merges(words, freqs, base, 150, progress=False)
    assert fast.merges == naive_merges(words, freqs, base, 150)[0]
    # Rare characters (outside the alphabet) never take part in a merge.
    assert all(a >= 256 and b >= 256 for a, b, _ in fast.merges)
