"""Copy warm-up (copying.py) and the fictional people of the apps stage's SFT data (synthetic.py)."""

import math

import torch

from lmstack.apps.copying import (CopyConfig, CopyLoss, copy_batch, copy_warmup, ordinary_id_range, repeat_loss,
                                    small_alphabet)
from lmstack.apps.kg import kg_from_world
from lmstack.apps.synthetic import EXTRA_TRAIN_QUESTIONS, augmented_graph, copy_chat_examples, extra_fact_questions
from lmstack.apps.worldqa import FACT_QUESTIONS, entity_passages, fact_questions, multihop_questions
from lmstack.data.world import WorldConfig, build_world
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401


def test_copy_batch_repeats_the_string_at_varying_offsets():
    x, repeat = copy_batch(64, 6, 10, 20, bos_id=1, gen=torch.Generator().manual_seed(0), max_gap=4)
    assert x.shape == repeat.shape == (64, 17) and (x[:, 0] == 1).all() and not repeat[:, :4].any()
    starts = set()
    for row, mask in zip(x, repeat):
        size = int(mask.sum())
        start = int(mask.nonzero()[0])
        assert 3 <= size <= 6 and torch.equal(row[start:start + size], row[1:1 + size])
        starts.add(start - 1)
    assert len(starts) > 3  # the repeat's offset varies: no fixed-distance shortcut
    assert ((x[:, 1:] >= 10) & (x[:, 1:] < 20)).all()


def test_warmup_teaches_a_tiny_model_to_copy():
    tok = small_tokenizer()
    low, high = ordinary_id_range(tok)
    assert not set(tok.special_tokens.values()) & set(range(low, high))
    torch.manual_seed(0)
    model = tiny_model(tok.vocab_size, max_seq_len=64)
    before = repeat_loss(model, tok, length=8)
    assert before > 0.8 * math.log(high - low)  # an untrained model cannot copy
    copy_warmup(model, tok, CopyConfig(steps=500, batch_size=32, length=8, lr=3e-3, pages_share=0.0), progress=False)
    assert repeat_loss(model, tok, length=8) < 0.8 * before  # 2 layers, 500 steps: 6.5 -> ~4.2 nats


def test_fictional_people_are_new_and_answerable_only_from_their_passages():
    w = build_world(WorldConfig(n_people=8, n_sft_only_people=2, n_cities=4, n_countries=4, n_sft_train=6,
                                n_sft_eval=3, n_prefs_train=2, n_prefs_eval=2, n_stories=2, n_geo_docs=2,
                                n_quiz_docs=2, n_arith_docs=1, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=1, bios_per_person=1), seed=5)
    kg = kg_from_world(w)
    big = augmented_graph(kg, 30, seed=0)
    fictional = set(big.entities_of_type("person")) - set(kg.entities_of_type("person"))
    assert len(fictional) == 30 and all(big.meta[p]["group"] == "fictional" for p in fictional)
    names = [kg.name(e, lang) for e in kg.entities_of_type("person") for lang in ("en", "zh")]
    for p in fictional:
        for lang in ("en", "zh"):
            new = big.name(p, lang)
            assert not any(new in old or old in new for old in names)  # no clash with a world name
            assert big.objects(big.objects(p, "birthplace")[0], "type") == ["city"]  # a real world city
    # the same renderers and templates work on them; the extra phrasings never equal an EVAL phrasing
    passages = {(q["entity"], q["lang"]): q["text"] for q in entity_passages(big) if q["entity"] in fictional}
    qs = fact_questions(big, "train", entities=fictional) + extra_fact_questions(big, sorted(fictional))
    assert all(q["answer"] in passages[(q["entity"], q["lang"])] for q in qs)
    evals = {t for by_lang in FACT_QUESTIONS.values() for lang in by_lang.values() for t in lang["eval"]}
    extra = {t for by_lang in EXTRA_TRAIN_QUESTIONS.values() for ts in by_lang.values() for t in ts}
    assert extra and not evals & extra
    assert any(_person(big, q) in fictional for q in multihop_questions(big))
    # copy turns answer with the question's string and name only the people they are allowed to
    held = [p for p in kg.entities_of_type("person") if kg.meta[p]["group"] == "sft_only"]
    copies = copy_chat_examples(big, 60, seed=0, people=sorted(fictional))
    assert all(c["messages"][1]["content"] in c["messages"][0]["content"] for c in copies)
    text = " ".join(c["messages"][0]["content"] for c in copies)
    assert not any(big.name(p, lang) in text for p in held for lang in ("en", "zh"))
    assert any(big.name(p, "en") in text for p in fictional)


def _person(kg, q):
    first = q["patterns"][0]
    return first[0] if not first[0].startswith("?") else kg.query([tuple(p) for p in q["patterns"][:2]])[0]["?p"]


def test_small_alphabet_rows_draw_their_strings_from_it():
    alphabet = torch.tensor([3, 5, 7])
    gen = torch.Generator().manual_seed(0)
    x, repeat = copy_batch(200, 8, 10, 40, bos_id=1, gen=gen, max_gap=4, alphabet=alphabet, alphabet_share=0.5)
    small_rows = torch.isin(x[:, 1:], alphabet).all(dim=1)
    assert 60 < int(small_rows.sum()) < 140  # about half the rows
    assert ((x[~small_rows, 1:] >= 10) & (x[~small_rows, 1:] < 40)).all()
    for row, mask in zip(x, repeat):  # the repeat is still a copy of the string
        size, start = int(mask.sum()), int(mask.nonzero()[0])
        assert torch.equal(row[start:start + size], row[1:1 + size])


def test_small_alphabet_is_single_character_tokens():
    tok = small_tokenizer()
    ids = small_alphabet(tok)
    assert len(ids) >= 10 and all(len(tok.decode([i])) == 1 for i in ids.tolist())
    assert "0" in [tok.decode([i]) for i in ids.tolist()]


def test_train_sft_adds_the_copy_loss_every_step(tmp_path):
    import json

    from lmstack.align.sft import Config as SftConfig, train_sft
    from lmstack.pipeline import StageContext
    from lmstack.runs import RunDir

    tok = small_tokenizer()
    chats = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                           {"role": "assistant", "content": str(i + 1)}]} for i in range(8)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    ctx = StageContext(run=RunDir(tmp_path / "run"), seed=0, device="cpu", recipe={}, stage="apps")
    cfg = SftConfig(steps=3, batch_size=2)
    params = []
    for with_copy in (False, True):
        torch.manual_seed(0)
        model = tiny_model(tok.vocab_size, max_seq_len=64)
        calls = []

        def extra():
            calls.append(1)
            return copy_loss()

        copy_loss = CopyLoss(model, tok, CopyConfig(length=8), batch_size=2)
        summary = train_sft(model, tok, cfg, path, ctx, "apps", extra_loss=extra if with_copy else None)
        assert len(summary["history"]) == 3 and len(calls) == (3 if with_copy else 0)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(params[0], params[1])  # the copy loss's gradient reached the weights


def test_copy_pages_are_fresh_and_repeat_what_they_state():
    import random

    from lmstack.apps.copying import copy_page_batch, copy_page_texts

    a, b = copy_page_texts(20, random.Random(0)), copy_page_texts(20, random.Random(1))
    assert not set(a) & set(b)  # a new seed gives new pages: nothing to memorise across batches
    words = [w.strip('.,:!"') for page in a for w in page.split()]
    codes = [w for w in words if w.isdigit()]
    # the codes come back (a house number is stated once): most numbers on a page are said twice or more
    assert codes and sum(codes.count(c) >= 2 for c in codes) > 0.6 * len(codes)
    tok = small_tokenizer()
    x, targets = copy_page_batch(tok, 4, 48, random.Random(0))
    assert x.shape == (4, 48) and targets.shape == (4, 47) and (x[:, 0] == tok.bos_id).all()
    real = targets != -100
    assert torch.equal(targets[real], x[:, 1:][real]) and (x[:, 1:][~real] == tok.pad_id).all()


def test_copy_loss_with_pages_and_page_copy_diagnostic():
    from lmstack.apps.copying import page_copy_loss

    tok = small_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=160)
    loss = CopyLoss(model, tok, CopyConfig(pages_share=1.0, page_tokens=64), batch_size=2)()
    assert loss.requires_grad and math.isfinite(float(loss.detach()))
    page = page_copy_loss(model, tok, n=3)
    assert set(page) == {"first", "repeat"} and all(v > 0 for v in page.values())
