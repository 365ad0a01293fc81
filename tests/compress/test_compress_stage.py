"""The compress stage through the pipeline, on a checkpoint outside any run (text_file mode)."""

import json

import torch

from lmstack import DATA_DIR
from lmstack.compress import load_compressed
from lmstack.model import ModelConfig, Transformer, save_pretrained
from lmstack.pipeline import Recipe, run_stage
from lmstack.runs import RunDir



def test_compress_stage_on_a_lone_checkpoint(tmp_path):
    from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

    text = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:40000]
    tok = train_tokenizer([text], 300, special_tokens=list(SPECIAL_TOKENS), progress=False)
    tok.save(tmp_path / "tokenizer.json")
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=64)
    save_pretrained(Transformer(cfg), tmp_path / "ckpt")
    recipe = Recipe.load(None, raw={"run": {"stages": ["compress"], "device": "cpu"}, "compress": {
        "init_from": str(tmp_path / "ckpt"), "text_file": str(tmp_path / "text.txt"),
        "tokenizer": str(tmp_path / "tokenizer.json"), "quantize": "gptq", "bits": 4, "group_size": 32,
        "calib_samples": 8, "eval_windows": 4, "compare": ["quantize=rtn", "prune=sparsegpt,n_m=2:4"]}})
    run = RunDir(tmp_path / "run")
    result = run_stage(run, recipe, "compress")
    assert result.metrics["method"] == "gptq w4 g32"
    assert result.metrics["file_bytes"] < result.metrics["fp32_file_bytes"]
    assert result.metrics["bits_per_weight"] == 4.75  # 4-bit codes + fp16 scale and 8-bit zero per 32
    for label in ("| fp32 |", "| gptq w4 g32 |", "| rtn w4 g32 |", "| sparsegpt 2:4 |"):
        assert label in result.report
    assert (run.path / result.artifacts["plot"]).exists()
    model = load_compressed(run.path / result.artifacts["checkpoint"])
    assert sum(getattr(m, "is_quantized_linear", False) for m in model.modules()) == 14
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["stages"]["compress"]["status"] == "done"


def test_distill_stage_writes_student_and_baseline(tmp_path):
    import numpy as np

    from lmstack.data.shards import write_tokens
    from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

    text = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30000]
    tok = train_tokenizer([text], 300, special_tokens=list(SPECIAL_TOKENS), progress=False)
    run = RunDir(tmp_path / "run")
    tok.save(run.sub("tokenizer") / "tokenizer.json")
    ids = np.array(tok.encode(text), dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    write_tokens(run.sub("shards") / "train.bin", ids[:cut])
    write_tokens(run.sub("shards") / "val.bin", ids[cut:])
    (run.path / "shards" / "meta.json").write_text(json.dumps({"val": {"tokens": int(len(ids) - cut), "bytes": 3000}}))
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=64)
    save_pretrained(Transformer(cfg), run.sub("checkpoints") / "pretrain")
    recipe = Recipe.load(None, raw={"run": {"stages": ["distill"], "device": "cpu"},
                                    "distill": {"steps": 5, "batch_size": 2, "eval_windows": 2, "draft_prompts": 1,
                                                "draft_tokens": 4}})
    result = run_stage(run, recipe, "distill")
    assert {"student_ppl", "baseline_ppl", "draft_acceptance"} <= set(result.metrics)
    student = load_compressed(run.path / result.artifacts["checkpoint"])
    assert student.config.d_model == 32 and student.config.n_layers == 1
    assert "| no teacher |" in result.report and "| logit KD |" in result.report
