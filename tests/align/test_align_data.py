"""Chat / preference dataset loading: format conversion, strict errors with file:line, masks, packing."""

from __future__ import annotations

import json

import pytest

from lmstack.align.data import (IGNORE_INDEX, DatasetError, TokenizedChat, collate_lm, collate_pairs, load_chat_jsonl,
                                load_preferences_jsonl, normalize_chat_record, normalize_preference_record,
                                pack_examples, tokenize_chat, tokenize_pair)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    from lmstack.tokenizer import train_tokenizer

    texts = ["What is two plus two? Four. Hello there, how are you today?", "你好，世界。今天天气很好。"] * 20
    return train_tokenizer(texts, 300, progress=False)


def test_three_chat_formats_convert_to_messages(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}], "task": "greet"},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Say hi", "output": "hi", "system": "Be nice."},
    ]
    exs = load_chat_jsonl(write_jsonl(tmp_path / "chat.jsonl", rows + [""]))  # blank lines are fine
    assert [m["role"] for m in exs[0].messages] == ["system", "user", "assistant"] and exs[0].meta == {"task": "greet"}
    assert exs[1].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert exs[2].messages == [{"role": "user", "content": "Translate to French\n\ncat"},
                               {"role": "assistant", "content": "chat"}]
    assert exs[3].messages[0] == {"role": "system", "content": "Be nice."}


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant message"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "role='robot'"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "content must be a string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}]},
     "only the first message"),
    ({"conversations": [{"from": "alien", "value": "Hi"}]}, "from='alien'"),
    ({"conversations": [{"speaker": "human", "text": "Hi"}]}, "'from' and 'value'"),
    ({"instruction": "x"}, "string 'output'"),
    ({"text": "plain"}, "unknown chat format"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_chat_records_name_the_problem(record, message):
    with pytest.raises(DatasetError, match=message) as e:
        normalize_chat_record(record, "f.jsonl:7")
    assert str(e.value).startswith("f.jsonl:7:")


def test_errors_carry_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, "{not json", {"instruction": "c", "output": "d"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: invalid JSON"):
        load_chat_jsonl(path)
    path = write_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DatasetError, match=r"bad2\.jsonl:2: field 'rejected' missing"):
        load_preferences_jsonl(path)
    with pytest.raises(FileNotFoundError):
        load_chat_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no records"):
        load_chat_jsonl(write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_preference_formats():
    p = normalize_preference_record({"prompt": "Q?", "chosen": "yes", "rejected": "no", "category": "honest"}, "x:1")
    assert p.prompt == [{"role": "user", "content": "Q?"}] and p.chosen == "yes" and p.meta == {"category": "honest"}
    conv = normalize_preference_record({
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]}, "x:2")
    assert conv.prompt[0]["role"] == "system" and conv.rejected == "no"
    implicit = normalize_preference_record({
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "no"}]}, "x:3")
    assert implicit.prompt == [{"role": "user", "content": "Q?"}] and implicit.chosen == "yes"
    with pytest.raises(DatasetError, match="identical"):
        normalize_preference_record({"prompt": "Q", "chosen": "a", "rejected": "a"}, "x:4")
    with pytest.raises(DatasetError, match="share all messages"):
        normalize_preference_record({"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "y"}],
                                     "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "n"}]}, "x:5")
    with pytest.raises(DatasetError, match="must not end with an assistant"):
        normalize_preference_record({"prompt": [{"role": "assistant", "content": "A"}], "chosen": "y", "rejected": "n"}, "x:6")


def test_assistant_only_labels_multi_turn(tok):
    msgs = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "how are you"}]
    t = tokenize_chat(tok, msgs, max_len=200)
    ids, mask = tok.encode_chat(msgs)
    assert t.input_ids == ids
    assert [l != IGNORE_INDEX for l in t.labels] == [bool(m) for m in mask]
    learned = tok.decode([l for l in t.labels if l != IGNORE_INDEX])
    assert learned == "Four.<|end|>how are you<|end|>"  # both assistant turns and their <|end|>, nothing else
    batch = collate_lm([t, tokenize_chat(tok, msgs[:2], 200)], tok.pad_id)
    assert batch["input_ids"].shape == batch["targets"].shape
    assert batch["targets"][0, 0].item() == t.labels[1]  # targets are shifted by one
    assert tokenize_chat(tok, msgs, max_len=4) is None  # truncation left no assistant token: caller counts it


def test_packing_keeps_examples_whole(tok):
    exs = [TokenizedChat(list(range(n)), [IGNORE_INDEX] + list(range(1, n))) for n in (5, 7, 3, 9, 2)]
    packed = pack_examples(exs, seq_len=10, pad_id=0)
    assert all(len(p.input_ids) <= 10 for p in packed)
    assert sum(len(p.input_ids) for p in packed) == 26
    assert len(packed) == 3  # 9 | 7+3 | 5+2 (first-fit decreasing)
    # each example after the first in a window does not learn to predict its own first token
    second = next(p for p in packed if len(p.input_ids) == 10)
    assert second.labels[7] == IGNORE_INDEX


def test_pairs_share_the_prompt_and_mark_the_answer(tok):
    pair = normalize_preference_record({"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five hundred."}, "x:1")
    tp = tokenize_pair(tok, pair, max_len=100)
    assert tp.chosen_ids[: tp.prompt_len] == tp.rejected_ids[: tp.prompt_len]
    assert tok.decode(tp.chosen_ids[tp.prompt_len:]) == "Four.<|end|>"
    b = collate_pairs([tp, tp], tok.pad_id)
    assert b["input_ids"].shape[0] == 4
    assert b["completion_mask"][0].sum().item() == len(tp.chosen_ids) - tp.prompt_len
    assert b["lengths"].tolist() == [len(tp.chosen_ids)] * 2 + [len(tp.rejected_ids)] * 2
    assert tokenize_pair(tok, pair, max_len=tp.prompt_len) is None


def test_length_grouped_batches_cover_every_item_once_per_epoch():
    from lmstack.align.data import length_grouped_batches

    items = list(range(37))
    lengths = [(i * 7) % 23 for i in items]
    stream = length_grouped_batches(items, lengths, 4, seed=0, group_batches=3)
    n_batches = sum(1 for g in range(0, 37, 12) for _ in range(0, len(items[g:g + 12]), 4))
    epoch = [next(stream) for _ in range(n_batches)]
    assert sorted(i for b in epoch for i in b) == items
    # within a batch lengths are close: each batch comes from one sorted group of 12
    spread = max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch)
    assert spread < max(lengths) - min(lengths)
