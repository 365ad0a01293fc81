"""Text bookkeeping for decoding: incremental detokenization and stop strings.

Streaming must never show half a character: a UTF-8 character can span several byte-level
tokens, so text is released only once it decodes completely. Stop strings are cut out of the
final text, and while the text so far ends with a proper prefix of a stop string that tail is
held back (it may turn out to be the start of the stop string).
"""

from __future__ import annotations

from typing import Sequence


class _FallbackDecodeStream:
    """Incremental decoder for tokenizers without ``decode_stream()``: re-decode the tail and
    release it only when it has no U+FFFD replacement character at its end (incomplete UTF-8)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return new


def decode_stream(tokenizer):
    maker = getattr(tokenizer, "decode_stream", None)
    if maker is not None:
        return maker()
    return _FallbackDecodeStream(tokenizer)


class TextTracker:
    """Follows one request's generated text: complete-UTF-8 text, stop strings, streamed prefix."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.decoder = decode_stream(tokenizer)
        self.stop = [s for s in stop if s]
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.text = ""  # complete text decoded so far (stop string not yet cut)
        self.streamed = 0  # characters of self.text already handed to the caller
        self.stopped_at: int | None = None  # index of the first stop string in self.text

    def push(self, token_id: int) -> None:
        # only the tail (after what was streamed, minus a stop string's length) can hold a new match
        self.push_text(self.decoder.push(token_id))

    def finish(self) -> None:
        """The request ended: release bytes still buffered (an unfinished character becomes U+FFFD,
        exactly as ``tokenizer.decode`` of the same ids would show it)."""
        flush = getattr(self.decoder, "flush", None)
        if flush is not None and self.stopped_at is None:
            self.push_text(flush())

    def push_text(self, new: str) -> None:
        self.text += new
        if self.stop and self.stopped_at is None and new:
            start = max(0, self.streamed - self.longest_stop)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped_at = min(hits)

    @property
    def final_text(self) -> str:
        return self.text if self.stopped_at is None else self.text[: self.stopped_at]

    def take_new(self, finished: bool) -> str:
        """Text not yet streamed that is safe to show now."""
        end = len(self.final_text)
        if not finished and self.stopped_at is None and self.stop:
            end -= self._held_back()
        if end <= self.streamed:
            return ""
        new = self.final_text[self.streamed:end]
        self.streamed = end
        return new

    def _held_back(self) -> int:
        # longest suffix of the text that is a proper prefix of a stop string
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
