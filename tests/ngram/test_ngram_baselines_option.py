"""The ngram stage's optional equal-compute baseline table (issue 20), on byte-level shards."""

import json

import numpy as np

from lmstack import DATA_DIR


def _byte_run(tmp_path, n_chars=12_000):
    from lmstack.data.shards import write_tokens

    docs = [d for d in (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:n_chars].split("\n\n")
            if d.strip()]
    cut = int(len(docs) * 0.8)
    shards = tmp_path / "run" / "shards"
    shards.mkdir(parents=True)
    meta = {"vocab_size": 257}
    for split, part in (("train", docs[:cut]), ("val", docs[cut:])):
        ids = np.concatenate([[256] + list(d.encode()) for d in part])
        write_tokens(shards / f"{split}.bin", ids)
        meta[split] = {"tokens": int(ids.size), "bytes": sum(len(d.encode()) for d in part), "docs": len(part)}
    (shards / "meta.json").write_text(json.dumps(meta))
    return tmp_path / "run"


def test_baseline_table_is_off_by_default_and_added_on_request(tmp_path):
    from lmstack.ngram.stage import Config, run
    from lmstack.pipeline import StageContext
    from lmstack.runs import RunDir

    run_dir = RunDir(_byte_run(tmp_path))
    ctx = StageContext(run=run_dir, seed=0, device="cpu", recipe={}, stage="ngram")
    base = dict(orders=[2], methods=["modified_kneser_ney"], num_samples=0, write_arpa=False)
    off = run(ctx, Config(**base))
    assert Config().baselines_reference_steps == 0 and "Baselines at equal compute" not in off.report
    on = run(ctx, Config(**base, baselines_reference_steps=1))
    assert "Baselines at equal compute" in on.report
    for name in ("2-gram MKN", "ffnn", "lstm", "transformer", "gla"):
        assert f"| {name} |" in on.report
    assert on.metrics["baseline_bpb_2_gram"] == round(off.metrics["val_bpb_best"], 4)
    for family in ("ffnn", "lstm", "transformer", "gla"):
        assert 1.0 < on.metrics[f"baseline_bpb_{family}"] < 12.0  # near-untrained byte models: about 8 bits/byte
