"""The baseline-table helper runs every family on the same tokens at a tiny budget."""

import math

from lmstack.eval.baselines import baseline_table, format_table
from test_train_helpers import periodic_tokens


def test_baseline_table_runs_every_family_at_equal_compute():
    train, val = periodic_tokens(4000, vocab=32), periodic_tokens(600, vocab=32, seed=1)
    small = {"ffnn": dict(preset="ffnn", d_model=16, ffn_hidden=32, ffnn_context=4),
             "lstm": dict(preset="lstm", d_model=32, n_layers=1),
             "transformer": dict(preset="llama-style", d_model=32, n_layers=2, n_heads=2, n_kv_heads=1),
             "gla": dict(preset="gla", d_model=32, n_layers=2, n_heads=2)}
    rows = baseline_table(train, val, vocab_size=32, bos_id=0, bytes_per_token=1.0, configs=small,
                          reference_steps=20, batch_size=4, seq_len=16, ngram_order=3, decode_tokens=4,
                          lr=1e-2, log=lambda m: None)
    assert [r.name for r in rows] == ["3-gram MKN", "ffnn", "lstm", "transformer", "gla"]
    uniform = math.log2(32)
    for r in rows:
        assert 0 < r.val_bpb < uniform, r  # every model learned something about the periodic stream
    budget = rows[3].train_flops
    for r in rows[1:]:  # equal compute: as many whole steps as the transformer's budget buys (cap 400)
        steps = r.train_tokens // 64
        per_step = r.train_flops / steps
        assert steps == 400 or budget - per_step < r.train_flops <= budget * (1 + 1e-9), r
        assert r.decode_tok_per_s and r.decode_tok_per_s > 0
    table = format_table(rows)
    assert table.count("\n") == 1 + len(rows) and "n-grams" in table
