"""N-gram estimators, scoring (perplexity, bits per byte) and sampling.

Estimators (``fit(counts, method)``):
  mle                  maximum likelihood c(h,w)/c(h): an n-gram unseen in training gets probability 0,
                       so one such event in the evaluation text makes the perplexity infinite.
  add_k                additive smoothing (c(h,w)+k)/(c(h)+k|V|); k=1 is Laplace.
  good_turing          Good-Turing counts r -> r* (simple Good-Turing, Gale & Sampson 1995, a log-log fit
                       of N_r), unseen n-grams r0* = N1/N0, normalised within each context.
  katz                 Katz (1987) backoff: Good-Turing discounts for r <= 5, the left-over mass goes to
                       the lower order, renormalised over the words unseen in the context (a context
                       whose words all occur > 5 times is discounted absolutely so it leaves some mass).
  stupid_backoff       Brants et al. (2007): relative frequency, else 0.4 x the shorter context's score.
                       NOT a probability distribution (scores of a context do not sum to 1); it is
                       reported for comparison only and cannot be exported to ARPA.
  kneser_ney           interpolated Kneser-Ney (Chen & Goodman 1998): one discount per order,
                       continuation counts N1+(. w) for the lower orders.
  modified_kneser_ney  Chen & Goodman's three discounts D1, D2, D3+ per order, estimated from n1..n4.
                       Both KN models interpolate the unigram level with the uniform distribution.

For mle, add_k and good_turing the context used is the longest suffix of the history that was seen in
training (a never-seen context would otherwise give no estimate or a uniform one). katz and both
Kneser-Ney models are stored in backoff form -- a probability for every seen n-gram and a backoff
weight for every seen context, exactly what an ARPA file holds -- so they export losslessly.
All probabilities are over the predictable vocabulary: every symbol except ``<s>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lmstack.ngram.counts import BOS, EOS, UNK, NgramCounts, Vocab, extend_left, pad_sentences

METHODS = ("mle", "add_k", "good_turing", "katz", "stupid_backoff", "kneser_ney", "modified_kneser_ney")
LOG10_ZERO = -99.0  # how ARPA writes log10(0) (the probability of <s>, an impossible backoff)


@dataclass
class Score:
    """Result of scoring a text: total log10 probability over ``n_events`` predicted units."""

    log10_prob: float
    n_events: int
    n_zero_prob: int   # events the model gave probability 0 (MLE on unseen n-grams)
    n_oov: int         # events whose unit is not in the vocabulary (scored as <unk>)
    n_sentences: int
    log10_prob_known: float = 0.0  # the same without the <unk> events (KenLM's "excluding OOVs")

    @property
    def perplexity_known(self) -> float:
        """Perplexity over in-vocabulary events only (OOV mass differs a lot between estimators)."""
        n = self.n_events - self.n_oov
        if n <= 0:
            return float("nan")
        if self.n_zero_prob:
            return float("inf")
        return 10.0 ** (-self.log10_prob_known / n)

    @property
    def perplexity(self) -> float:
        if self.n_events == 0:
            return float("nan")
        if self.n_zero_prob:
            return float("inf")
        return 10.0 ** (-self.log10_prob / self.n_events)

    def bits_per_byte(self, n_bytes: int) -> float:
        """-log2 P(text) / UTF-8 bytes: comparable across tokenizations (and with neural models)."""
        if self.n_zero_prob:
            return float("inf")
        return -self.log10_prob * math.log2(10.0) / max(n_bytes, 1)


class NgramModel:
    """Base class: subclasses implement ``_log10(hist, words)`` for a batch of events."""

    method = "?"
    normalised = True

    def __init__(self, vocab: Vocab, order: int, keys: list):
        self.vocab = vocab
        self.order = order
        self.keys = keys  # keys[k] for k >= 2: the sorted reversed-trie keys (see counts.py)

    @property
    def V(self) -> int:
        return self.vocab.size

    # -- lookups shared by every estimator --------------------------------------------------
    def _gram_rows(self, hist: np.ndarray, words: np.ndarray) -> list:
        """rows[j] = row of (last j-1 history words, word) in table j, -1 if unseen (rows[1] = word)."""
        rows = [None, words]
        cur = words
        for j in range(2, self.order + 1):
            cur = extend_left(self.keys[j], cur, hist[:, -(j - 1)], self.V)
            rows.append(cur)
        return rows

    def _context_rows(self, hist: np.ndarray) -> list:
        """rows[m] = row of the last m history words in table m, -1 if unseen or before <s>."""
        rows = [None]
        if self.order == 1:
            return rows
        cur = hist[:, -1]
        rows.append(cur)
        for m in range(2, self.order):
            cur = extend_left(self.keys[m], cur, hist[:, -m], self.V)
            rows.append(cur)
        return rows

    def _log10(self, hist: np.ndarray, words: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------
    def log10_probs(self, hist: np.ndarray, words: np.ndarray) -> np.ndarray:
        """log10 p(word | history) for a batch: ``hist`` is (M, order-1) ids, oldest first,
        left-padded with -1 where the sentence started earlier (the first real id is <s>)."""
        words = np.asarray(words, dtype=np.int64)
        hist = np.asarray(hist, dtype=np.int64).reshape(words.size, max(self.order - 1, 0))
        return self._log10(hist, words)

    def log10_prob(self, word: int, history=()) -> float:
        """log10 p(word | history) for one event (ids; ``history`` ends with the most recent id and
        starts with <s> at a sentence start). Batch calls (``log10_probs``) are much faster per event."""
        H = self.order - 1
        hist = [int(h) for h in history][-H:] if H else []
        h = np.full((1, H), -1, dtype=np.int64)
        if hist:
            h[0, H - len(hist):] = hist
        return float(self._log10(h, np.array([int(word)], dtype=np.int64))[0])

    def events(self, padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history matrix, predicted ids) for every non-<s> position of padded sentences."""
        padded = np.asarray(padded, dtype=np.int64)
        pos = np.flatnonzero(padded != BOS)
        seg = np.cumsum(padded == BOS)
        H = self.order - 1
        hist = np.full((pos.size, H), -1, dtype=np.int64)
        for d in range(1, H + 1):
            src = pos - d
            ok = (src >= 0) & (seg[np.maximum(src, 0)] == seg[pos])
            hist[:, H - d] = np.where(ok, padded[np.maximum(src, 0)], -1)
        return hist, padded[pos]

    def score_padded(self, padded: np.ndarray, batch: int = 1_000_000) -> tuple[Score, np.ndarray]:
        """Score padded sentences; returns the summary and the per-event log10 probabilities."""
        hist, words = self.events(padded)
        out = np.empty(words.size, dtype=np.float64)
        for s in range(0, words.size, batch):
            out[s:s + batch] = self._log10(hist[s:s + batch], words[s:s + batch])
        finite = np.isfinite(out)
        known = finite & (words != UNK)
        score = Score(float(out[finite].sum()), int(words.size), int((~finite).sum()),
                      int((words == UNK).sum()), int((np.asarray(padded) == BOS).sum()),
                      float(out[known].sum()))
        return score, out

    def score_sentences(self, sentences) -> Score:
        """Score id sentences (without <s>/</s>; as produced by ``Vocab.encode_lines``)."""
        return self.score_padded(pad_sentences(sentences))[0]

    def score_lines(self, lines) -> Score:
        """Score lines of text (char/word models), each line one sentence."""
        return self.score_padded(self.vocab.encode_padded(lines))[0]

    def sentence_log10(self, sentence: np.ndarray) -> float:
        """log10 P(<s> sentence </s>), the quantity KenLM's ``Model.score(s)`` returns."""
        _, per_event = self.score_padded(pad_sentences([sentence]))
        return float(per_event.sum())

    def distribution(self, history) -> np.ndarray:
        """p(w | history) for every id w (``<s>`` gets 0). ``history`` ends with the most recent id;
        to condition on a sentence start, include <s> (id 1) as its first element."""
        H = self.order - 1
        history = [int(h) for h in history][-H:] if H else []
        h = np.full((1, H), -1, dtype=np.int64)
        if history:
            h[0, H - len(history):] = history
        words = np.arange(self.V, dtype=np.int64)
        lp = self._log10(np.repeat(h, self.V, axis=0), words)
        p = np.where(np.isfinite(lp), 10.0 ** lp, 0.0)
        p[BOS] = 0.0
        return p

    def sample(self, rng: np.random.Generator, max_len: int = 200, prefix=(), temperature: float = 1.0) -> list[int]:
        """Draw one sentence (ids, without <s>/</s>) from the model, continuing ``prefix``."""
        out = [int(i) for i in prefix]
        for _ in range(max_len):
            p = self.distribution([BOS] + out)
            if temperature != 1.0:
                p = np.where(p > 0, p ** (1.0 / max(temperature, 1e-6)), 0.0)
            total = p.sum()
            if total <= 0:
                break
            w = int(rng.choice(self.V, p=p / total))  # stupid backoff scores need this renormalisation
            if w == EOS:
                break
            out.append(w)
        return out


class BackoffModel(NgramModel):
    """Backoff form: log10 p(w|h) = logp(longest seen (h', w)) + sum of bow over the longer contexts
    that were seen. Katz, Kneser-Ney and imported ARPA models use this (it is ARPA's semantics)."""

    def __init__(self, vocab: Vocab, order: int, keys: list, logp: list, bow: list, method: str):
        super().__init__(vocab, order, keys)
        self.logp = logp   # logp[k]: log10 prob of every row of table k (logp[1] dense over the vocab)
        self.bow = bow     # bow[k]: log10 backoff weight of every row of table k as a context (k < order)
        self.method = method

    def num_grams(self, k: int) -> int:
        return self.V if k == 1 else int(self.keys[k].size)

    def grams(self, k: int) -> np.ndarray:
        if k == 1:
            return np.arange(self.V, dtype=np.int64)[:, None]
        V = self.V
        return np.concatenate([(self.keys[k] % V)[:, None], self.grams(k - 1)[self.keys[k] // V]], axis=1)

    def log10_prob(self, word: int, history=()) -> float:
        """One event without numpy batch overhead: the ARPA backoff walk with scalar binary searches."""
        word = int(word)
        if word == BOS:
            return -math.inf
        hist = [int(h) for h in history][-(self.order - 1):] if self.order > 1 else []
        V, keys, logp, bow = self.V, self.keys, self.logp, self.bow
        row, best, matched = word, float(logp[1][word]), 1
        for j in range(2, len(hist) + 2):
            key = row * V + hist[-(j - 1)]
            table = keys[j]
            pos = int(table.searchsorted(key))
            if pos == table.size or int(table[pos]) != key:
                break
            row, best, matched = pos, float(logp[j][pos]), j
        total = best
        ctx = hist[-1] if hist else -1
        for m in range(1, len(hist) + 1):
            if m > 1:
                key = ctx * V + hist[-m]
                table = keys[m]
                pos = int(table.searchsorted(key))
                if pos == table.size or int(table[pos]) != key:
                    break
                ctx = pos
            if m >= matched:
                total += float(bow[m][ctx])
        return -math.inf if total <= LOG10_ZERO else total

    def _log10(self, hist, words):
        grows = self._gram_rows(hist, words)
        crows = self._context_rows(hist)
        out = self.logp[1][words].astype(np.float64)
        matched = np.ones(words.size, dtype=np.int64)
        for j in range(2, self.order + 1):
            r = grows[j]
            hit = r >= 0
            out = np.where(hit, self.logp[j][np.maximum(r, 0)], out)
            matched = np.where(hit, j, matched)
        for m in range(1, self.order):
            r = crows[m]
            use = (r >= 0) & (m >= matched)   # contexts longer than the matched n-gram's context
            out = out + np.where(use, self.bow[m][np.maximum(r, 0)], 0.0)
        out = np.where(words == BOS, -np.inf, out)
        return np.where(out <= LOG10_ZERO, -np.inf, out)


class StupidBackoffModel(NgramModel):
    """Brants et al. (2007): S(w|h) = c(h,w)/c(h) if seen else 0.4 * S(w|h'); unnormalised.
    The unigram level is add-one smoothed so that unseen words keep a finite score."""

    method = "stupid_backoff"
    normalised = False

    def __init__(self, counts: NgramCounts, alpha: float = 0.4):
        super().__init__(counts.vocab, counts.order, counts.keys)
        if not 0 < alpha <= 1:
            raise ValueError(f"stupid backoff alpha must be in (0, 1], got {alpha}")
        self.log_alpha = math.log10(alpha)
        uni = counts.counts[1].astype(np.float64).copy()
        uni[BOS] = 0
        self.logf = [None, np.log10((uni + 1) / (uni.sum() + counts.vocab.num_predictable))]
        for k in range(2, counts.order + 1):
            ctx = _context_totals(counts, k)
            self.logf.append(np.log10(counts.counts[k] / ctx[counts.prefix(k)]))

    def _log10(self, hist, words):
        grows = self._gram_rows(hist, words)
        out = self.logf[1][words]
        matched = np.ones(words.size, dtype=np.int64)
        for j in range(2, self.order + 1):
            r = grows[j]
            hit = r >= 0
            out = np.where(hit, self.logf[j][np.maximum(r, 0)], out)
            matched = np.where(hit, j, matched)
        available = 1 + (hist >= 0).sum(axis=1) if hist.size else np.ones(words.size, dtype=np.int64)
        out = out + (available - matched) * self.log_alpha
        return np.where(words == BOS, -np.inf, out)


class ContextModel(NgramModel):
    """Estimators that use the longest seen context directly (mle, add_k, good_turing).

    ``seen_prob[k]``: p(w|h) of every row (h, w) of table k; ``unseen_prob[m]``: p of a word never seen
    after context row m of table m (m = 0 is the empty context, a length-1 array)."""

    def __init__(self, counts: NgramCounts, method: str, seen_prob: list, unseen_prob: list):
        super().__init__(counts.vocab, counts.order, counts.keys)
        self.method = method
        self.seen_prob = seen_prob
        self.unseen_prob = unseen_prob
        self.context_seen = [None] + [_context_totals(counts, m + 1) > 0 for m in range(1, counts.order)]
        uni = counts.counts[1].copy()
        uni[BOS] = 0
        self.unigram_seen = uni > 0

    def _log10(self, hist, words):
        crows = self._context_rows(hist)
        grows = self._gram_rows(hist, words)
        depth = np.zeros(words.size, dtype=np.int64)   # length of the longest seen context
        ctx_row = np.zeros(words.size, dtype=np.int64)
        for m in range(1, self.order):
            r = crows[m]
            ok = (r >= 0) & (depth == m - 1)
            ok &= self.context_seen[m][np.maximum(r, 0)]
            depth = np.where(ok, m, depth)
            ctx_row = np.where(ok, r, ctx_row)
        p = np.zeros(words.size, dtype=np.float64)
        for m in range(0, self.order):
            sel = depth == m
            if not sel.any():
                continue
            g = grows[m + 1][sel]
            seen = self.unigram_seen[g] if m == 0 else g >= 0
            p_seen = self.seen_prob[m + 1][np.maximum(g, 0)]
            p_unseen = self.unseen_prob[m][ctx_row[sel] if m else np.zeros(g.size, dtype=np.int64)]
            p[sel] = np.where(seen, p_seen, p_unseen)
        p[words == BOS] = 0.0
        with np.errstate(divide="ignore"):
            return np.log10(p)


# -- estimators ----------------------------------------------------------------------------
def _context_totals(counts: NgramCounts, k: int, values=None) -> np.ndarray:
    """Sum of ``values`` (default: the counts) of table k grouped by context row in table k-1."""
    values = counts.counts[k] if values is None else values
    return np.bincount(counts.prefix(k), weights=np.asarray(values, dtype=np.float64),
                       minlength=counts.num_grams(k - 1))


def _unigram_counts(counts: NgramCounts) -> np.ndarray:
    uni = counts.counts[1].astype(np.float64).copy()
    uni[BOS] = 0.0
    return uni


def fit_mle(counts: NgramCounts) -> ContextModel:
    uni = _unigram_counts(counts)
    seen = [None, uni / max(uni.sum(), 1.0)]
    unseen = [np.zeros(1)]
    for k in range(2, counts.order + 1):
        tot = _context_totals(counts, k)
        seen.append(counts.counts[k] / tot[counts.prefix(k)])
        unseen.append(np.zeros(tot.size))
    return ContextModel(counts, "mle", seen, unseen)


def fit_add_k(counts: NgramCounts, k_add: float = 1.0) -> ContextModel:
    if k_add <= 0:
        raise ValueError(f"add-k needs k > 0, got {k_add}")
    Vp = counts.vocab.num_predictable
    uni = _unigram_counts(counts)
    seen = [None, (uni + k_add) / (uni.sum() + k_add * Vp)]
    unseen = [np.array([k_add / (uni.sum() + k_add * Vp)])]
    for k in range(2, counts.order + 1):
        tot = _context_totals(counts, k)
        seen.append((counts.counts[k] + k_add) / (tot[counts.prefix(k)] + k_add * Vp))
        unseen.append(k_add / (tot + k_add * Vp))
    m = ContextModel(counts, "add_k", seen, unseen)
    m.k_add = k_add
    return m


def simple_good_turing(r: np.ndarray, n_r: np.ndarray) -> np.ndarray:
    """Gale & Sampson (1995) simple Good-Turing: adjusted counts r* for the observed frequencies r
    (sorted ascending) with N_r > 0. Uses Turing's estimate while it differs significantly from
    the smoothed log-log line, the line's estimate afterwards."""
    r = np.asarray(r, dtype=np.float64)
    n_r = np.asarray(n_r, dtype=np.float64)
    if r.size == 0:
        return r
    if r.size == 1:
        return r.copy()
    # Z_r = N_r / (0.5 (t - q)) with q, t the neighbouring observed frequencies.
    q = np.concatenate([[0.0], r[:-1]])
    t = np.concatenate([r[1:], [2 * r[-1] - q[-1]]])
    z = n_r / (0.5 * (t - q))
    b, a = np.polyfit(np.log(r), np.log(z), 1)
    if b >= -1:  # the fit must fall faster than 1/r or r* grows without bound
        b = -1.0001
    smoothed = lambda x: np.exp(a + b * np.log(x))
    lgt = (r + 1) * smoothed(r + 1) / smoothed(r)
    nxt = dict(zip(r.tolist(), n_r.tolist()))
    rstar = np.empty_like(r)
    use_turing = True
    for i, (ri, ni) in enumerate(zip(r, n_r)):
        n1 = nxt.get(ri + 1.0)
        if use_turing and n1 is not None:
            turing = (ri + 1) * n1 / ni
            sd = 1.96 * math.sqrt((ri + 1) ** 2 * n1 / ni ** 2 * (1 + n1 / ni))
            if abs(turing - lgt[i]) > sd:
                rstar[i] = turing
                continue
        use_turing = False
        rstar[i] = lgt[i]
    return rstar


def _sgt_adjusted(c: np.ndarray) -> np.ndarray:
    """Simple Good-Turing r* for every entry of the count array ``c`` (zeros stay zero)."""
    pos = c > 0
    r, n_r = np.unique(c[pos], return_counts=True)
    rstar = simple_good_turing(r, n_r)
    out = np.zeros(c.shape, dtype=np.float64)
    out[pos] = rstar[np.searchsorted(r, c[pos])]
    return out


def fit_good_turing(counts: NgramCounts) -> ContextModel:
    """Good-Turing on the n-grams of each order: a seen n-gram counts r* (simple Good-Turing), every
    unseen one r0* = N1 / N0 with N0 = |V|^k - (seen k-grams) (Good 1953); p(w|h) is r*(h,w)
    normalised over all words w of the context h, so unseen words get little but never zero."""
    Vp = counts.vocab.num_predictable
    uni = _unigram_counts(counts)
    seen, unseen = [None], []
    for k in range(1, counts.order + 1):
        c = uni if k == 1 else counts.counts[k].astype(np.float64)
        rs = _sgt_adjusted(c)
        n1 = float((c == 1).sum())
        n_seen = float((c > 0).sum())
        n0 = float(Vp) ** k - n_seen
        r0 = n1 / n0 if n0 > 0 and n1 > 0 else (0.5 / n0 if n0 > 0 else 0.0)
        if k == 1:
            Z = np.array([rs.sum() + (Vp - n_seen) * r0])
            prefix = np.zeros(c.size, dtype=np.int64)
        else:
            prefix = counts.prefix(k)
            kept = _context_totals(counts, k, rs)
            types = np.bincount(prefix, minlength=kept.size)
            Z = kept + (Vp - types) * r0
        Zs = np.where(Z > 0, Z, 1.0)
        seen.append(rs / Zs[prefix])
        unseen.append(r0 / Zs)
    return ContextModel(counts, "good_turing", seen, unseen)


def _katz_discounts(c: np.ndarray, K: int = 5) -> dict[int, float]:
    """Katz's d_r for r = 1..K from Turing's estimate r* = (r+1) N_{r+1} / N_r (Katz 1987);
    falls back to absolute discounting D = N1/(N1+2 N2) where the estimate is unusable."""
    n = np.bincount(c[c > 0].astype(np.int64), minlength=K + 2)[: K + 2]
    n1, n2 = int(n[1]), int(n[2])
    D = n1 / (n1 + 2 * n2) if n1 > 0 and n1 + 2 * n2 > 0 else 0.5
    out = {}
    common = (K + 1) * n[K + 1] / n1 if n1 else None
    for r in range(1, K + 1):
        d = None
        if common is not None and n[r] > 0 and common < 1:
            rstar = (r + 1) * n[r + 1] / n[r]
            d = (rstar / r - common) / (1 - common)
        if d is None or not 0 < d <= 1:
            d = max(r - D, 0.0) / r if r > D else 0.5
        out[r] = float(d)
    return out


def _apply_discount(c: np.ndarray, d: dict[int, float]) -> np.ndarray:
    out = np.ones(c.shape, dtype=np.float64)
    for r, v in d.items():
        out[c == r] = v
    return out * c


def fit_katz(counts: NgramCounts, K: int = 5) -> BackoffModel:
    """Katz backoff in ARPA form: p(w|h) = d_r c/c(h) if seen, else alpha(h) p(w|h')."""
    Vp = counts.vocab.num_predictable
    uni = _unigram_counts(counts)
    disc = _apply_discount(uni, _katz_discounts(uni, K))
    total = max(uni.sum(), 1.0)
    n_unseen = Vp - int((uni > 0).sum())
    if n_unseen > 0 and 1.0 - disc.sum() / total < 1e-12:  # every word seen > K times: see below
        n1, n2 = int((uni == 1).sum()), int((uni == 2).sum())
        disc = np.maximum(uni - (n1 / (n1 + 2 * n2) if n1 > 0 else 0.5), 0.0)
    if n_unseen > 0:
        p1 = np.where(uni > 0, disc / total, (1.0 - disc.sum() / total) / n_unseen)
    else:
        p1 = disc / disc.sum()
    p1[BOS] = 0.0
    probs = [None, p1]
    bows = [None]
    for k in range(2, counts.order + 1):
        c = counts.counts[k].astype(np.float64)
        prefix = counts.prefix(k)
        tot = _context_totals(counts, k)
        pd = _apply_discount(c, _katz_discounts(c, K)) / tot[prefix]
        kept = np.bincount(prefix, weights=pd, minlength=tot.size)
        # Counts above K are not discounted, so a context whose words all occur > K times would
        # leave nothing for unseen words: discount those contexts absolutely (D = N1/(N1+2 N2)).
        full = (tot > 0) & (1.0 - kept < 1e-12)
        if full.any():
            n1, n2 = int((c == 1).sum()), int((c == 2).sum())
            D = n1 / (n1 + 2 * n2) if n1 > 0 else 0.5
            pd = np.where(full[prefix], (c - D) / tot[prefix], pd)
            kept = np.bincount(prefix, weights=pd, minlength=tot.size)
        lower = np.bincount(prefix, weights=probs[k - 1][counts.suffix(k)], minlength=tot.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            # When the lower order leaves no mass for the unseen words, renormalise the seen ones.
            stuck = (tot > 0) & (1.0 - lower < 1e-9)
            alpha = np.where((tot > 0) & ~stuck, (1.0 - kept) / (1.0 - lower), np.where(stuck, 0.0, 1.0))
            pd = np.where(stuck[prefix], pd / np.where(kept > 0, kept, 1.0)[prefix], pd)
        probs.append(pd)
        bows.append(alpha)
    return _to_backoff(counts, probs, bows, "katz")


def _to_backoff(counts: NgramCounts, probs: list, bows: list, method: str) -> BackoffModel:
    with np.errstate(divide="ignore"):
        logp = [None] + [np.maximum(np.log10(p), LOG10_ZERO) for p in probs[1:]]
        bow = [None] + [np.maximum(np.log10(np.maximum(b, 0.0)), LOG10_ZERO) for b in bows[1:]]
    bow.append(np.zeros(0))  # the highest order has no backoff weights
    return BackoffModel(counts.vocab, counts.order, counts.keys, logp, bow, method)


def kn_adjusted_counts(counts: NgramCounts, k: int) -> np.ndarray:
    """Kneser-Ney counts of table k: raw counts at the highest order and for n-grams starting with
    <s> (nothing can precede them), else the continuation count N1+(. w1..wk) = distinct left words."""
    raw = counts.counts[k].astype(np.float64)
    if k == counts.order:
        out = raw.copy()
    else:
        out = np.bincount(counts.suffix(k + 1), minlength=counts.num_grams(k)).astype(np.float64)
        starts = counts.first(k) == BOS
        out[starts] = raw[starts]
    if k == 1:
        out[BOS] = 0.0
    return out


def kn_discounts(adjusted: np.ndarray, modified: bool) -> list[float]:
    """Chen & Goodman (1998): D = Y = n1/(n1+2 n2); modified: D_r = r - (r+1) Y n_{r+1}/n_r for r = 1,2,3+.
    Discounts the data cannot support (n_r = 0 on tiny corpora) fall back to Y (times r for D_r)."""
    n = np.bincount(np.rint(adjusted[adjusted > 0]).astype(np.int64), minlength=5)[:5]
    Y = n[1] / (n[1] + 2 * n[2]) if n[1] > 0 and n[2] > 0 else 0.5
    if not modified:
        return [float(Y)]
    out = []
    for r in (1, 2, 3):
        d = r - (r + 1) * Y * n[r + 1] / n[r] if n[r] > 0 else None
        if d is None or not 0 < d < r:
            d = min(Y * r, r - 1e-3)
        out.append(float(d))
    return out


def fit_kneser_ney(counts: NgramCounts, modified: bool = False, discounts: list | None = None) -> BackoffModel:
    """Interpolated (modified) Kneser-Ney, converted to backoff form:
    p(w|h) = max(a(h,w) - D, 0)/A(h) + gamma(h) p(w|h'), gamma(h) = removed mass / A(h);
    the unigram level interpolates with the uniform distribution over the predictable vocabulary."""
    Vp = counts.vocab.num_predictable
    used = []

    def discount_of(a: np.ndarray, k: int) -> np.ndarray:
        ds = discounts[k - 1] if discounts is not None else kn_discounts(a, modified)
        ds = [ds] if np.isscalar(ds) else list(ds)
        used.append(ds)
        if len(ds) == 1:
            return np.minimum(np.full(a.shape, ds[0]), a)
        d = np.where(a >= 3, ds[2], np.where(a >= 2, ds[1], ds[0]))
        return np.minimum(d, a)

    a1 = kn_adjusted_counts(counts, 1)
    A = a1.sum()
    d1 = discount_of(a1, 1)
    gamma0 = d1.sum() / A if A > 0 else 1.0
    p1 = (a1 - d1) / max(A, 1e-300) + gamma0 / Vp
    p1[BOS] = 0.0
    probs, bows = [None, p1], [None]
    for k in range(2, counts.order + 1):
        a = kn_adjusted_counts(counts, k)
        d = discount_of(a, k)
        prefix = counts.prefix(k)
        Ah = np.bincount(prefix, weights=a, minlength=counts.num_grams(k - 1))
        removed = np.bincount(prefix, weights=d, minlength=Ah.size)
        gamma = np.where(Ah > 0, removed / np.where(Ah > 0, Ah, 1.0), 1.0)
        probs.append((a - d) / Ah[prefix] + gamma[prefix] * probs[k - 1][counts.suffix(k)])
        bows.append(gamma)
    model = _to_backoff(counts, probs, bows, "modified_kneser_ney" if modified else "kneser_ney")
    model.discounts = used
    return model


def fit(counts: NgramCounts, method: str, order: int | None = None, **options) -> NgramModel:
    """Fit ``method`` (one of METHODS) on counts, optionally truncated to a lower ``order``."""
    if order is not None and order != counts.order:
        counts = counts.truncate(order)
    if counts.n_events == 0:
        raise ValueError("cannot fit an n-gram model on empty training data (no units counted)")
    if method == "mle":
        return fit_mle(counts)
    if method == "add_k":
        return fit_add_k(counts, options.get("k", 1.0))
    if method == "good_turing":
        return fit_good_turing(counts)
    if method == "katz":
        return fit_katz(counts)
    if method == "stupid_backoff":
        return StupidBackoffModel(counts, options.get("alpha", 0.4))
    if method == "kneser_ney":
        return fit_kneser_ney(counts, modified=False)
    if method == "modified_kneser_ney":
        return fit_kneser_ney(counts, modified=True)
    raise ValueError(f"unknown n-gram method {method!r}; choose one of {', '.join(METHODS)}")
