"""Tokenizer behaviour: round trips, special tokens, chat template, streaming decode, I/O and
agreement with the peers (tiktoken core, HF tokenizers after export)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmstack import DATA_DIR
from lmstack.tokenizer import (ASSISTANT, BOS, END, SPECIAL_TOKENS, SYSTEM, USER, Tokenizer, build_pattern,
                               export_hf, export_tiktoken, load_tiktoken, train_tokenizer)
from lmstack.tokenizer.pretokenize import PATTERN_NAMES, split_text

HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def corpus_samples() -> dict[str, str]:
    """English, Chinese and code samples; the stdlib is always there, the shared corpora may not be."""
    out = {"code": Path(json.__file__).with_name("decoder.py").read_text(encoding="utf-8")
           + Path(random.__file__).read_text(encoding="utf-8")[:20_000]}
    en = DATA_DIR / "en" / "tinyshakespeare.txt"
    if en.exists():
        out["en"] = en.read_text(encoding="utf-8")[:60_000]
    zh = DATA_DIR / "zh" / "poetry.jsonl"
    if zh.exists():
        with zh.open(encoding="utf-8") as f:
            out["zh"] = "\n".join(json.loads(next(f))["text"] for _ in range(300))
    return out


def heldout_samples() -> dict[str, str]:
    out = {"code": Path(json.__file__).with_name("encoder.py").read_text(encoding="utf-8"),
           "mixed": "def f(x_1, y):  # 中文注释 with English, 12345678 + 0.5\n\treturn x_1**2 \r\n\n  é ü ß 😀 \x00 ",
           }
    en = DATA_DIR / "en" / "tinyshakespeare.txt"
    if en.exists():
        out["en"] = en.read_text(encoding="utf-8")[-20_000:]
    zh = DATA_DIR / "zh" / "poetry.jsonl"
    if zh.exists():
        lines = zh.read_text(encoding="utf-8").splitlines()[-200:]
        out["zh"] = "\n".join(json.loads(line)["text"] for line in lines)
    return out


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    return train_tokenizer(list(corpus_samples().values()), 1200, mode="byte", progress=False)


@pytest.fixture(scope="module")
def char_tok() -> Tokenizer:
    return train_tokenizer(list(corpus_samples().values()), 1500, mode="char", progress=False)


@pytest.fixture(params=["byte", "char"])
def tok(request, byte_tok, char_tok) -> Tokenizer:
    return byte_tok if request.param == "byte" else char_tok


# ------------------------------------------------------------------ round trips

@HYPO
@given(text=st.text(max_size=200))
def test_roundtrip_random_unicode(tok, text):
    # Surrogates cannot be UTF-8 encoded; everything else must survive.
    text = text.encode("utf-8", "replace").decode("utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.n_regular for i in ids)


@HYPO
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_tiktoken_core_equals_python_reference(byte_tok, text):
    assert byte_tok.backend == "tiktoken"
    assert byte_tok.encode_ordinary(text) == byte_tok.encode_ordinary_python(text)


@HYPO
@given(data=st.binary(max_size=200), cut=st.integers(min_value=0, max_value=200))
def test_random_bytes_decode_and_stream(tok, data, cut):
    ids = [tok.byte_ids[b] for b in data]
    assert tok.decode_bytes(ids) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")
    stream = tok.decode_stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == data.decode("utf-8", errors="replace")
    # Valid UTF-8 bytes re-encode to the same bytes whatever the tokenization.
    text = data.decode("utf-8", errors="ignore")
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_stream_decoder_never_emits_partial_characters(byte_tok):
    text = heldout_samples()["mixed"] + "床前明月光，疑是地上霜。😀👍🏽"
    ids = byte_tok.encode(text)
    assert len(ids) < len(text.encode("utf-8"))  # merges happened, yet some tokens split characters
    stream = byte_tok.decode_stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text
    assert "\ufffd" not in "".join(pieces)
    # A character whose bytes arrive one token at a time is emitted once, when complete.
    emoji = [byte_tok.byte_ids[b] for b in "😀".encode("utf-8")]
    s = byte_tok.decode_stream()
    assert [s.push(i) for i in emoji] == ["", "", "", "😀"]
    # A truncated character at the end becomes one replacement character on flush.
    s = byte_tok.decode_stream()
    assert s.push(emoji[0]) + s.push(emoji[1]) == "" and s.flush() == "\ufffd"


def test_char_mode_uses_byte_fallback_for_rare_characters(char_tok):
    rare = "\U0001F600\u16A0"  # emoji and a runic letter: not in the training alphabet
    assert all(ch not in char_tok.alphabet for ch in rare)
    ids = char_tok.encode(rare)
    assert ids == [char_tok.byte_ids[b] for b in rare.encode("utf-8")]
    assert char_tok.decode(ids) == rare
    assert char_tok.backend == "python"


# ------------------------------------------------------------------ pre-tokenization

@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=200), name=st.sampled_from(PATTERN_NAMES))
def test_patterns_cover_the_text(text, name):
    assert "".join(split_text(text, build_pattern(name))) == text


def test_default_pattern_splits_han_and_digit_groups():
    chunks = split_text("中文English混合，明月光 x=1234567", build_pattern("lmstack", 3))
    assert chunks[:5] == ["中文", "English", "混合", "，", "明月光"]
    assert chunks[-3:] == ["123", "456", "7"]
    gpt4 = split_text("中文English混合，明月光", build_pattern("gpt4"))
    assert gpt4[0] == "中文English混合"  # the behaviour the lmstack pattern fixes
    assert split_text("    return x", build_pattern())[:2] == ["   ", " return"]


def test_hanchar_pattern_keeps_every_han_character_apart(tmp_path):
    """lmstack_hanchar: no token spans two Han characters (with the lmstack pattern, BPE learns words
    and phrases), and the tiktoken core and an HF export encode as the Python reference does."""
    han2 = regex.compile(r"\p{Han}.*\p{Han}")
    texts = list(corpus_samples().values())
    spans = {}
    for name in ("lmstack", "lmstack_hanchar"):
        t = train_tokenizer(texts, 1200, mode="byte", pattern=name, progress=False)
        spans[name] = [i for i in range(t.n_regular) if han2.search(t.token_bytes(i).decode("utf-8", "replace"))]
    assert spans["lmstack"] and not spans["lmstack_hanchar"]
    assert split_text("张嘉娜的工作，中文English", build_pattern("lmstack_hanchar"))[:5] == ["张", "嘉", "娜", "的", "工"]
    text = heldout_samples().get("zh", "") + "中文English混合，明月光"
    assert t.encode_ordinary(text) == t.encode_ordinary_python(text)
    tokenizers = pytest.importorskip("tokenizers")
    assert tokenizers.Tokenizer.from_file(str(export_hf(t, tmp_path / "hf"))).encode(text).ids == t.encode_ordinary(text)


def test_bad_pattern_names_are_rejected():
    with pytest.raises(ValueError, match="unknown pre-tokenization pattern"):
        build_pattern("gtp4")
    with pytest.raises(ValueError, match="not a valid regex"):
        build_pattern(r"(\p{L}+")


# ------------------------------------------------------------------ special tokens

def test_special_tokens_are_not_injected_from_plain_text(tok):
    text = "".join(SPECIAL_TOKENS) + " hi <|bos|>"
    ids = tok.encode(text)
    assert all(i < tok.n_regular for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_ordinary(text) == ids


@HYPO
@given(parts=st.lists(st.one_of(st.text(max_size=20), st.sampled_from(SPECIAL_TOKENS)), max_size=8))
def test_allowed_special_tokens_are_single_ids_and_never_split(tok, parts):
    parts = [p.encode("utf-8", "replace").decode("utf-8") for p in parts]
    text = "".join(parts)
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    specials = [i for i in ids if i >= tok.n_regular]
    # Every special string present becomes exactly one id, whatever surrounds it.
    expected = [tok.special_tokens[s] for s in tok._special_splitter(frozenset(SPECIAL_TOKENS)).findall(text)]
    assert specials == expected
    # Tokens never straddle a special token: the pieces between them encode independently.
    pieces = tok._special_splitter(frozenset(SPECIAL_TOKENS)).split(text)
    rebuilt = []
    for k, piece in enumerate(pieces):
        rebuilt += [tok.special_tokens[piece]] if k % 2 else tok.encode(piece)
    assert ids == rebuilt


def test_allowed_special_subset_and_errors(byte_tok):
    ids = byte_tok.encode("<|bos|>x<|eos|>", allowed_special={"<|bos|>"})
    assert ids[0] == byte_tok.bos_id and byte_tok.eos_id not in ids
    with pytest.raises(ValueError, match="unknown special"):
        byte_tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="'all'"):
        byte_tok.encode("x", allowed_special="none")
    assert byte_tok.vocab_size == 1200 and byte_tok.special_tokens[SPECIAL_TOKENS[-1]] == 1199


# ------------------------------------------------------------------ chat template

def test_chat_template_ids_and_assistant_mask_are_exact(tok):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who wrote 静夜思?"},
            {"role": "assistant", "content": "Li Bai."},
            {"role": "user", "content": "And <|end|> this?"},
            {"role": "assistant", "content": "李白。"}]
    ids, mask = tok.encode_chat(msgs)
    sp = tok.special_tokens
    expected_ids, expected_mask = [sp[BOS]], [0]
    for m in msgs:
        body = tok.encode(m["content"])
        is_asst = int(m["role"] == "assistant")
        expected_ids += [sp[{"system": SYSTEM, "user": USER, "assistant": ASSISTANT}[m["role"]]]] + body + [sp[END]]
        expected_mask += [0] + [is_asst] * len(body) + [is_asst]
    assert ids == expected_ids and mask == expected_mask
    # The masked tokens decode to exactly the assistant replies, each closed by <|end|>.
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Li Bai.<|end|>李白。<|end|>"
    # The user's literal "<|end|>" is plain text: exactly one <|end|> id per message.
    assert ids.count(sp[END]) == len(msgs)
    assert tok.decode(ids) == tok.render_chat(msgs)


def test_chat_generation_prompt(byte_tok):
    msgs = [{"role": "user", "content": "hi"}]
    ids, mask = byte_tok.encode_chat(msgs, add_generation_prompt=True)
    assert ids[-1] == byte_tok.special_tokens[ASSISTANT] and mask == [0] * len(ids)
    assert byte_tok.decode(ids) == "<|bos|><|user|>hi<|end|><|assistant|>"
    assert set(byte_tok.stop_ids) == {byte_tok.end_id, byte_tok.eos_id}


def test_chat_rejects_bad_messages(byte_tok):
    with pytest.raises(ValueError, match="message 1: role 'tool'"):
        byte_tok.encode_chat([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(ValueError, match="message 0 .user.: 'content' must be a string"):
        byte_tok.encode_chat([{"role": "user", "content": None}])


# ------------------------------------------------------------------ batch encoding

def test_encode_batch_matches_single(tok):
    texts = list(heldout_samples().values()) * 3
    assert tok.encode_batch(texts, num_workers=2) == [tok.encode(t) for t in texts]
    # Large enough for the pure-Python path to use its process pool.
    big = [heldout_samples()["code"]] * 20
    assert tok.encode_batch(big, num_workers=2) == [tok.encode(t) for t in big]


# ------------------------------------------------------------------ I/O and peers

def test_save_load_roundtrip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
    text = heldout_samples()["mixed"]
    assert back.encode(text) == tok.encode(text)
    tok.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path).vocab_size == tok.vocab_size  # a run's tokenizer/ directory works too


def test_load_errors_are_actionable(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text('{"format": "lmstack-tokenizer", "version": 1, "mode": "byte"}')
    with pytest.raises(ValueError, match="field 'pattern' missing"):
        Tokenizer.load(p)
    p.write_text('{"model": {}, "pre_tokenizer": null}')
    with pytest.raises(ValueError, match="HF tokenizers file"):
        Tokenizer.load(p)
    p.write_text("{oops")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        Tokenizer.load(p)
    with pytest.raises(FileNotFoundError, match="run the tokenizer stage"):
        Tokenizer.load(tmp_path / "missing.json")


def test_hf_tokenizers_encode_identically_after_export(tok, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    path = export_hf(tok, tmp_path / "hf")
    hf = tokenizers.Tokenizer.from_file(str(path))
    for name, text in heldout_samples().items():
        ids = tok.encode_ordinary_python(text)
        assert hf.encode(text).ids == ids, name
        assert hf.decode(ids) == text, name
    assert hf.get_vocab_size() == tok.vocab_size
    # HF matches added tokens in raw text by default; with encode_special_tokens it agrees with lmstack.
    text = "a<|end|>b"
    assert hf.encode(text).ids == tok.encode(text, allowed_special="all")
    hf.encode_special_tokens = True
    assert hf.encode(text).ids == tok.encode(text)


def test_hf_export_loads_in_transformers(byte_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    export_hf(byte_tok, tmp_path)
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    text = heldout_samples()["mixed"]
    assert fast(text, add_special_tokens=False)["input_ids"] == byte_tok.encode(text)
    assert fast.bos_token_id == byte_tok.bos_id and fast.pad_token_id == byte_tok.pad_id


def test_tiktoken_rank_file_roundtrip(byte_tok, tmp_path):
    path = tmp_path / "ranks.tiktoken"
    export_tiktoken(byte_tok, path)
    back = load_tiktoken(path)
    assert back.merges == byte_tok.merges and back.byte_ids == byte_tok.byte_ids
    for text in heldout_samples().values():
        assert back.encode(text) == byte_tok.encode(text)
    # tiktoken itself reads the file.
    from tiktoken.load import load_tiktoken_bpe
    assert load_tiktoken_bpe(str(path)) == {byte_tok.token_bytes(i): i for i in range(byte_tok.n_regular)}


def test_rank_file_errors(tmp_path):
    p = tmp_path / "bad.tiktoken"
    p.write_text("YQ== 0\nnot-a-line\n")
    with pytest.raises(ValueError, match="line 2"):
        load_tiktoken(p)


def test_char_mode_cannot_be_written_as_tiktoken(char_tok, tmp_path):
    with pytest.raises(ValueError, match="byte-level"):
        export_tiktoken(char_tok, tmp_path / "x.tiktoken")


def test_rank_file_with_permuted_byte_ranks(byte_tok, tmp_path):
    # Real rank files (cl100k) do not put byte b at rank b; import must not assume it.
    import base64
    perm = list(range(256))
    random.Random(1).shuffle(perm)  # byte token at old id i gets new id perm[i]
    new_id = {i: (perm[i] if i < 256 else i) for i in range(byte_tok.n_regular)}
    lines = [f"{base64.b64encode(byte_tok.token_bytes(i)).decode()} {new_id[i]}" for i in range(byte_tok.n_regular)]
    path = tmp_path / "perm.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    back = load_tiktoken(path)
    assert back.backend == "tiktoken"
    for text in heldout_samples().values():
        assert back.encode(text) == [new_id[i] for i in byte_tok.encode(text)]
        assert back.encode_ordinary_python(text) == back.encode(text)


def test_encode_batch_with_allowed_special(byte_tok):
    texts = ["<|bos|>hello<|end|>", "plain <|end|> text"]
    assert byte_tok.encode_batch(texts, allowed_special="all") == [byte_tok.encode(t, allowed_special="all") for t in texts]
    assert byte_tok.encode_batch(texts) == [byte_tok.encode(t) for t in texts]
