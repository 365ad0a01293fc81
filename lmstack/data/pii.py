"""PII masking with typed placeholders: ``<|email|>``, ``<|phone|>``, ``<|ip|>``, ``<|id|>``, ``<|card|>``.

Candidates are found with regular expressions and then *validated*, so that look-alikes survive:
- Chinese resident ID numbers (GB 11643-1999): 18 characters, a real birth date, and the ISO 7064
  MOD 11-2 check character.
- Credit-card numbers: 13-19 digits (optionally in groups separated by spaces or hyphens), a known
  issuer prefix and a valid Luhn checksum (ISO/IEC 7812-1).
- IP addresses: parsed by :mod:`ipaddress` (IPv4 octets <= 255; IPv6 with at least three groups, so
  slices such as ``a[1::2]`` are not addresses).
- Phone numbers: Chinese mobiles (1[3-9]x, 11 digits, optional +86), international numbers that start
  with ``+`` and a country code, and North-American ``(555) 123-4567`` style. Bare digit runs, dates,
  version numbers and arithmetic are not phones.
Overlaps are resolved by priority (id > card > email > ip > phone) and then by length.
Boundaries are ASCII-only on purpose: in Chinese text a number or address follows a Han character
directly ("电话是+1 ...", "邮箱是a@b.com"), and Han characters are ``\w``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections import Counter
from dataclasses import dataclass, field

import regex

PLACEHOLDERS = {"email": "<|email|>", "phone": "<|phone|>", "ip": "<|ip|>", "id": "<|id|>", "card": "<|card|>"}
PRIORITY = {"id": 0, "card": 1, "email": 2, "ip": 3, "phone": 4}

EMAIL_RE = regex.compile(
    r"(?<![A-Za-z0-9.+_%-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")
CN_ID_RE = regex.compile(r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])")
CARD_RE = regex.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
IPV4_RE = regex.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
IPV6_RE = regex.compile(r"(?<![0-9A-Za-z_:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z_:])")
PHONE_RES = [
    # Chinese mobile: optional +86 / 0086, 1[3-9]X then 8 digits, optionally grouped 3-4-4.
    regex.compile(r"(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"),
    # International: +CC then 6-14 more digits in groups separated by space, dot, hyphen or (area code).
    regex.compile(r"(?<![0-9A-Za-z_+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)"),
    # North-American style: (555) 123-4567 or 555-123-4567 / 555.123.4567 (separators required).
    regex.compile(r"(?<!\d)(?:\(\d{3}\)\s?|\d{3}[.-])\d{3}[.-]\d{4}(?!\d)"),
    # Chinese landline with area code: 010-12345678, 0755-1234567.
    regex.compile(r"(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"),
]

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Issuer prefixes (IIN ranges): Visa 4, Mastercard 51-55 / 2221-2720, Amex 34/37, Discover 6011/65,
# UnionPay 62, JCB 35, Diners 36/38/300-305.
_CARD_PREFIX_RE = regex.compile(r"^(?:4|5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720|3[47]|6011|65|62|35|36|38|30[0-5])")


def cn_id_valid(s: str) -> bool:
    """GB 11643-1999 check: a plausible birth date and the ISO 7064 MOD 11-2 check character."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        born = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not (1900 <= born.year <= datetime.date.today().year):
        return False
    total = sum(int(d) * w for d, w in zip(s[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17].upper()


def luhn_valid(digits: str) -> bool:
    """Luhn mod-10 checksum (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_valid(s: str) -> bool:
    digits = "".join(ch for ch in s if ch.isdigit())
    if not 13 <= len(digits) <= 19:
        return False
    # Separators, when present, must form regular groups (4-4-4-4, 4-6-5): no "1 2 3" sprinkles.
    groups = regex.split(r"[ -]", s)
    if len(groups) > 1 and any(len(g) < 3 for g in groups):
        return False
    return bool(_CARD_PREFIX_RE.match(digits)) and luhn_valid(digits)


def ip_valid(s: str) -> bool:
    try:
        addr = ipaddress.ip_address(s)
    except ValueError:
        return False
    if addr.version == 6:
        return sum(1 for g in s.split(":") if g) >= 3
    return True


@dataclass
class PIIConfig:
    enabled: bool = True
    kinds: list[str] = field(default_factory=lambda: ["email", "phone", "ip", "id", "card"])

    def __post_init__(self):
        for k in self.kinds:
            if k not in PLACEHOLDERS:
                raise ValueError(f"unknown PII kind {k!r}; valid kinds are: {', '.join(PLACEHOLDERS)}")


class PIIMasker:
    """``mask(text) -> (masked_text, Counter(kind -> n))``; ``counts`` accumulates over all calls."""

    def __init__(self, cfg: PIIConfig | None = None):
        self.cfg = cfg or PIIConfig()
        self.counts: Counter = Counter()
        self.docs_with_pii = 0

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Validated, non-overlapping (start, end, kind) spans."""
        kinds = set(self.cfg.kinds)
        spans: list[tuple[int, int, str]] = []
        if "id" in kinds:
            spans += [(m.start(), m.end(), "id") for m in CN_ID_RE.finditer(text) if cn_id_valid(m.group())]
        if "card" in kinds:
            spans += [(m.start(), m.end(), "card") for m in CARD_RE.finditer(text) if card_valid(m.group())]
        if "email" in kinds and "@" in text:
            spans += [(m.start(), m.end(), "email") for m in EMAIL_RE.finditer(text)]
        if "ip" in kinds:
            spans += [(m.start(), m.end(), "ip") for m in IPV4_RE.finditer(text) if ip_valid(m.group())]
            if ":" in text:
                spans += [(m.start(), m.end(), "ip") for m in IPV6_RE.finditer(text) if ip_valid(m.group())]
        if "phone" in kinds:
            for rx in PHONE_RES:
                spans += [(m.start(), m.end(), "phone") for m in rx.finditer(text)
                          if sum(ch.isdigit() for ch in m.group()) >= 7]
        if not spans:
            return []
        spans.sort(key=lambda s: (PRIORITY[s[2]], -(s[1] - s[0]), s[0]))
        taken: list[tuple[int, int, str]] = []
        for s in spans:
            if all(s[1] <= t[0] or s[0] >= t[1] for t in taken):
                taken.append(s)
        return sorted(taken)

    def mask(self, text: str) -> tuple[str, Counter]:
        spans = self.find(text)
        found: Counter = Counter()
        if not spans:
            return text, found
        out, pos = [], 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(PLACEHOLDERS[kind])
            pos = end
            found[kind] += 1
        out.append(text[pos:])
        self.counts.update(found)
        self.docs_with_pii += 1
        return "".join(out), found
