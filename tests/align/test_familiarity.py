"""The unknown-entity gate (lmstack.align.familiarity): the name tagger, the model's surprise at a name, the
threshold's calibration, saving, and the chat session that uses it."""

from __future__ import annotations

import io
import json
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmstack.align import familiarity as F
from lmstack.tokenizer import train_tokenizer
from align_tiny_run import build_tiny_run


FIRST = ["David", "Oscar", "Maria", "Julia", "Peter", "Anna", "Lucas", "Sara"]
LAST = ["Weber", "Walker", "Novak", "Keller", "Hansen", "Silva", "Turner", "Rossi"]
TEMPLATES = ["Where was {} born?", "What does {} do for work?", "Tell me the hobby of {}.", "{} lives in a city.",
             "Is {} a doctor?", "Which year was {} born in?"]


@pytest.fixture(scope="module")
def tok():
    texts = [t.format(f"{a} {b}") for t in TEMPLATES for a in FIRST for b in LAST] * 2
    texts += ["\u5f20\u4f1f\u662f\u54ea\u4e00\u5e74\u51fa\u751f\u7684\uff1f"] * 5  # some Chinese, so CJK bytes get tokens
    return train_tokenizer(texts, 400, progress=False)


def test_token_shapes_and_the_characters_of_split_tokens():
    assert F.token_shape(b" Weber") == "_upper" and F.token_shape(b"ing") == "lower"
    assert F.token_shape(b" 42") == "_digit" and F.token_shape("\u5f20".encode()) == "cjk"
    assert F.token_shape("\u5f20".encode()[:2]) == "frag" and F.token_shape(b"?") == "punct"
    # both pieces of a split character carry the whole character; a token spanning two carries both
    pieces = ["\u8c22".encode()[:1], "\u8c22".encode()[1:] + "\u654f".encode(), b" ab"]
    assert F._token_chars(pieces) == [("\u8c22", "^", "\u654f"), ("\u8c22\u654f", "^", " "), (" ab", "\u654f", "$")]


def test_name_labels_mark_every_token_that_overlaps_a_name(tok):
    text = "Where was Oscar Walker born?"
    ids = tok.encode(text)
    labels = F._name_labels(tok, text, ids, ["Oscar Walker"])
    named = "".join(tok.decode([t]) for t, lab in zip(ids, labels) if lab)
    assert named.strip() == "Oscar Walker"
    assert not any(F._name_labels(tok, text, ids, ["Julia Keller"]))


def test_the_tagger_finds_names_it_never_saw(tok):
    rng = random.Random(0)
    seen = [(a, b) for a in FIRST[:5] for b in LAST[:5]]
    examples = []
    for _ in range(300):
        name = " ".join(rng.choice(seen))
        text = rng.choice(TEMPLATES).format(name)
        ids = tok.encode(text)
        examples.append((ids, F._name_labels(tok, text, ids, [name])))
    tagger = F.NameTagger()
    assert tagger.fit(tok, examples, steps=150) > 0.95
    text = TEMPLATES[0].format("Lucas Rossi")  # first and last name outside the training names
    ids = tok.encode(text)
    probs = tagger.proba(tok, ids)
    truth = F._name_labels(tok, text, ids, ["Lucas Rossi"])
    assert min(p for p, t in zip(probs, truth) if t) > 0.5 > max(p for p, t in zip(probs, truth) if not t)


class BigramModel(nn.Module):
    """A 'language model' whose next-token logits depend on the current token only."""

    def __init__(self, vocab: int, known: dict[int, int]):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))
        with torch.no_grad():
            for a, b in known.items():
                self.table[a, b] = 20.0
        self.config = SimpleNamespace(max_seq_len=64, vocab_size=vocab)

    def forward(self, x):
        return SimpleNamespace(logits=self.table[x])


class CapitalTagger:
    """Tags the tokens of capitalised words (a stand-in for a trained tagger)."""

    def proba(self, tokenizer, ids):
        return [1.0 if tokenizer.decode([t]).strip()[:1].isupper() else 0.0 for t in ids]


def test_surprise_is_the_nll_of_a_name_after_its_first_token(tok):
    david, weber = tok.encode(" David")[-1], tok.encode(" Weber")[-1]
    model = BigramModel(tok.vocab_size, {david: weber}).eval()
    known = [{"role": "user", "content": "Where was David Weber born?"}]
    unknown = [{"role": "user", "content": "Where was David Walker born?"}]
    (s_known, name_known), (s_unknown, name_unknown) = F.name_surprise(model, tok, CapitalTagger(), [known, unknown])
    assert name_known.endswith("David Weber") and name_unknown.endswith("David Walker")
    assert s_known < 0.01 < 5.0 < s_unknown  # " Weber" is certain after " David"; " Walker" is not
    # the first token of a name never counts, and a message without a tagged name scores 0
    (s_alone, _), (s_none, span) = F.name_surprise(model, tok, CapitalTagger(),
                                                   [[{"role": "user", "content": "Where was Oscar born?"}],
                                                    [{"role": "user", "content": "where was it born?"}]])
    assert s_none == 0.0 and span == ""
    gate = F.FamiliarityGate(CapitalTagger(), threshold=3.0)
    assert [c[0] for c in gate.check(model, tok, [known, unknown])] == [False, True]
    assert gate.reply(unknown) == "I don't know." and gate.reply([{"role": "user", "content": "\u5f20\u4f1f\uff1f"}]) == "\u6211\u4e0d\u77e5\u9053\u3002"


def test_fit_gate_on_a_world_saves_and_loads(tmp_path):
    from lmstack.align import common

    root = build_tiny_run(tmp_path / "run")
    world_dir = root / "data" / "world"
    tok = common.load_tokenizer(root)
    model = common.load_model(root, "pretrain", "cpu", needed_by="test").eval()
    train = [json.loads(line) for line in (world_dir / "sft_train.jsonl").read_text("utf-8").splitlines()]
    gate, info = F.fit_gate(model, tok, world_dir, train, seed=0, keep=0.9, n_calibration=40, n_fresh=60)
    assert 0.85 <= info["gate_train_real_kept"] <= 1.0 and 0.0 <= info["gate_train_fresh_stopped"] <= 1.0
    assert info["tagger_messages"] > 60
    # the fresh names never reuse a name of the world, held-out invented names included
    world = json.loads((world_dir / "world.json").read_text("utf-8"))
    taken = {e[k] for e in world["unknown_people"]["eval"] + world["people"] for k in ("name_en", "name_zh")}
    from lmstack.data.world import load_world

    assert not taken & {n for _, names in F.fresh_questions(load_world(world_dir), 50, 1) for n in names}
    gate.save(tmp_path / "gate")
    loaded = F.FamiliarityGate.load(tmp_path / "gate")
    assert loaded.threshold == gate.threshold and loaded.min_prob == gate.min_prob
    conv = [[{"role": "user", "content": train[0]["messages"][-2]["content"]}]]
    assert loaded.check(model, tok, conv) == gate.check(model, tok, conv)
    with pytest.raises(ValueError, match="not a familiarity gate"):
        F.FamiliarityGate.load(tmp_path / "nothing")


def test_the_chat_session_answers_through_the_gate(tok):
    from lmstack.generate.cli import ChatSession

    class Gate:
        threshold = 3.0

        def check(self, model, tokenizer, conversations):
            return [(True, 9.5, "Oscar Walker")]

        reply = staticmethod(F.FamiliarityGate.reply)

    class NoModel:  # the gate answers without generating
        model, tokenizer = None, tok
        cfg = SimpleNamespace(max_new_tokens=8, strategy="greedy")

        def generate(self, *a, **k):
            raise AssertionError("the model was asked")

    out, err = io.StringIO(), io.StringIO()
    session = ChatSession(NoModel(), out, err, gate=Gate())
    session._fit_context = lambda: []
    assert session.reply("Where was Oscar Walker born?") == "I don't know."
    assert "I don't know." in out.getvalue() and "'Oscar Walker'" in err.getvalue() and "9.5" in err.getvalue()
    assert session.messages[-1] == {"role": "assistant", "content": "I don't know."}
