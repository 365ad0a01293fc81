"""Text helpers shared by the filters, PII masking and dedup: words, scripts, sentences, code detection.

How CJK text is segmented (Chinese has no spaces between words):
every Han / Kana / Hangul character counts as ONE word. A run of any other non-space characters
("hello", "3.14", "--") is one word, exactly as whitespace splitting would give; CJK punctuation
(。，！？ and full-width forms) separates words like a space and is not a word itself. So the sentence
"我爱Python编程" has the words 我 爱 Python 编 程 (5 words). This is the convention of
character-level CJK n-gram models and of MinHash dedup on Chinese text (a word 5-gram of Chinese is
a 5-character shingle). It over-counts words relative to a real segmenter (jieba), so rules that
depend on word *length* (Gopher's mean word length) are applied to the non-CJK words only.
"""

from __future__ import annotations

import numpy as np
import regex

CJK_CLASS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
# CJK and full-width punctuation (。，！？、「」…) separates words like a space does.
CJK_PUNCT = r"\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2018-\u201f\u2026"
# A CJK character alone, or a maximal run of non-space, non-CJK characters.
WORD_RE = regex.compile(rf"[{CJK_CLASS}]|[^\s{CJK_CLASS}{CJK_PUNCT}]+")
# The non-CJK words alone, and those of them without any letter (for Gopher's alphabetic-word rule).
NON_CJK_WORD_RE = regex.compile(rf"[^\s{CJK_CLASS}{CJK_PUNCT}]+")
NO_LETTER_WORD_RE = regex.compile(rf"(?<![^\s{CJK_CLASS}{CJK_PUNCT}])[^\s{CJK_CLASS}{CJK_PUNCT}\p{{L}}]+(?![^\s{CJK_CLASS}{CJK_PUNCT}])")
# For dedup shingles: punctuation and case do not make two texts different.
SHINGLE_TOKEN_RE = regex.compile(rf"[{CJK_CLASS}]|[\p{{L}}\p{{N}}_]+")
LATIN_RE = regex.compile(r"\p{Latin}")
CJK_LETTER_RE = regex.compile(rf"[{CJK_CLASS}&&\p{{L}}]", regex.V1)
CONTROL_RE = regex.compile(r"[^\P{Cc}\n\t]")
SPACE_RE = regex.compile(r"\s")
ALNUM_RE = regex.compile(r"[\p{L}\p{N}]")
ALPHA_RE = regex.compile(r"\p{L}")
# Sentence ends: English .!? followed by space/end, Chinese 。！？ (optionally followed by a closing quote).
SENTENCE_SPLIT_RE = regex.compile(r"(?<=[。！？!?；;][”」』\"']?)|(?<=[.][\"')\]]?)(?=\s)|\n+")


def words(text: str) -> list[str]:
    """Words as the filters count them (see the module docstring for CJK)."""
    return WORD_RE.findall(text)


def shingle_tokens(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation, used to build dedup shingles."""
    return SHINGLE_TOKEN_RE.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences: English . ! ? followed by whitespace, Chinese 。！？ and newlines."""
    parts = SENTENCE_SPLIT_RE.split(text)
    return [p.strip() for p in parts if p and p.strip()]


# --- script / language and code detection ------------------------------------------------------

# Tokens that are frequent in source code and rare in prose. Python-centred (the default corpus is
# the Python standard library) but most are shared with C-like languages.
_CODE_LINE_RE = regex.compile(
    r"^\s*(def |class |import |from \S+ import |return\b|if .*:\s*$|elif |else:|for .* in .*:\s*$|while .*:\s*$|"
    r"try:|except\b|finally:|with .*:\s*$|raise |yield\b|assert |@\w|\"\"\"|'''|"
    r"\}|\{\s*$|.*;\s*$|.*\)\s*\{\s*$|#include|public |private |function |var |let |const )"
)
_CODE_SYMBOL_RE = regex.compile(r"[{}()\[\];=<>_*/\\|&^%$#@]")


def code_score(text: str) -> float:
    """A cheap code-likeness score in [0, 1]: the share of non-empty lines that look like code,
    blended with the density of code symbols. Above ~0.3 the text is almost surely code."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return 0.0
    code_lines = sum(1 for ln in lines if _CODE_LINE_RE.match(ln))
    indented = sum(1 for ln in lines if ln.startswith(("    ", "\t")))
    symbols = len(_CODE_SYMBOL_RE.findall(text)) / max(1, len(text))
    line_share = code_lines / len(lines)
    return min(1.0, 0.6 * line_share + 0.2 * (indented / len(lines)) + 2.0 * symbols)


def lang_of(text: str) -> str:
    """"zh" when ``text`` has a CJK ideograph, else "en" (the world's two languages)."""
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def detect_kind(text: str, threshold: float = 0.3) -> str:
    """'code' or 'prose'. Filters are routed on this: prose rules (stop words, Gopher quality) would
    throw away nearly every source file, so code gets its own rules (see clean.py)."""
    return "code" if code_score(text) >= threshold else "prose"


def char_counts(text: str) -> dict[str, int]:
    """Counts of letters, Latin letters, CJK letters, letters-or-digits and whitespace characters.
    ASCII text (most code) is classified with numpy on its bytes; other text with Unicode regexes."""
    if text.isascii():
        b = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        lower = b | 0x20
        alpha = int(((lower >= 97) & (lower <= 122)).sum())
        digits = int(((b >= 48) & (b <= 57)).sum())
        space = int(((b == 32) | ((b >= 9) & (b <= 13))).sum())
        return {"alpha": alpha, "latin": alpha, "cjk": 0, "alnum": alpha + digits, "space": space}
    return {"alpha": len(ALPHA_RE.findall(text)), "latin": len(LATIN_RE.findall(text)),
            "cjk": len(CJK_LETTER_RE.findall(text)), "alnum": len(ALNUM_RE.findall(text)),
            "space": len(SPACE_RE.findall(text))}


def detect_script(text: str, counts: dict[str, int] | None = None) -> str:
    """Dominant script of the letters: 'zh' (Han and other CJK), 'en' (Latin), 'mixed' or 'other'.

    A script-based detector (no model): it can tell Chinese from English, not French from English.
    'mixed' means both CJK and Latin letters are at least 20% of the letters (parallel EN/ZH text)."""
    c = counts or char_counts(text)
    n, cjk, latin = c["alpha"], c["cjk"], c["latin"]
    if not n:
        return "other"
    if cjk / n >= 0.2 and latin / n >= 0.2:
        return "mixed"
    if cjk / n >= 0.5:
        return "zh"
    if latin / n >= 0.5:
        return "en"
    return "other"
