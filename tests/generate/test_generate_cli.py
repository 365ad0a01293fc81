"""`lmstack chat` / `lmstack generate` on a small saved model, driven through stdin."""

import io
import os
import subprocess
import sys

import pytest

from lmstack import REPO_ROOT
from lmstack.generate.cli import CheckpointError, chat_main, generate_main, rate_summary, resolve_checkpoint
from lmstack.model import save_pretrained
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    tok = small_tokenizer()
    (run / "tokenizer").mkdir()
    tok.save(run / "tokenizer" / "tokenizer.json")
    save_pretrained(tiny_model(tok.vocab_size, seed=0), run / "checkpoints" / "pretrain")
    save_pretrained(tiny_model(tok.vocab_size, seed=1), run / "checkpoints" / "sft")
    return run


def test_resolve_checkpoint_prefers_latest_stage(run_dir, tmp_path):
    ckpt, tok = resolve_checkpoint(run_dir)
    assert ckpt == run_dir / "checkpoints" / "sft" and tok == run_dir / "tokenizer" / "tokenizer.json"
    assert resolve_checkpoint(run_dir, "pretrain")[0] == run_dir / "checkpoints" / "pretrain"
    assert resolve_checkpoint(run_dir / "checkpoints" / "pretrain")[1] == tok  # tokenizer found in the run
    with pytest.raises(CheckpointError, match="no model.safetensors for stage 'dpo'"):
        resolve_checkpoint(run_dir, "dpo")
    with pytest.raises(CheckpointError, match="neither a run directory"):
        resolve_checkpoint(tmp_path)


def _chat(monkeypatch, capsys, argv, lines):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(l + "\n" for l in lines)))
    rc = chat_main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_chat_multi_turn_with_slash_commands(run_dir, monkeypatch, capsys):
    lines = ["/help", "/strategy greedy", "/set max_new_tokens=8", "/set ignore_eos=true", "/set top_p=7",
             "/set nonsense=1", "hello there", "/settings", "and again?", "/reset", "/strategy beam",
             "/set num_beams=2", "hi", "/quit", "never read"]
    rc, out, err = _chat(monkeypatch, capsys, [str(run_dir)], lines)
    assert rc == 0
    assert "/strategy NAME" in out  # help
    assert "strategy = 'greedy'" in out and "max_new_tokens = 8" in out
    assert "error: " in out and "top_p" in out  # a bad value is refused with the reason
    assert "unknown setting 'nonsense'" in out
    assert out.count("assistant> ") == 3
    assert err.count("finish=") == 3 and "finish=length" in err
    assert "(conversation cleared)" in out
    assert "never read" not in out


def test_chat_second_turn_sees_the_first(run_dir, monkeypatch, capsys):
    # The reply to turn 2 must equal chat() on the full two-turn conversation (template + history kept).
    from lmstack.generate import GenerationConfig, chat
    from lmstack.model import load_pretrained

    rc, out, _ = _chat(monkeypatch, capsys, [str(run_dir), "--strategy", "greedy", "--max-new-tokens", "6",
                                            "--set", "ignore_eos=true"], ["first", "second"])
    assert rc == 0
    replies = [seg.split("\n")[0] for seg in out.split("assistant> ")[1:]]
    tok = small_tokenizer()
    model = load_pretrained(run_dir / "checkpoints" / "sft")
    cfg = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    first = chat(model, tok, [[{"role": "user", "content": "first"}]], cfg)[0].text
    second = chat(model, tok, [[{"role": "user", "content": "first"}, {"role": "assistant", "content": first},
                                {"role": "user", "content": "second"}]], cfg)[0].text
    assert replies[0] == first.split("\n")[0] and replies[1] == second.split("\n")[0]


def test_chat_bad_path_is_an_error_not_a_traceback(tmp_path, capsys):
    assert chat_main([str(tmp_path / "missing")]) == 2
    assert "no such run or checkpoint directory" in capsys.readouterr().err


def test_generate_main_json(run_dir, capsys):
    rc = generate_main([str(run_dir), "--prompt", "ROMEO:", "--prompt", "JULIET:", "--json", "--max-new-tokens", "5",
                        "--set", "ignore_eos=true"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 2 and '"finish_reason": "length"' in out[0] and '"tokens": 5' in out[1]


def test_lmstack_chat_subprocess_stdin(run_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lmstack", "chat", str(run_dir), "--max-new-tokens", "5"],
                          input="hello\n/settings\n/quit\n", capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "you> hello" in proc.stdout and "assistant> " in proc.stdout and "tok/s" in proc.stderr
    assert "strategy = 'sample'" in proc.stdout


def _truncate(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def test_chat_on_a_truncated_checkpoint_prints_one_line(run_dir, tmp_path, capsys):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    _truncate(copy / "checkpoints" / "sft" / "model.safetensors")
    assert chat_main([str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sft/model.safetensors: unreadable" in err[0] and "Traceback" not in err[0]


def test_rate_summary_separates_first_token_latency():
    assert rate_summary(4, 0.0, 2.0, 2.1) == "4 tokens, first after 2.00 s, then 30.0 tok/s"
    assert rate_summary(0, 0.0, None, 1.0) == "0 tokens in 1.00 s"
    assert rate_summary(1, 0.0, 0.5, 0.5) == "1 tokens, first after 0.50 s"
