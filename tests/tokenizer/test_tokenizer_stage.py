"""The ``tokenizer`` stage on a small run directory: tokenizer file, shards, meta.json, resume."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmstack.data.shards import read_tokens
from lmstack.pipeline import StageContext
from lmstack.runs import RunDir
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.stage import Config, run


def _write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "source": "test"}, ensure_ascii=False) + "\n" for t in texts),
                    encoding="utf-8")


def _docs() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8")[:4000] for p in sorted(stdlib.glob("[a-c]*.py"))[:12]]
    prose = [f"Doc {i}: the quick brown fox {i * 7} jumps; 狐狸跳过了懒狗 {i}。" * 5 for i in range(60)]
    return code + prose + ["", "é😀 rare"]


def _ctx(tmp_path: Path) -> StageContext:
    return StageContext(run=RunDir(tmp_path / "run"), seed=0, device="cpu", recipe={}, stage="tokenizer")


@pytest.fixture()
def ctx(tmp_path):
    docs = _docs()
    _write_jsonl(tmp_path / "run" / "data" / "train.jsonl", docs)
    _write_jsonl(tmp_path / "run" / "data" / "val.jsonl", docs[::5])
    return _ctx(tmp_path)


def test_stage_writes_tokenizer_and_bos_prefixed_shards(ctx, tmp_path):
    cfg = Config(vocab_size=400, num_workers=1, eval_chars=3000)
    result = run(ctx, cfg)
    rd = ctx.run.path
    tok = Tokenizer.load(rd / "tokenizer" / "tokenizer.json")
    assert tok.vocab_size == 400 == result.metrics["vocab_size"]
    meta = json.loads((rd / "shards" / "meta.json").read_text())
    assert meta["vocab_size"] == 400 and meta["bos_id"] == tok.bos_id
    for split in ("train", "val"):
        lines = (rd / "data" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        texts = [json.loads(line)["text"] for line in lines]
        kept = [t for t in texts if t]
        tokens = np.asarray(read_tokens(rd / "shards" / f"{split}.bin"))
        assert meta[split]["tokens"] == tokens.size
        assert meta[split]["docs"] == len(kept) and meta[split]["empty_docs_skipped"] == len(texts) - len(kept)
        assert meta[split]["bytes"] == sum(len(t.encode("utf-8")) for t in kept)
        # Splitting at <|bos|> gives back every document, in order, exactly.
        starts = np.flatnonzero(tokens == tok.bos_id)
        assert starts[0] == 0 and len(starts) == len(kept)
        bounds = list(starts) + [tokens.size]
        assert [tok.decode(tokens[a + 1:b].tolist()) for a, b in zip(bounds, bounds[1:])] == kept
    assert (rd / "tokenizer" / "hf" / "tokenizer.json").exists()
    assert (rd / result.artifacts["plot_merges"]).exists()
    assert "bytes/token" in result.report and "Longest tokens" in result.report
    assert result.metrics["bytes_per_token_code"] > 1.5


def test_stage_reuses_tokenizer_on_rerun_and_retrains_on_change(ctx, tmp_path):
    cfg = Config(vocab_size=350, num_workers=1, eval_chars=1000, export_hf=False)
    run(ctx, cfg)
    tok_path = ctx.run.path / "tokenizer" / "tokenizer.json"
    first = tok_path.read_bytes()
    again = run(_ctx(tmp_path), cfg)
    assert "reused" in again.report and tok_path.read_bytes() == first
    run(_ctx(tmp_path), Config(vocab_size=360, num_workers=1, eval_chars=1000, export_hf=False))
    assert Tokenizer.load(tok_path).vocab_size == 360


def test_stage_char_mode(ctx):
    result = run(ctx, Config(vocab_size=700, mode="char", num_workers=1, eval_chars=2000, export_hf=False))
    assert result.metrics["backend"] == "python" and result.metrics["vocab_size"] == 700


def test_stage_errors_name_file_and_line(tmp_path):
    data = tmp_path / "run" / "data"
    _write_jsonl(data / "val.jsonl", ["ok"])
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        run(_ctx(tmp_path), Config(vocab_size=300, num_workers=1))
    (data / "train.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.jsonl line 2: field 'text' missing"):
        run(_ctx(tmp_path), Config(vocab_size=300, num_workers=1))


def test_stage_rejects_empty_training_text(tmp_path):
    _write_jsonl(tmp_path / "run" / "data" / "train.jsonl", ["", ""])
    _write_jsonl(tmp_path / "run" / "data" / "val.jsonl", ["x"])
    with pytest.raises(ValueError, match="no text to train"):
        run(_ctx(tmp_path), Config(vocab_size=300, num_workers=1))
