"""Guardrails (PII masking while streaming, review by a reward model) and loading a run for serving."""

import json
import random

import pytest
import torch

from lmstack.align.reward import RewardModel, save_reward_model
from lmstack.data.pii import PIIMasker
from lmstack.model import save_pretrained
from lmstack.serve.cli import build_state, capacity_report
from lmstack.serve.guardrails import Guardrails, PIIRefused, Reviewer, StreamingPIIMasker
from test_generate_common import small_tokenizer, tiny_model

TEXTS = [
    "Call me on +86 138 1234 5678 or at 138-1234-5678 after five.",
    "我的电话是13812345678，身份证号是11010519491231002X，谢谢。",
    "Mail bob.smith@example.com, or ring (415) 555-0199; the server is 192.168.1.20.",
    "No personal data here, only the year 1999 and version 3.11.2 and 12 + 30 = 42.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_mask_equals_masking_the_whole_text(text):
    expected, _ = PIIMasker().mask(text)
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        m = StreamingPIIMasker(PIIMasker())
        out = "".join(m.push(p) for p in pieces) + m.push("", final=True)
        assert out == expected
    one_by_one = StreamingPIIMasker(PIIMasker())
    released = [one_by_one.push(ch) for ch in text]
    assert "".join(released) + one_by_one.push("", final=True) == expected
    assert expected.startswith("".join(released))  # what was released early never needed taking back


def test_request_pii_modes():
    text = "reach me at 13812345678"
    assert Guardrails(pii="mask").check_request(text, "x") == "reach me at <|phone|>"
    assert Guardrails(pii="off").check_request(text, "x") == text
    with pytest.raises(PIIRefused, match="phone"):
        Guardrails(pii="refuse").check_request(text, "messages[0].content")
    with pytest.raises(ValueError, match="pii mode"):
        Guardrails(pii="maybe")


def _fake_run(tmp_path, tok):
    """A run directory laid out like `lmstack run` writes it: tokenizer, an sft checkpoint, a reward model."""
    run = tmp_path / "myrun"
    (run / "tokenizer").mkdir(parents=True)
    tok.save(run / "tokenizer" / "tokenizer.json")
    save_pretrained(tiny_model(tok.vocab_size), run / "checkpoints" / "sft")
    torch.manual_seed(0)
    save_reward_model(RewardModel(tiny_model(tok.vocab_size, seed=3)), run / "checkpoints" / "reward")
    world = run / "data" / "world"
    world.mkdir(parents=True)
    pairs = [{"prompt": f"What is {a} plus {a}?", "chosen": f"It is {2 * a}.", "rejected": "No idea."}
             for a in range(12)]
    (world / "prefs_eval.jsonl").write_text("\n".join(json.dumps(p) for p in pairs), encoding="utf-8")
    return run


def test_reviewer_from_a_run_calibrates_and_blocks_below_threshold(tmp_path):
    tok = small_tokenizer()
    run = _fake_run(tmp_path, tok)
    rev = Reviewer.from_run(run, tok, threshold=None, quantile=0.5)
    msgs = [{"role": "user", "content": f"What is {a} plus {a}?"} for a in range(12)]
    scores = [rev.score([m], f"It is {2 * a}.") for a, m in enumerate(msgs)]
    assert rev.threshold == pytest.approx(float(torch.quantile(torch.tensor(scores), 0.5)), abs=1e-5)
    for m, a in zip(msgs, range(12)):
        blocked, s = rev.blocks([m], f"It is {2 * a}.")
        assert blocked == (s < rev.threshold)
    assert Reviewer.from_run(run, tok, threshold=-1e9).blocks(msgs[:1], "x")[0] is False
    assert Reviewer.from_run(tmp_path, tok, threshold=None) is None  # no reward model: no review
    guard = Guardrails(reviewer=Reviewer.from_run(run, tok, threshold=1e9))
    assert guard.review(msgs[:1], "anything") is False and guard.blocked == 1 and guard.reviewed == 1


def test_build_state_from_a_run_directory(tmp_path):
    tok = small_tokenizer()
    run = _fake_run(tmp_path, tok)
    state, ckpt = build_state(str(run), review_threshold=0.0)
    assert ckpt == run / "checkpoints" / "sft" and state.model_name == "myrun"
    assert state.guardrails.reviewer is not None and state.guardrails.reviewer.threshold == 0.0
    direct, _ = build_state(str(run / "checkpoints" / "sft"), review_threshold=0.5)
    assert direct.guardrails.reviewer.threshold == 0.5  # a checkpoint inside a run finds the run's reward model
    plain, _ = build_state(str(run), review=False, model_name="m")
    assert plain.guardrails.reviewer is None and plain.model_name == "m"
    sched = plain.engine.scheduler
    report = capacity_report(sched, 64)
    per_request = -(-64 // sched.pool.block_size)
    assert f"{sched.pool.n_blocks} blocks of 16 tokens" in report
    assert f"needs {per_request} blocks, so about {sched.pool.n_blocks // per_request} such requests" in report


def test_cli_help_and_a_missing_run(capsys):
    from lmstack.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--api-key" in capsys.readouterr().out
    assert main(["serve", "/no/such/run"]) == 2
    assert "no such run" in capsys.readouterr().err


def test_build_state_serves_rag_with_the_k_the_runs_apps_stage_trained_with(tmp_path):
    from lmstack.apps.store import DocumentStore

    tok = small_tokenizer()
    run = _fake_run(tmp_path, tok)
    store = DocumentStore()
    store.add_documents([{"id": "a", "text": "Li Wei was born in Valmora."}, {"id": "b", "text": "Paris is in France."}])
    index = store.save(tmp_path / "index")
    assert build_state(str(run), review=False, rag_index=str(index))[0].rag.k == 3  # no apps stage: 3
    (run / "manifest.json").write_text(json.dumps({"stages": {"apps": {"config": {"k": 1}}}}), encoding="utf-8")
    assert build_state(str(run), review=False, rag_index=str(index))[0].rag.k == 1
    assert build_state(str(run), review=False, rag_index=str(index), rag_k=2)[0].rag.k == 2
