"""Regex pre-tokenization: the text is cut into chunks and BPE never merges across chunks.

Four named patterns are provided. ``gpt2`` and ``gpt4`` follow the published split rules of
GPT-2 (Radford et al. 2019) and cl100k (GPT-4). ``lmstack`` (the default) is the GPT-4 rule
with two changes:

* Han characters form their own chunks. In the GPT-4 rule ``\\p{L}+`` swallows Han and Latin
  letters alike, so "中文English混合" is a single chunk and a leading full-width punctuation
  mark glues onto the following Chinese word ("，明月光"). Here a Han run is its own chunk,
  with at most one leading space (as English words get) but no punctuation prefix, so Chinese
  words are learned once and reused after any punctuation, and mixed Chinese/English text
  splits at the script boundary.
* Numbers are cut into groups of at most ``max_digits`` digits (2 by default: small
  vocabularies cannot afford 1000 three-digit tokens, and short digit groups make arithmetic
  easier to learn).

``lmstack_hanchar`` is ``lmstack`` with every Han character a chunk of its own, so BPE merges
only the bytes inside a character. On a small, templated corpus the ``lmstack`` rule learns
whole Chinese phrases as single tokens, and then a reworded question can share no token with
the training question it rewords.

Code behaves as in GPT-4: runs of indentation spaces stay together (``\\s+(?!\\S)``), an
identifier keeps one leading punctuation or space (" return", "_bar", ".append"), and runs
of operators are one chunk.

Every pattern is valid for three regex engines: Python's ``regex`` (our pure-Python path),
Rust ``fancy-regex`` (tiktoken) and Oniguruma (HF tokenizers), which is what lets the three
encoders agree token for token.
"""

from __future__ import annotations

from functools import lru_cache

import regex

# {digits} is replaced by the digit-group quantifier, e.g. "{1,2}" or "+".
_TEMPLATES = {
    # GPT-2: contractions, optional space + letters / digits / other, whitespace.
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}{digits}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    # GPT-4 (cl100k): case-insensitive contractions, possessive quantifiers, digits in groups.
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{digits}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    # lmstack: GPT-4 with Han runs split off from other letters ([^\p{Han}\P{L}] = non-Han letters).
    "lmstack": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+[^\p{Han}\P{L}]+| ?\p{Han}+|\p{N}{digits}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}
# lmstack_hanchar: lmstack with every Han character its own chunk, as BERT's Chinese tokenizer splits
# (Devlin et al. 2019), so no token spans two characters.
_TEMPLATES["lmstack_hanchar"] = _TEMPLATES["lmstack"].replace(r" ?\p{Han}+", r" ?\p{Han}")
PATTERN_NAMES = tuple(_TEMPLATES)
DEFAULT_PATTERN_NAME = "lmstack"
DEFAULT_MAX_DIGITS = 2


def build_pattern(pattern: str = DEFAULT_PATTERN_NAME, max_digits: int = DEFAULT_MAX_DIGITS) -> str:
    """The regex for a named pattern ("gpt2", "gpt4", "lmstack"), or ``pattern`` itself when it is
    a custom regex. ``max_digits`` <= 0 means unlimited digit runs (the original GPT-2 rule)."""
    if pattern in _TEMPLATES:
        if not isinstance(max_digits, int):
            raise ValueError(f"max_digits must be an int, got {max_digits!r}")
        quantifier = "+" if max_digits <= 0 else f"{{1,{max_digits}}}"
        return _TEMPLATES[pattern].replace("{digits}", quantifier)
    if len(pattern) < 8 and pattern.isidentifier():
        # Looks like a misspelt name rather than a regex.
        raise ValueError(f"unknown pre-tokenization pattern {pattern!r}; use one of {', '.join(PATTERN_NAMES)} or a regex")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pre-tokenization pattern is not a valid regex ({e}): {pattern!r}") from None
    return pattern


@lru_cache(maxsize=32)
def compiled(pattern: str) -> "regex.Pattern":
    return regex.compile(pattern)


def split_text(text: str, pattern: str) -> list[str]:
    """The chunks of ``text``; concatenated they give back ``text`` exactly."""
    return compiled(pattern).findall(text)
