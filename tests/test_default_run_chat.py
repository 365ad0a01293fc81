"""`lmstack chat` on the default run's SFT model, driven through a pseudo-terminal (slow).

Uses the run that `make run` leaves in runs/speedrun (or LMSTACK_DEFAULT_RUN); when it has no SFT
checkpoint yet, the default recipe is run first (about 8 minutes on 2 cores). Run it with
``pytest -m slow tests/test_default_run_chat.py``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run() -> Path:
    run = Path(os.environ.get("LMSTACK_DEFAULT_RUN", REPO / "runs" / "speedrun"))
    if not (run / "checkpoints" / "sft" / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "lmstack", "run", "--recipe", str(REPO / "recipes" / "cpu-speedrun.toml"),
                        "--run-dir", str(run)], check=True, cwd=REPO, timeout=1800)
    return run


class Terminal:
    """A child process on a pseudo-terminal: what it prints, as a user at a terminal would see it."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        env = dict(os.environ, PYTHONPATH=str(REPO), TERM="dumb")
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                                     close_fds=True)
        os.close(slave)
        self.buffer = ""

    def read_until(self, marker: str, timeout: float = 120.0) -> str:
        """Everything printed up to (and including) the next ``marker``."""
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout}s; the terminal shows:\n{self.buffer[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"the chat exited before {marker!r}; it printed:\n{self.buffer[-2000:]}")
                self.buffer += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode("utf-8"))

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def test_chat_on_the_default_sft_model_through_a_pty(default_run):
    from lmstack.generate import GenerationConfig, generate
    from lmstack.generate.cli import load_engine
    from lmstack.generate import chat_prompt_ids

    items = [json.loads(line) for line in (default_run / "data" / "world" / "sft_eval.jsonl").read_text("utf-8").splitlines()]
    questions = [it["messages"][1]["content"] for it in items if it["task"] == "fact_qa"][:4]
    assert len(questions) == 4

    term = Terminal([sys.executable, "-m", "lmstack", "chat", str(default_run), "--stage", "sft",
                     "--strategy", "greedy", "--max-new-tokens", "48"])
    answers = []
    try:
        banner = term.read_until("you> ")
        assert "checkpoints/sft" in banner and "strategy greedy" in banner
        for q in questions:
            term.send(q)
            shown = term.read_until("you> ")
            # the terminal echoes the question, then the streamed answer, then the stats line
            m = re.search(r"assistant> (.*?)\n\[(\d+) tokens(?:, first after [\d.]+ s(?:, then [\d.]+ tok/s)?| in [\d.]+ s), "
                          r"greedy, finish=(\w+)\]", shown, re.S)
            assert m, shown
            answers.append((m.group(1).strip(), int(m.group(2)), m.group(3)))
            term.send("/reset")
            assert "conversation cleared" in term.read_until("you> ")
        # a second turn sees the first one
        term.send(questions[0])
        term.read_until("you> ")
        term.send("Thanks. Say it again?")
        assert "assistant> " in term.read_until("you> ")
        # people who do not exist (held-out invented names): the unknown-entity gate answers, not the model (it
        # stops ~0.9 of such questions; the report measures the rate, this checks the terminal's side)
        world = json.loads((default_run / "data" / "world" / "world.json").read_text("utf-8"))
        shown_gated = []
        for person in world["unknown_people"]["eval"][:3]:
            term.send("/reset")
            term.read_until("you> ")
            term.send(f"Where was {person['name_en']} born?")
            shown = term.read_until("you> ")
            if "unknown-entity gate:" in shown:
                assert f"assistant> I don't know.\n[unknown-entity gate: '{person['name_en']}'" in shown, shown
                shown_gated.append(shown)
        assert shown_gated
        term.send("/set temperature=0.5")
        assert "temperature = 0.5" in term.read_until("you> ")
        term.send("/settings")
        assert "strategy = 'greedy'" in term.read_until("you> ")
        term.send("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()

    # The SFT model answers in the chat format: a non-empty reply that ends its own turn.
    for text, n_tokens, finish in answers:
        assert text and n_tokens > 0 and finish == "stop", answers
    # The chat CLI streams exactly what the library's generate() gives for the same chat prompt.
    engine, _ = load_engine(str(default_run), "sft", "cpu", GenerationConfig(strategy="greedy", max_new_tokens=48))
    for q, (text, _, _) in zip(questions, answers):
        ids = chat_prompt_ids(engine.tokenizer, [{"role": "user", "content": q}])
        want = generate(engine.model, engine.tokenizer, [ids], GenerationConfig(strategy="greedy", max_new_tokens=48))[0]
        assert text == want.text.strip()


def test_twenty_held_out_questions_through_chat_match_the_report(default_run):
    """20 held-out fact questions (10 English, 10 Chinese) typed into `lmstack chat`: the accuracy a user
    sees is within 0.1 of what the SFT stage's report measured on the same questions."""
    from lmstack.eval.answers import answer_matches
    from lmstack.runs import read_json

    recorded_path = default_run / "eval" / "sft_facts.jsonl"
    assert recorded_path.exists(), f"{recorded_path}: the sft stage writes it (facts_examples >= 0)"
    recorded = [json.loads(line) for line in recorded_path.read_text("utf-8").splitlines()]
    picked = [r for r in recorded if r["lang"] == "en"][:10] + [r for r in recorded if r["lang"] == "zh"][:10]
    assert len(picked) == 20
    metrics = read_json(default_run / "manifest.json")["stages"]["sft"]["metrics"]
    assert 0.0 <= metrics["facts_chat_accuracy"] <= 1.0

    # the model's own answers, as the report scored them (the unknown-entity gate is tested above)
    term = Terminal([sys.executable, "-m", "lmstack", "chat", str(default_run), "--stage", "sft",
                     "--strategy", "greedy", "--max-new-tokens", "32", "--gate", "off"])
    judged = []
    try:
        term.read_until("you> ")
        for item in picked:
            term.send(item["question"])
            shown = term.read_until("you> ")
            m = re.search(r"assistant> (.*?)\n\[\d+ tokens", shown, re.S)
            assert m, shown
            judged.append(answer_matches(m.group(1).strip(), item["answer"]))
            term.send("/reset")
            term.read_until("you> ")
        term.send("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    chat_accuracy = sum(judged) / len(judged)
    report_accuracy = sum(r["correct"] for r in picked) / len(picked)
    assert abs(chat_accuracy - report_accuracy) <= 0.1, (chat_accuracy, report_accuracy, judged)
