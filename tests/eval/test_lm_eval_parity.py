"""Parity with lm-evaluation-harness: the same multiple-choice task, the same weights, the same numbers.

A tiny random llama-style model and a tiny BPE tokenizer are exported to the HF format
(``lmstack.model.hf.export_hf``); lm-eval's ``simple_evaluate`` runs a local YAML task over our JSONL
(``dataset_path: json``, no hub download) with ``HFLM(add_bos_token=True)``, and ``lmstack.eval`` runs the
same task on the lmstack model. Accuracies must be equal and every choice's log-likelihood within 1e-4.
"""

import json
import os

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lmstack.eval.backends import LocalBackend  # noqa: E402
from lmstack.eval.harness import evaluate_task  # noqa: E402
from lmstack.eval.tasks import load_task_file  # noqa: E402
from lmstack.model import ModelConfig, Transformer  # noqa: E402
from lmstack.model.hf import export_hf  # noqa: E402
from lmstack.tokenizer import add_bos_post_processor, train_tokenizer  # noqa: E402

TEXT = ("The king of Valmora rode north. The queen stayed in the city. Bread and wine for the guards. "
        "A storm came over the hills, and the river rose. Who keeps the keys of the tower? ") * 20
DOCS = [
    {"context": "The king of Valmora rode", "choices": ["north", "south", "to the sea", "home"], "gold": 0},
    {"context": "The queen stayed in the", "choices": ["city", "tower", "river"], "gold": 0},
    {"context": "Bread and wine for the", "choices": ["guards", "king", "horses", "hills"], "gold": 0},
    {"context": "A storm came over the", "choices": ["sea", "hills", "walls"], "gold": 1},
    {"context": "Who keeps the keys of the", "choices": ["city", "gate", "tower"], "gold": 2},
    {"context": "and the river", "choices": ["rose", "fell quietly", "ran"], "gold": 0},
    {"context": "The city", "choices": ["of Valmora", "slept", "burned down"], "gold": 1},
    {"context": "Keys", "choices": ["of the tower", "and bread", "storm"], "gold": 0},
]
TASK_TOML = """
[[task]]
name = "parity_mc"
type = "multiple_choice"
data = "parity.jsonl"
template = "{context}"
choices = "choices"
gold = "gold"
"""
TASK_YAML = """task: parity_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_multiple_choice_matches_lm_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    tok = train_tokenizer([TEXT], 300, progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4,
                             n_kv_heads=2, max_seq_len=64, init_std=0.2, tie_embeddings=False)
    model = Transformer(cfg).eval()
    (tmp_path / "parity.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    (tmp_path / "tasks.toml").write_text(TASK_TOML, encoding="utf-8")
    spec = load_task_file(tmp_path / "tasks.toml")[0]
    ours = evaluate_task(spec, LocalBackend(model, tok, batch_size=3))

    hf_dir = export_hf(model, tmp_path / "hf", tokenizer=tok)
    add_bos_post_processor(hf_dir)
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir()
    (task_dir / "parity_mc.yaml").write_text(TASK_YAML.format(data=tmp_path / "parity.jsonl"), encoding="utf-8")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hflm = HFLM(pretrained=str(hf_dir), tokenizer=str(hf_dir), device="cpu", batch_size=4, dtype="float32",
                add_bos_token=True)
    out = simple_evaluate(model=hflm, tasks=["parity_mc"], task_manager=TaskManager(include_path=str(task_dir)),
                          num_fewshot=0, log_samples=True, bootstrap_iters=0)
    theirs = out["results"]["parity_mc"]
    assert ours["metrics"]["acc"]["value"] == pytest.approx(theirs["acc,none"], abs=1e-12)
    assert ours["metrics"]["acc_norm"]["value"] == pytest.approx(theirs["acc_norm,none"], abs=1e-12)
    samples = sorted(out["samples"]["parity_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(DOCS)
    for item, sample in zip(ours["items"], samples):
        their_lls = [float(r[0]) for r in sample["filtered_resps"]]
        assert item["loglikelihoods"] == pytest.approx(their_lls, abs=1e-4)
    # the task must not be trivial: the random model gets some items wrong, so the comparison covers both
    assert 0 < sum(i["pred"] == i["gold"] for i in ours["items"]) < len(DOCS) or \
        len({i["pred"] for i in ours["items"]}) > 1
