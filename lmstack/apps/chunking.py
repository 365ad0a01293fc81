"""Split documents into retrieval chunks: by tokens with overlap, or by sentences (Chinese-aware)."""

from __future__ import annotations

from typing import Callable, Sequence

from lmstack.data.text import split_sentences


def chunk_by_tokens(text: str, encode: Callable[[str], Sequence[int]], decode: Callable[[Sequence[int]], str],
                    size: int = 128, overlap: int = 32) -> list[str]:
    """Windows of ``size`` tokens, each starting ``size - overlap`` tokens after the previous one.

    ``encode``/``decode`` are a tokenizer's (``tok.encode``, ``tok.decode``). The last window ends at the
    end of the text, so no token is lost; a text shorter than ``size`` is one chunk.
    """
    if size <= 0:
        raise ValueError(f"chunk size must be > 0 tokens, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size) = [0, {size}), got {overlap}")
    ids = list(encode(text))
    if not ids:
        return []
    step = size - overlap
    chunks = []
    start = 0
    while True:
        chunks.append(decode(ids[start:start + size]))
        if start + size >= len(ids):
            break
        start += step
    return chunks


def _joiner(a: str, b: str) -> str:
    # Chinese sentences are written without a space between them; English ones with one.
    cjk_end = a and "\u3000" <= a[-1] <= "\u9fff" or a.endswith(("。", "！", "？", "；"))
    return "" if cjk_end else " "


def chunk_by_sentences(text: str, max_chars: int = 400, overlap_sentences: int = 1) -> list[str]:
    """Greedy packing of whole sentences (English . ! ?, Chinese 。！？ and newlines) into chunks of at most
    ``max_chars`` characters; each chunk repeats the last ``overlap_sentences`` sentences of the previous
    one. A single sentence longer than ``max_chars`` becomes a chunk of its own rather than being cut."""
    if max_chars <= 0:
        raise ValueError(f"max_chars must be > 0, got {max_chars}")
    if overlap_sentences < 0:
        raise ValueError(f"overlap_sentences must be >= 0, got {overlap_sentences}")
    sentences = split_sentences(text)
    chunks: list[str] = []
    current: list[str] = []
    fresh = 0  # sentences in ``current`` not already emitted in the previous chunk

    def render(parts: list[str]) -> str:
        out = parts[0]
        for s in parts[1:]:
            out += _joiner(out, s) + s
        return out

    for sentence in sentences:
        if current and fresh and len(render(current + [sentence])) > max_chars:
            chunks.append(render(current))
            current = current[len(current) - overlap_sentences:] if overlap_sentences else []
            fresh = 0
            # the carried-over overlap alone may already be too long to add the new sentence
            while current and len(render(current + [sentence])) > max_chars:
                current = current[1:]
        current.append(sentence)
        fresh += 1
    if current and fresh:
        chunks.append(render(current))
    return chunks
