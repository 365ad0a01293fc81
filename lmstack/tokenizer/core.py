"""The lmstack tokenizer: byte-level or character-level BPE with special tokens and a chat template.

Every token id maps to a byte string; decoding concatenates bytes and decodes UTF-8 once, so
any id sequence decodes without error (invalid or partial UTF-8 becomes U+FFFD, and the
streaming decoder holds partial characters back until they are complete).

Two encoders produce the same ids:

* byte-level vocabularies go through tiktoken's Rust core (a ``tiktoken.Encoding`` built
  from our ranks, where a token's rank is its id);
* the pure-Python BPE below (with a per-chunk cache) is the fallback for character-level
  vocabularies and the reference the tests compare tiktoken and HF tokenizers against.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import regex

from lmstack.runs import read_json
from lmstack.tokenizer.pretokenize import compiled

FORMAT_NAME = "lmstack-tokenizer"
FORMAT_VERSION = 1

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

_CACHE_LIMIT = 500_000


class StreamDecoder:
    """Incremental decoder: ``push(id)`` returns the text that became complete with this token.

    Bytes of a character split across tokens are held until the character is complete;
    bytes that can never form valid UTF-8 come out as U+FFFD, so the concatenation of all
    pushes plus ``flush()`` equals ``Tokenizer.decode`` of the same ids.
    """

    def __init__(self, tokenizer: "Tokenizer"):
        self._tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        special = self._tok._id_to_special.get(token_id)
        if special is not None:
            return self._dec.decode(b"", final=True) + special
        return self._dec.decode(self._tok.token_bytes(token_id))

    def flush(self) -> str:
        """Emit whatever is still buffered (an unfinished character becomes U+FFFD)."""
        return self._dec.decode(b"", final=True)


class Tokenizer:
    """A trained BPE vocabulary plus its pre-tokenization pattern and special tokens.

    ``mode`` is "byte" (256 byte tokens are the alphabet) or "char" (Unicode characters are
    the alphabet; characters outside it fall back to 256 byte tokens, which never merge).
    ``merges`` are (left, right, new) id triples in priority order.
    """

    def __init__(self, *, mode: str, pattern: str, vocab: Sequence[bytes], merges: Sequence[tuple[int, int, int]],
                 special_tokens: dict[str, int], byte_ids: Sequence[int], alphabet: dict[str, int] | None = None,
                 metadata: dict | None = None):
        if mode not in ("byte", "char"):
            raise ValueError(f"tokenizer mode must be 'byte' or 'char', got {mode!r}")
        self.mode = mode
        self.pattern = pattern
        self._vocab = [bytes(b) for b in vocab]
        self.merges = [tuple(map(int, m)) for m in merges]
        self.special_tokens = dict(special_tokens)
        self.byte_ids = list(byte_ids)                     # byte value -> id (byte tokens / byte fallback)
        self.alphabet = dict(alphabet or {})               # char -> id (char mode only)
        self.metadata = dict(metadata or {})
        self._validate()
        self._ranks = {(a, b): (r, c) for r, (a, b, c) in enumerate(self.merges)}
        self._id_to_special = {i: s for s, i in self.special_tokens.items()}
        self._rx = compiled(pattern)
        self._cache: dict[str, list[int]] = {}
        self._special_rx_cache: dict[frozenset, "regex.Pattern"] = {}
        self._tiktoken = None
        self._tiktoken_tried = False

    # ------------------------------------------------------------ construction checks
    def _validate(self) -> None:
        n = len(self._vocab) + len(self.special_tokens)
        if len(self.byte_ids) != 256:
            raise ValueError(f"byte_ids must list 256 ids, got {len(self.byte_ids)}")
        for v, i in enumerate(self.byte_ids):
            if not 0 <= i < len(self._vocab) or self._vocab[i] != bytes([v]):
                raise ValueError(f"byte token for 0x{v:02X} has id {i} whose bytes are not {bytes([v])!r}")
        for r, (a, b, c) in enumerate(self.merges):
            if not all(0 <= x < len(self._vocab) for x in (a, b, c)):
                raise ValueError(f"merge #{r} ({a}, {b}) -> {c} refers to an id outside the vocabulary")
            if self._vocab[a] + self._vocab[b] != self._vocab[c]:
                raise ValueError(f"merge #{r}: bytes of {a} + {b} differ from the bytes of {c}")
        ids = sorted(self.special_tokens.values())
        if ids != list(range(len(self._vocab), n)):
            raise ValueError(f"special token ids must follow the regular vocabulary ({len(self._vocab)}..{n - 1}), got {ids}")
        for ch, i in self.alphabet.items():
            if len(ch) != 1 or self._vocab[i] != ch.encode("utf-8"):
                raise ValueError(f"alphabet entry {ch!r} -> {i} does not match the vocabulary")

    # ------------------------------------------------------------ basic properties
    @property
    def vocab_size(self) -> int:
        return len(self._vocab) + len(self.special_tokens)

    @property
    def n_regular(self) -> int:
        return len(self._vocab)

    def _special(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise KeyError(f"this tokenizer has no special token {name}; it has {sorted(self.special_tokens)}") from None

    @property
    def bos_id(self) -> int:
        return self._special(BOS)

    @property
    def eos_id(self) -> int:
        return self._special(EOS)

    @property
    def pad_id(self) -> int:
        return self._special(PAD)

    @property
    def end_id(self) -> int:
        return self._special(END)

    @property
    def stop_ids(self) -> list[int]:
        """Generation stops at <|end|> or <|eos|>."""
        return [self.special_tokens[s] for s in (END, EOS) if s in self.special_tokens]

    def token_bytes(self, token_id: int) -> bytes:
        if 0 <= token_id < len(self._vocab):
            return self._vocab[token_id]
        special = self._id_to_special.get(token_id)
        if special is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return special.encode("utf-8")

    def id_to_token(self, token_id: int) -> str:
        """A readable form of one token (bytes that are not valid UTF-8 shown as \\xNN)."""
        return self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    # ------------------------------------------------------------ encoding
    def _bpe(self, ids: list[int]) -> list[int]:
        ranks = self._ranks
        while len(ids) >= 2:
            best = None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r[0] < best[0]):
                    best, best_pair = r, pair
            if best is None:
                break
            a, b = best_pair
            new = best[1]
            out, i, n = [], 0, len(ids)
            while i < n:
                if i + 1 < n and ids[i] == a and ids[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def _chunk_symbols(self, chunk: str) -> list[int]:
        if self.mode == "byte":
            byte_ids = self.byte_ids
            return [byte_ids[b] for b in chunk.encode("utf-8")]
        out = []
        alphabet, byte_ids = self.alphabet, self.byte_ids
        for ch in chunk:
            i = alphabet.get(ch)
            if i is None:
                out.extend(byte_ids[b] for b in ch.encode("utf-8"))
            else:
                out.append(i)
        return out

    def encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is None:
            cached = self._bpe(self._chunk_symbols(chunk))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[chunk] = cached
        return list(cached)

    def encode_ordinary_python(self, text: str) -> list[int]:
        """Reference encoder: regex split, then BPE per chunk (cached). No special tokens."""
        out: list[int] = []
        cache = self._cache
        for chunk in self._rx.findall(text):
            ids = cache.get(chunk)
            if ids is None:
                ids = self.encode_chunk(chunk)
            out.extend(ids)
        return out

    def _tiktoken_encoding(self):
        """tiktoken.Encoding over our ranks, or None where tiktoken cannot represent the
        vocabulary (character mode, or ids whose rank order is not their merge order)."""
        if self._tiktoken_tried:
            return self._tiktoken
        self._tiktoken_tried = True
        if self.mode != "byte" or not self.tiktoken_compatible():
            return None
        try:
            import tiktoken
        except ImportError:
            return None
        ranks = {b: i for i, b in enumerate(self._vocab)}
        self._tiktoken = tiktoken.Encoding(name=f"lmstack-{id(self)}", pat_str=self.pattern,
                                           mergeable_ranks=ranks, special_tokens=dict(self.special_tokens))
        return self._tiktoken

    def tiktoken_compatible(self) -> bool:
        """tiktoken merges by the rank of the concatenated bytes; that equals merge-list BPE
        when every merge creates a new token whose id grows with the merge order."""
        if self.mode != "byte" or len(set(self._vocab)) != len(self._vocab):
            return False
        last = -1
        for a, b, c in self.merges:
            if c <= last or c <= a or c <= b:
                return False
            last = c
        n_byte_merged = len(self.merges) + 256
        return n_byte_merged == len(self._vocab)

    @property
    def backend(self) -> str:
        return "tiktoken" if self._tiktoken_encoding() is not None else "python"

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode plain text; special-token strings in it are ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        enc = self._tiktoken_encoding()
        if enc is not None:
            return enc.encode_ordinary(text)
        return self.encode_ordinary_python(text)

    def _special_splitter(self, allowed: frozenset):
        rx = self._special_rx_cache.get(allowed)
        if rx is None:
            # Longest first so a special token that prefixes another cannot shadow it.
            alts = sorted(allowed, key=len, reverse=True)
            rx = regex.compile("(" + "|".join(regex.escape(s) for s in alts) + ")")
            self._special_rx_cache[allowed] = rx
        return rx

    def _allowed(self, allowed_special) -> frozenset:
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all' or a collection of special-token strings, got {allowed_special!r}")
        allowed = frozenset(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}; known: {sorted(self.special_tokens)}")
        return allowed

    def encode(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Encode ``text``. A special-token string becomes its special id only if listed in
        ``allowed_special`` (or ``"all"``); otherwise it is encoded as the plain characters
        it is made of, so user text can never inject control tokens."""
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        for i, part in enumerate(self._special_splitter(allowed).split(text)):
            if i % 2:
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def encode_batch(self, texts: Sequence[str], allowed_special: Iterable[str] | str = (),
                     num_workers: int | None = None) -> list[list[int]]:
        """Encode many texts in parallel: threads over tiktoken's GIL-free core for byte-level
        vocabularies, a process pool for the pure-Python path (serial for small batches)."""
        texts = list(texts)
        workers = num_workers or min(8, os.cpu_count() or 1)
        allowed = self._allowed(allowed_special)
        enc = self._tiktoken_encoding()
        if enc is not None:
            if allowed:
                return enc.encode_batch(texts, num_threads=workers, allowed_special=set(allowed), disallowed_special=())
            return enc.encode_ordinary_batch(texts, num_threads=workers)
        total = sum(map(len, texts))
        if workers <= 1 or total < 200_000 or not hasattr(os, "fork"):
            return [self.encode(t, allowed) for t in texts]
        import multiprocessing as mp
        global _WORKER_TOKENIZER
        _WORKER_TOKENIZER = self  # inherited by the forked workers, so the vocab is not pickled
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                chunk = max(1, len(texts) // (workers * 8))
                return pool.map(_encode_in_worker, [(t, allowed) for t in texts], chunksize=chunk)
        finally:
            _WORKER_TOKENIZER = None

    # ------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD (never raises)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_stream(self) -> StreamDecoder:
        return StreamDecoder(self)

    # ------------------------------------------------------------ chat template
    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """Render a conversation: ``<|bos|>`` then ``<|role|>content<|end|>`` per message.

        Returns (ids, assistant_mask) where the mask is 1 exactly on the content tokens of
        assistant messages and on their closing ``<|end|>`` (what SFT trains on), except those marked
        ``"train": False`` (context an SFT example shows but does not teach). Message
        contents are encoded as plain text, so a user typing "<|end|>" cannot forge a turn.
        With ``add_generation_prompt`` the ids end with ``<|assistant|>`` for the model to continue.
        """
        if not isinstance(messages, (list, tuple)):
            raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
        ids = [self.bos_id]
        mask = [0]
        end = self.end_id
        for k, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ValueError(f"message {k}: expected a dict with 'role' and 'content', got {type(m).__name__}")
            role, content = m.get("role"), m.get("content")
            if role not in ROLE_TOKENS:
                raise ValueError(f"message {k}: role {role!r} is not one of {', '.join(ROLE_TOKENS)}")
            if not isinstance(content, str):
                raise ValueError(f"message {k} ({role}): 'content' must be a string, got {type(content).__name__}")
            body = self.encode_ordinary(content)
            flag = 1 if role == "assistant" and m.get("train", True) is not False else 0
            ids.append(self.special_tokens[ROLE_TOKENS[role]])
            mask.append(0)
            ids.extend(body)
            mask.extend([flag] * len(body))
            ids.append(end)
            mask.append(flag)
        if add_generation_prompt:
            ids.append(self.special_tokens[ASSISTANT])
            mask.append(0)
        return ids, mask

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The chat template as text (for display; encode with ``encode_chat``)."""
        parts = [BOS] + [f"{ROLE_TOKENS[m['role']]}{m['content']}{END}" for m in messages]
        if add_generation_prompt:
            parts.append(ASSISTANT)
        return "".join(parts)

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "mode": self.mode,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "byte_ids": self.byte_ids,
            "alphabet": self.alphabet,
            # Bytes as hex: exact for tokens that are not valid UTF-8 on their own.
            "vocab": [b.hex() for b in self._vocab],
            "merges": [list(m) for m in self.merges],
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike) -> None:
        from lmstack.runs import atomic_write_text
        # One top-level field per line: diffable, yet compact for the long lists.
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in self.to_dict().items())
        atomic_write_text(path, "{\n" + body + "\n}\n")

    @classmethod
    def from_dict(cls, d: dict, where: str = "<dict>") -> "Tokenizer":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            hint = ""
            if isinstance(d, dict) and "model" in d and "pre_tokenizer" in d:
                hint = (" (this looks like a HF tokenizers file; lmstack reads its own format written by Tokenizer.save, "
                        "or tiktoken rank files via lmstack.tokenizer.load_tiktoken)")
            raise ValueError(f"{where}: not an lmstack tokenizer file (field 'format' must be {FORMAT_NAME!r}){hint}")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"{where}: tokenizer format version {d.get('version')!r} is not supported (expected {FORMAT_VERSION})")
        for key in ("mode", "pattern", "special_tokens", "byte_ids", "vocab", "merges"):
            if key not in d:
                raise ValueError(f"{where}: field {key!r} missing")
        try:
            vocab = [bytes.fromhex(h) for h in d["vocab"]]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: field 'vocab' must be a list of hex strings ({e})") from None
        try:
            return cls(mode=d["mode"], pattern=d["pattern"], vocab=vocab, merges=d["merges"],
                       special_tokens=d["special_tokens"], byte_ids=d["byte_ids"],
                       alphabet=d.get("alphabet") or {}, metadata=d.get("metadata") or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: tokenizer file not found (run the tokenizer stage or train one first)")
        return cls.from_dict(read_json(path), str(path))

    def __getstate__(self) -> dict:
        # The tiktoken object and the caches are rebuilt lazily after unpickling (DataLoader workers).
        state = self.__dict__.copy()
        state.update(_tiktoken=None, _tiktoken_tried=False, _cache={}, _special_rx_cache={})
        return state

    def __repr__(self) -> str:
        return (f"Tokenizer(mode={self.mode!r}, vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special={len(self.special_tokens)}, backend={self.backend!r})")


_WORKER_TOKENIZER: Tokenizer | None = None


def _encode_in_worker(job: tuple[str, frozenset]) -> list[int]:
    text, allowed = job
    return _WORKER_TOKENIZER.encode(text, allowed)


def default_special_tokens(first_id: int, names: Sequence[str] = SPECIAL_TOKENS) -> dict[str, int]:
    return {s: first_id + k for k, s in enumerate(names)}
