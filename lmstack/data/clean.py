"""Document filters: length, Gopher quality, Gopher repetition, stop-word ratio, script/language + code,
code quality and metadata thresholds.

Each filter is a small class built from its own config dataclass, with ``keep(doc) -> True | reason``
(the reason is a short string such as ``"gopher_quality:mean_word_length"``) and counters: ``seen``,
``kept``, ``removed[reason]`` and a few removed ``examples[reason]``. Counters of filters that ran in
different worker processes are merged with :meth:`Filter.merge_stats`.

Routing by kind. ``doc["kind"]`` is ``"code"`` or ``"prose"`` (see :func:`lmstack.data.text.detect_kind`).
Prose rules (Gopher quality and its stop words, the stop-word ratio, Gopher's line-level bullet/ellipsis
rules) would delete nearly every source file, so each filter declares the kinds it ``applies_to`` and
passes other kinds through untouched. Code gets :class:`CodeFilter` instead (StarCoder-style line-length
and alphanumeric rules). Length, repetition, language and metadata rules apply to both.

Word counting follows :mod:`lmstack.data.text`: every CJK character is one word.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import regex

from lmstack.data.dedup import POSITION_MULT, token_hashes
from lmstack.data.text import (CONTROL_RE, NO_LETTER_WORD_RE, NON_CJK_WORD_RE, char_counts, detect_kind,
                               detect_script, split_sentences, words)

MAX_EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 160


def _cache(doc: dict, key: str, fn):
    """Per-document memo shared by the filters (dropped before the document is written)."""
    cache = doc.setdefault("_cache", {})
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def doc_words(doc: dict) -> list[str]:
    return _cache(doc, "words", lambda: words(doc["text"]))


def doc_lines(doc: dict) -> list[str]:
    return _cache(doc, "lines", lambda: doc["text"].split("\n"))


def doc_chars(doc: dict) -> dict[str, int]:
    return _cache(doc, "chars", lambda: char_counts(doc["text"]))


def annotate(doc: dict) -> dict:
    """Add ``kind`` (code/prose) and ``lang`` (en/zh/mixed/other; code keeps its comment language)."""
    doc.setdefault("kind", detect_kind(doc["text"]))
    if doc.get("kind") not in ("code", "prose"):
        # Sources may carry their own kind (the world's "bio", "story", ...): keep it as a subtype.
        doc["subkind"] = doc["kind"]
        doc["kind"] = detect_kind(doc["text"])
    doc["lang"] = detect_script(doc["text"], doc_chars(doc))
    return doc


def normalize_text(text: str) -> str:
    """Unicode NFC, Windows/Mac newlines to \\n, and control characters (except \\n, \\t) removed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return CONTROL_RE.sub("", text)


class Filter:
    """Base class: subclasses set ``name``, ``applies_to`` and implement ``check(doc) -> reason | None``."""
    name = "filter"
    applies_to: tuple[str, ...] = ("prose", "code")

    def __init__(self, cfg=None):
        self.cfg = cfg if cfg is not None else self.Config()
        self.seen = 0
        self.kept = 0
        self.skipped = 0          # documents of a kind this filter does not apply to
        self.removed: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    @dataclass
    class Config:
        pass

    def check(self, doc: dict) -> str | None:
        raise NotImplementedError

    def keep(self, doc: dict) -> bool | str:
        self.seen += 1
        if doc.get("kind", "prose") not in self.applies_to:
            self.skipped += 1
            self.kept += 1
            return True
        reason = self.check(doc)
        if reason is None:
            self.kept += 1
            return True
        reason = f"{self.name}:{reason}"
        self.removed[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES_PER_REASON:
            snippet = doc["text"][:EXAMPLE_CHARS].replace("\n", " ⏎ ")
            ex.append(f"[{doc.get('source', '?')} {doc.get('id', '')}] {snippet}")
        return reason

    def stats(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "skipped": self.skipped,
                "removed": dict(self.removed), "examples": {k: list(v) for k, v in self.examples.items()}}

    @staticmethod
    def merge_stats(a: dict, b: dict) -> dict:
        out = {"seen": a["seen"] + b["seen"], "kept": a["kept"] + b["kept"], "skipped": a["skipped"] + b["skipped"],
               "removed": dict(Counter(a["removed"]) + Counter(b["removed"])), "examples": {}}
        for src in (a["examples"], b["examples"]):
            for k, v in src.items():
                slot = out["examples"].setdefault(k, [])
                slot.extend(v[: MAX_EXAMPLES_PER_REASON - len(slot)])
        return out


# --- length ---------------------------------------------------------------------------------------

@dataclass
class LengthConfig:
    min_chars: int = 20           # shorter texts carry no usable context
    max_chars: int = 1_000_000    # one runaway document (a data dump) must not dominate a shard
    min_words: int = 5
    max_words: int = 100_000      # Gopher's upper bound on words (Rae et al. 2021, App. A)


class LengthFilter(Filter):
    name = "length"
    Config = LengthConfig

    def check(self, doc):
        n = len(doc["text"])
        if n < self.cfg.min_chars:
            return "too_few_chars"
        if n > self.cfg.max_chars:
            return "too_many_chars"
        nw = len(doc_words(doc))
        if nw < self.cfg.min_words:
            return "too_few_words"
        if nw > self.cfg.max_words:
            return "too_many_words"
        return None


# --- Gopher quality ---------------------------------------------------------------------------------

# Gopher's stop words (Rae et al. 2021, "Scaling Language Models", App. A.1.1): a document must contain >= 2.
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# The most frequent Chinese function characters (each is one word under our CJK segmentation).
CHINESE_STOP_WORDS = frozenset("的了是在我有和就不人都一也这他你们中说上个到")
CHINESE_STOP_RE = regex.compile("[" + "".join(sorted(CHINESE_STOP_WORDS)) + "]")


def _stop_word_count(doc: dict, english: frozenset) -> int:
    """English stop words among the non-CJK words plus Chinese stop characters (each is a word)."""
    latin = _cache(doc, "non_cjk_words", lambda: NON_CJK_WORD_RE.findall(doc["text"]))
    strip = ".,;:!?\"'()"
    english_hits = sum(1 for w in latin if w.lower().strip(strip) in english)
    return english_hits + len(CHINESE_STOP_RE.findall(doc["text"]))


BULLETS = ("•", "●", "○", "▪", "◦", "‣", "⁃", "- ", "* ", "– ", "— ")
ELLIPSES = ("...", "…", "。。。")


@dataclass
class GopherQualityConfig:
    # Published Gopher values (Rae et al. 2021, App. A.1.1), as also used by FineWeb/datatrove.
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0      # applied to non-CJK words only (CJK words are 1 char by construction)
    max_mean_word_length: float = 10.0
    min_latin_words_for_length_rule: int = 20
    max_symbol_word_ratio: float = 0.1     # '#' and ellipses per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8     # share of words with at least one letter
    min_stop_words: int = 2


class GopherQualityFilter(Filter):
    name = "gopher_quality"
    applies_to = ("prose",)
    Config = GopherQualityConfig

    def check(self, doc):
        c = self.cfg
        ws = doc_words(doc)
        n = len(ws)
        if n < c.min_words:
            return "too_few_words"
        if n > c.max_words:
            return "too_many_words"
        latin = _cache(doc, "non_cjk_words", lambda: NON_CJK_WORD_RE.findall(doc["text"]))
        if len(latin) >= c.min_latin_words_for_length_rule:
            mean_len = sum(len(w) for w in latin) / len(latin)
            if mean_len < c.min_mean_word_length or mean_len > c.max_mean_word_length:
                return "mean_word_length"
        text = doc["text"]
        symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
        if symbols / n > c.max_symbol_word_ratio:
            return "symbol_ratio"
        lines = [ln.strip() for ln in doc_lines(doc) if ln.strip()]
        if lines:
            if sum(ln.startswith(BULLETS) for ln in lines) / len(lines) > c.max_bullet_lines_ratio:
                return "bullet_lines"
            if sum(ln.endswith(ELLIPSES) for ln in lines) / len(lines) > c.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        # CJK words are single Han/Kana/Hangul letters: only non-CJK words can lack a letter.
        if 1 - len(NO_LETTER_WORD_RE.findall(text)) / n < c.min_alpha_words_ratio:
            return "alpha_words_ratio"
        stop = _stop_word_count(doc, GOPHER_STOP_WORDS)
        if stop < c.min_stop_words:
            return "stop_words"
        return None


# --- Gopher repetition --------------------------------------------------------------------------------

@dataclass
class GopherRepetitionConfig:
    # Published Gopher thresholds (Rae et al. 2021, Table A1).
    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_dup_para_char_fraction: float = 0.20
    top_ngram_max_fraction: dict[str, float] = field(default_factory=lambda: {"2": 0.20, "3": 0.18, "4": 0.16})
    dup_ngram_max_fraction: dict[str, float] = field(default_factory=lambda: {
        "5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10})
    # Gopher's n counts words; our Chinese "words" are single characters and a Chinese word averages
    # ~1.5-2 characters, so in Chinese-dominant text n is multiplied by this factor.
    cjk_ngram_scale: int = 2
    # Code (kind "code"): paragraph and n-gram rules are off; lines >= 30 chars may repeat up to this share.
    code_max_dup_line_fraction: float = 0.5


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup_n = dup_chars = total_chars = 0
    for it in items:
        total_chars += len(it)
        if it in seen:
            dup_n += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    if not items:
        return 0.0, 0.0
    return dup_n / len(items), dup_chars / max(1, total_chars)


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per word n-gram, combined from the word hashes (collisions ~2^-64)."""
    m = len(ids) - n + 1
    with np.errstate(over="ignore"):
        acc = ids[:m] * POSITION_MULT[0]
        for j in range(1, n):
            acc = acc + ids[j:j + m] * POSITION_MULT[j]
    return acc


def _word_arrays(ws: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return token_hashes(ws), np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))


def top_ngram_char_fraction(ws: list[str], n: int, arrays=None) -> float:
    """Characters covered by the most frequent word n-gram over all word characters (Gopher)."""
    if len(ws) < n:
        return 0.0
    ids, lens = arrays if arrays is not None else _word_arrays(ws)
    grams = _ngram_ids(ids, n)
    values, first, counts = np.unique(grams, return_index=True, return_counts=True)
    k = int(np.argmax(counts))
    if counts[k] <= 1:
        return 0.0
    start = int(first[k])
    return float(lens[start:start + n].sum() * counts[k] / max(1, lens.sum()))


def dup_ngram_char_fraction(ws: list[str], n: int, arrays=None) -> float:
    """Characters of words inside n-grams that occur more than once, over all word characters (Gopher).
    Overlapping duplicate n-grams are counted once per word."""
    if len(ws) < n:
        return 0.0
    ids, lens = arrays if arrays is not None else _word_arrays(ws)
    grams = _ngram_ids(ids, n)
    _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
    dup_start = (counts[inverse] > 1).astype(np.int64)
    # word i is covered when some duplicated n-gram starts in [i - n + 1, i]
    covered = np.convolve(dup_start, np.ones(n, dtype=np.int64))[: len(ws)] > 0
    return float(lens[covered].sum() / max(1, lens.sum()))


class GopherRepetitionFilter(Filter):
    name = "gopher_repetition"
    Config = GopherRepetitionConfig

    def check(self, doc):
        c = self.cfg
        text = doc["text"]
        is_code = doc.get("kind") == "code"
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        frac, char_frac = _dup_stats(paras)
        if not is_code and frac > c.max_dup_para_fraction:
            return "dup_para_fraction"
        if not is_code and char_frac > c.max_dup_para_char_fraction:
            return "dup_para_char_fraction"
        lines = [ln.strip() for ln in doc_lines(doc) if ln.strip()]
        line_limit, char_limit = c.max_dup_line_fraction, c.max_dup_line_char_fraction
        if is_code:
            # Code repeats structural lines ("return None", "else:", "}") and sibling functions share
            # docstring lines by nature: only long lines count, against a looser limit.
            lines = [ln for ln in lines if len(ln) >= 30]
            line_limit = char_limit = c.code_max_dup_line_fraction
        frac, char_frac = _dup_stats(lines)
        if frac > line_limit:
            return "dup_line_fraction"
        if char_frac > char_limit:
            return "dup_line_char_fraction"
        if doc.get("kind") == "code":
            return None  # n-gram repetition of identifiers is normal in code
        ws = [w.lower() for w in doc_words(doc)]
        arrays = _word_arrays(ws)
        scale = c.cjk_ngram_scale if doc.get("lang") == "zh" else 1
        for n, limit in sorted(c.top_ngram_max_fraction.items(), key=lambda kv: int(kv[0])):
            if top_ngram_char_fraction(ws, int(n) * scale, arrays) > limit:
                return f"top_{n}gram"
        dup_rules = sorted(c.dup_ngram_max_fraction.items(), key=lambda kv: int(kv[0]))
        for k, (n, limit) in enumerate(dup_rules):
            frac = dup_ngram_char_fraction(ws, int(n) * scale, arrays)
            if frac > limit:
                return f"dup_{n}gram"
            # Words covered by repeated (n+1)-grams are covered by repeated n-grams too, so the fraction
            # only falls as n grows: once it is under every remaining limit, the rest cannot fire.
            if frac <= min((lim for _, lim in dup_rules[k + 1:]), default=1.0):
                break
        return None


# --- stop-word / high-frequency-word ratio ------------------------------------------------------------

# A broader list of the most frequent English words (top of any frequency list), for the ratio rule.
ENGLISH_HIGH_FREQUENCY = frozenset("""the be to of and a in that have i it for not on with he as you do at this but his by from
they we say her she or an will my one all would there their what so up out if about who get which go me is was are were
been has had""".split())


@dataclass
class StopWordConfig:
    # Natural prose has ~40-55% function words. Below the minimum it is a keyword list or a table,
    # above the maximum it is word salad made of frequent words (the notes' "full of high-frequency words").
    min_ratio: float = 0.05
    max_ratio: float = 0.70
    min_words: int = 20           # too short to judge a ratio


class StopWordFilter(Filter):
    name = "stop_words"
    applies_to = ("prose",)
    Config = StopWordConfig

    def check(self, doc):
        ws = doc_words(doc)
        if len(ws) < self.cfg.min_words:
            return None
        hits = _stop_word_count(doc, ENGLISH_HIGH_FREQUENCY)
        ratio = hits / len(ws)
        if ratio < self.cfg.min_ratio:
            return "too_few_stop_words"
        if ratio > self.cfg.max_ratio:
            return "too_many_stop_words"
        return None


# --- C4 and FineWeb rules ----------------------------------------------------------------------------

TERMINAL_PUNCT = (".", "!", "?", '"', "'", "。", "！", "？", "”", "」", "…")


@dataclass
class C4Config:
    # C4 (Raffel et al. 2020, Sec. 2.2), document-level rules: at least 5 sentences, no "lorem ipsum",
    # no curly bracket (code or templates in a web page), and lines that end in terminal punctuation.
    min_sentences: int = 5
    reject_lorem_ipsum: bool = True
    reject_curly_bracket: bool = True
    # C4 drops each line without terminal punctuation; as a document rule: the share of such lines must
    # stay below this value (1.0 = off).
    max_unterminated_line_fraction: float = 1.0


class C4Filter(Filter):
    name = "c4"
    applies_to = ("prose",)
    Config = C4Config

    def check(self, doc):
        c = self.cfg
        text = doc["text"]
        if c.reject_lorem_ipsum and "lorem ipsum" in text.lower():
            return "lorem_ipsum"
        if c.reject_curly_bracket and "{" in text:
            return "curly_bracket"
        if len(split_sentences(text)) < c.min_sentences:
            return "too_few_sentences"
        lines = [ln.strip() for ln in doc_lines(doc) if ln.strip()]
        if lines and sum(not ln.endswith(TERMINAL_PUNCT) for ln in lines) / len(lines) > c.max_unterminated_line_fraction:
            return "unterminated_lines"
        return None


@dataclass
class FineWebConfig:
    # FineWeb's own quality filter (Penedo et al. 2024, datatrove FineWebQualityFilter defaults).
    min_line_punct_ratio: float = 0.12     # share of lines ending in terminal punctuation
    max_short_line_ratio: float = 0.67     # share of lines of <= short_line_chars characters
    short_line_chars: int = 30
    max_char_dup_ratio: float = 0.01       # characters in repeated lines / all characters
    max_newline_word_ratio: float = 0.3    # newlines per word (list-like pages)


class FineWebFilter(Filter):
    name = "fineweb"
    applies_to = ("prose",)
    Config = FineWebConfig

    def check(self, doc):
        c = self.cfg
        lines = [ln.strip() for ln in doc_lines(doc) if ln.strip()]
        if not lines:
            return "empty"
        if sum(ln.endswith(TERMINAL_PUNCT) for ln in lines) / len(lines) < c.min_line_punct_ratio:
            return "line_punct_ratio"
        if sum(len(ln) <= c.short_line_chars for ln in lines) / len(lines) > c.max_short_line_ratio:
            return "short_line_ratio"
        _, char_dup = _dup_stats(lines)
        if char_dup > c.max_char_dup_ratio:
            return "char_dup_ratio"
        if doc["text"].count("\n") / max(1, len(doc_words(doc))) > c.max_newline_word_ratio:
            return "newline_ratio"
        return None


# --- language / script + code -------------------------------------------------------------------------

@dataclass
class LanguageConfig:
    # Scripts kept: en (Latin), zh (CJK), mixed (parallel EN/ZH); "code" keeps source code whatever its comments.
    allowed: list[str] = field(default_factory=lambda: ["en", "zh", "mixed", "code"])
    min_letter_fraction: float = 0.25     # below it the text is mostly digits/symbols (tables, dumps)


class LanguageFilter(Filter):
    name = "language"
    Config = LanguageConfig

    def check(self, doc):
        if doc.get("kind") == "code":
            return None if "code" in self.cfg.allowed else "code_not_allowed"
        lang = doc.get("lang") or detect_script(doc["text"])
        if lang not in self.cfg.allowed:
            return f"script_{lang}"
        text = doc["text"]
        counts = doc_chars(doc)
        non_space = len(text) - counts["space"]
        if non_space and counts["alpha"] / non_space < self.cfg.min_letter_fraction:
            return "too_few_letters"
        return None


# --- code quality ---------------------------------------------------------------------------------

@dataclass
class CodeConfig:
    # StarCoder / The Stack filtering (Li et al. 2023, Sec. 3): max line length 1000, mean line length 100,
    # alphanumeric fraction >= 0.25; plus the "auto-generated" marker rule.
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    autogenerated_markers: list[str] = field(default_factory=lambda: [
        "auto-generated", "autogenerated", "automatically generated", "do not edit", "generated by", "generated from"])


class CodeFilter(Filter):
    name = "code"
    applies_to = ("code",)
    Config = CodeConfig

    def check(self, doc):
        lines = doc_lines(doc)
        if max((len(ln) for ln in lines), default=0) > self.cfg.max_line_length:
            return "max_line_length"
        if sum(len(ln) for ln in lines) / max(1, len(lines)) > self.cfg.max_mean_line_length:
            return "mean_line_length"
        text = doc["text"]
        if doc_chars(doc)["alnum"] / max(1, len(text)) < self.cfg.min_alnum_fraction:
            return "alnum_fraction"
        # Only the header comment / docstring opening counts: "can be generated by" in prose is fine.
        head = [ln.strip().lower() for ln in lines[:10]]
        header = [ln for ln in head if ln.startswith(("#", "//", "/*", "*", '"""', "'''", "--"))]
        if any(m in ln for ln in header for m in self.cfg.autogenerated_markers):
            return "autogenerated"
        return None


# --- metadata -------------------------------------------------------------------------------------

@dataclass
class MetadataConfig:
    # e.g. {"likes": 10, "comments": 2}: keep a document only if every listed numeric field is >= its value
    # (the notes list engagement as a quality signal, as Reddit karma is for WebText: Radford et al. 2019).
    min_values: dict[str, float] = field(default_factory=dict)
    missing: Literal["keep", "drop"] = "keep"  # what happens to a document without the field

    def __post_init__(self):
        if self.missing not in ("keep", "drop"):
            raise ValueError(f"metadata.missing must be 'keep' or 'drop', got {self.missing!r}")


class MetadataFilter(Filter):
    name = "metadata"
    Config = MetadataConfig

    def check(self, doc):
        for key, minimum in self.cfg.min_values.items():
            if key not in doc:
                if self.cfg.missing == "drop":
                    return f"missing_{key}"
                continue
            value = doc[key]
            try:
                value = float(value)
            except (TypeError, ValueError):
                return f"non_numeric_{key}"
            if value < minimum:
                return f"{key}_below_{minimum:g}"
        return None


# --- the filter chain ---------------------------------------------------------------------------------

@dataclass
class FiltersConfig:
    """The ``[data.filters]`` table: one sub-table per filter; ``enabled`` lists the chain in order."""
    enabled: list[str] = field(default_factory=lambda: [
        "length", "language", "metadata", "code", "gopher_quality", "gopher_repetition", "stop_words", "c4"])
    # "fineweb" is available but off by default: its short-line and newline rules remove the synthetic
    # world's Question/Answer quiz pages (see removal_reasons in data/stats.json with it enabled), which
    # carry facts the later stages are tested on.
    length: LengthConfig = field(default_factory=LengthConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    stop_words: StopWordConfig = field(default_factory=StopWordConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)

    def __post_init__(self):
        for name in self.enabled:
            if name not in FILTERS:
                raise ValueError(f"unknown filter {name!r} in enabled; valid filters are: {', '.join(FILTERS)}")


FILTERS: dict[str, type[Filter]] = {
    "length": LengthFilter, "language": LanguageFilter, "metadata": MetadataFilter, "code": CodeFilter,
    "gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter, "stop_words": StopWordFilter,
    "c4": C4Filter, "fineweb": FineWebFilter,
}


def build_filters(cfg: FiltersConfig) -> list[Filter]:
    return [FILTERS[name](getattr(cfg, name)) for name in cfg.enabled]


def apply_filters(doc: dict, filters: list[Filter]) -> bool | str:
    """Run the chain; the first filter that rejects gives the reason (later ones do not see the doc)."""
    for f in filters:
        verdict = f.keep(doc)
        if verdict is not True:
            return verdict
    return True

