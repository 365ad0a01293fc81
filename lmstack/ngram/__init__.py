"""Statistical n-gram language models: counting, smoothing, perplexity, sampling and ARPA I/O.

Quick use on text::

    from lmstack.ngram import Vocab, count_ngrams, fit, write_arpa
    vocab = Vocab.from_lines(train_lines, "char")
    counts = count_ngrams(vocab.encode_lines(train_lines), vocab, order=5)
    model = fit(counts, "modified_kneser_ney")
    score = model.score_sentences(vocab.encode_lines(val_lines))
    print(score.perplexity, score.bits_per_byte(sum(len(l.encode()) + 1 for l in val_lines)))
    write_arpa(model, "model.arpa")          # loadable by kenlm.Model
"""

from lmstack.ngram.arpa import read_arpa, write_arpa
from lmstack.ngram.counts import (BOS, EOS, UNK, NgramCounts, Vocab, count_ngrams, count_padded, count_token_stream,
                                  pad_sentences, token_stream_to_padded)
from lmstack.ngram.models import (METHODS, BackoffModel, ContextModel, NgramModel, Score, StupidBackoffModel,
                                  fit, simple_good_turing)

__all__ = ["BOS", "EOS", "UNK", "METHODS", "NgramCounts", "Vocab", "count_ngrams", "count_padded", "count_token_stream",
           "pad_sentences", "token_stream_to_padded", "fit", "simple_good_turing", "NgramModel", "BackoffModel",
           "ContextModel", "StupidBackoffModel", "Score", "read_arpa", "write_arpa"]
