"""Eval helpers: bits per byte and few-shot fact accuracy."""

import json
import math

import pytest

from lmstack.eval.answers import answer_matches
from lmstack.eval.bpb import bits_per_byte, bytes_per_token_from_meta
from lmstack.eval.facts import build_few_shot_prompt, fact_accuracy, read_facts


def test_bits_per_byte_formula_and_meta(tmp_path):
    # 1 nat/token at 4 bytes/token = 1/ln2 bits over 4 bytes
    assert bits_per_byte(1.0, tokens_per_byte=0.25) == pytest.approx(1 / math.log(2) / 4)
    # Byte-level model: one token per byte -> bpb is just bits per token.
    assert bits_per_byte(math.log(2), tokens_per_byte=1.0) == pytest.approx(1.0)
    (tmp_path / "meta.json").write_text(json.dumps({"val": {"tokens": 100, "bytes": 350}}))
    assert bytes_per_token_from_meta(tmp_path / "meta.json") == 3.5
    (tmp_path / "bad.json").write_text(json.dumps({"train": {"tokens": 1, "bytes": 1}}))
    with pytest.raises(ValueError, match="field 'val'"):
        bytes_per_token_from_meta(tmp_path / "bad.json")


def test_answer_matching():
    assert answer_matches(" Paris.\nQuestion: next", "Paris")
    assert answer_matches("the paris", "Paris")
    assert not answer_matches(" Parisian", "Paris")
    assert not answer_matches(" Rome\nParis", "Paris")
    assert answer_matches("巴黎。", "巴黎") and answer_matches("巴黎市", "巴黎")
    assert not answer_matches("", "Paris")


def test_few_shot_prompt_uses_other_facts_of_same_language():
    import random
    pool = [{"prompt": f"Q{i}:", "answer": f"A{i}", "lang": "en", "fact": str(i)} for i in range(5)]
    pool.append({"prompt": "问", "answer": "答", "lang": "zh", "fact": "z"})
    text = build_few_shot_prompt(pool[0], pool, 3, random.Random(0))
    lines = text.split("\n")
    assert len(lines) == 4 and lines[-1] == "Q0:" and "A0" not in text and "答" not in text


def test_fact_accuracy_groups(monkeypatch, tmp_path):
    items = [{"prompt": "x", "question": "x?", "answer": "Paris", "lang": "en", "fact": "f1", "in_pretrain": True},
             {"prompt": "y", "question": "y?", "answer": "Rome", "lang": "en", "fact": "f2", "in_pretrain": True},
             {"prompt": "z", "question": "z?", "answer": "北京", "lang": "zh", "fact": "f3", "in_pretrain": False}]
    outputs = iter([" Paris", " Oslo", "北京"])

    class Gen:
        def __init__(self, text):
            self.text = text

    import lmstack.generate as gen_mod
    monkeypatch.setattr(gen_mod, "generate", lambda model, tok, prompts, cfg, batch_size=32: [Gen(next(outputs)) for _ in prompts])

    class Tok:
        bos_id = 1

        def encode(self, text):
            return [2] * len(text)

    res = fact_accuracy(object(), Tok(), items, shots=1)
    assert res["accuracy"]["all"] == pytest.approx(2 / 3)
    assert res["accuracy"]["in_pretrain"] == 0.5 and res["accuracy"]["not_in_pretrain"] == 1.0
    assert res["accuracy"]["lang=zh"] == 1.0 and res["counts"]["lang=en"] == 2


def test_read_facts_errors_name_file_and_line(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"facts.jsonl line 2: field 'answer'"):
        read_facts(p)


def test_validation_groups_split_world_prose_qa_and_code(tmp_path):
    from lmstack.data.world import WorldConfig, build_world
    from lmstack.eval.bpb import validation_groups

    world = build_world(WorldConfig(n_people=4, n_sft_only_people=1, n_cities=3, n_countries=3, bios_per_person=2,
                                    n_stories=2, n_geo_docs=1, n_quiz_docs=2, n_arith_docs=1, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=1,
                                    n_sft_train=4, n_sft_eval=4, n_prefs_train=3, n_prefs_eval=3,
                                    n_unknown_people=2, n_unknown_cities=2), seed=3)
    world.write(tmp_path / "data" / "world")
    docs = list(world.pretrain_docs())
    quiz = next(i for i, d in enumerate(docs) if d["kind"] == "quiz")
    bio = next(i for i, d in enumerate(docs) if d["kind"] == "bio")
    rows = [{"text": docs[quiz]["text"], "source": "world", "id": f"world:{quiz}", "kind": "prose"},
            {"text": docs[bio]["text"], "source": "world", "id": f"world:{bio}", "kind": "prose"},
            {"text": "def f():\n    return 1\n", "source": "stdlib", "id": "os.py", "kind": "code"}]
    (tmp_path / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = validation_groups(tmp_path)
    assert groups == {"stdlib (code)": [rows[2]["text"]], "world QA": [rows[0]["text"]],
                      "world prose": [rows[1]["text"]]}


def test_model_bits_per_byte_of_a_uniform_model_is_log2_vocab_per_byte():
    import torch

    from lmstack.eval.bpb import encode_group, model_bits_per_byte

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            return type("Out", (), {"logits": torch.zeros(*ids.shape, 64) + self.w})()

    class Chars:
        bos_id = 0

        def encode(self, text):
            return [1 + ord(c) % 63 for c in text]

    ids, n_bytes = encode_group(Chars(), ["abcdef", "ghij", "klmnopq"], max_tokens=13)
    assert len(ids) == 12 and n_bytes == 10  # the third document would pass 13 tokens
    loss, bpb = model_bits_per_byte(Uniform(), ids, n_bytes, seq_len=5, batch_size=2)
    assert loss == pytest.approx(math.log(64))
    assert bpb == pytest.approx(6.0 * (len(ids) - 1) / n_bytes)


@pytest.mark.parametrize("hyp,ref", [("the cat sat on the mat", "the cat is on the mat"), ("猫在垫子上", "猫坐在垫子上"),
                                     ("abc", "xyz"), ("a", "abc"), ("我爱北京", "我爱北京"),
                                     ("Li Wei likes tea.", "Li Wei likes green tea.")])
def test_chrf_matches_sacrebleu(hyp, ref):
    sacrebleu = pytest.importorskip("sacrebleu")
    from lmstack.eval.answers import chrf

    assert chrf(hyp, ref) * 100 == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref]).score, abs=1e-6)


def test_scoring_counts_false_refusals_and_translation_exact_match():
    from lmstack.eval.scoring import score_outputs

    conv = lambda q: [{"role": "user", "content": q}, {"role": "assistant", "content": "ref"}]  # noqa: E731
    examples = [{"messages": conv("Where was Li Wei born?"), "task": "fact_qa", "answer": "Valmora"},
                {"messages": conv("What is Li Wei's job?"), "task": "fact_qa", "answer": "teacher"},
                {"messages": conv("Li Wei's phone number?"), "task": "refuse_pii", "answer": None},
                {"messages": conv("Who is Zed Quux?"), "task": "idk", "answer": None},
                {"messages": conv("Translate: 猫"), "task": "translate", "answer": "The cat."},
                {"messages": conv("Translate: 狗"), "task": "translate", "answer": "The dog."}]
    outputs = ["Li Wei was born in Valmora.", "Sorry, I can't share private information about Li Wei.",
               "I can't give out phone numbers.", "I don't know who Zed Quux is.", "the cat", "The dot."]
    r = score_outputs(examples, outputs)
    assert r["by_task"]["fact_qa"] == {"n": 2, "metric": "answer match", "value": 0.5}
    assert r["false_refusal"] == 0.5 and r["false_idk"] == 0.0 and r["n"]["false_refusal"] == 2
    assert r["pii_refusal"] == 1.0 and r["idk_rate"] == 1.0
    assert r["translate_exact"] == 0.5 and 0.3 < r["translate_chrf"] < 1.0
    assert {s[0] for s in r["samples"]} == {"fact_qa", "refuse_pii", "idk", "translate"}


def test_negative_numeric_answers_keep_their_sign():
    from lmstack.eval.answers import answer_matches
    assert answer_matches("The answer is -127.", "-127")
    assert not answer_matches("The answer is 127.", "-127")
    assert not answer_matches("The answer is -127.", "127")
    assert answer_matches("12 - 139 = -127", "-127") and answer_matches("1,234", "1234")
