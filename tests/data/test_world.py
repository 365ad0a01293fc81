"""Tests of the synthetic bilingual world (lmstack.data.world)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from lmstack import REPO_ROOT
from lmstack.data import world_text as T
from lmstack.data.world import WorldConfig, build_world, few_shot_prompt, load_world, qa_prompt
from lmstack.data.world.cli import main
from lmstack.eval.answers import answer_matches, first_answer_span, is_idk, is_refusal, normalize_answer

CJK = re.compile(r"[\u4e00-\u9fff]")

TINY = dict(n_people=6, n_sft_only_people=2, n_cities=4, n_countries=4, bios_per_person=4, n_stories=12,
            n_geo_docs=4, n_quiz_docs=4, n_arith_docs=4, n_arith_drill_docs=2, n_copy_docs=2, n_parallel_docs=4, n_sft_train=60, n_sft_eval=30,
            n_prefs_train=30, n_prefs_eval=15, n_unknown_people=4, n_unknown_cities=4)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(), seed=1337)


@pytest.fixture(scope="module")
def tiny():
    return build_world(WorldConfig(**TINY), seed=7)


def digest(w) -> str:
    blob = json.dumps([w.to_json(), list(w.pretrain_docs()), w.sft_train, w.sft_eval, w.prefs_train,
                       w.prefs_eval, w.facts_eval], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def user_turns(item):
    return [m["content"] for m in item["messages"] if m["role"] == "user"]


def training_text(w) -> str:
    texts = [d["text"] for d in w.pretrain_docs()]
    for item in w.sft_train:
        texts += [m["content"] for m in item["messages"]]
    for item in w.prefs_train:
        texts += [item["prompt"], item["chosen"], item["rejected"]]
    return "\x00".join(texts)


def expected_value(w, fact_id: str, lang: str) -> str:
    """The answer to a fact, read straight from the entity tables (not through World.fact)."""
    kind, eid, attr = fact_id.split(":")
    zh = lang == "zh"
    if kind == "person":
        p = w.person(eid)
        return {"birth_year": str(p.birth_year),
                "birthplace": w.city(p.birthplace).name_zh if zh else w.city(p.birthplace).name_en,
                "occupation": p.occupation_zh if zh else p.occupation_en,
                "hobby": p.hobby_zh if zh else p.hobby_en}[attr]
    if kind == "city":
        k = w.country(w.city(eid).country)
        return k.name_zh if zh else k.name_en
    k = w.country(eid)
    return k.capital_zh if zh else k.capital_en


# ------------------------------------------------------------------------------------------ determinism and sizes

def test_same_seed_same_world_different_seed_different(tiny):
    assert digest(build_world(WorldConfig(**TINY), seed=7)) == digest(tiny)
    other = build_world(WorldConfig(**TINY), seed=8)
    assert digest(other) != digest(tiny)
    assert [p.name_en for p in other.people] != [p.name_en for p in tiny.people]


def test_deterministic_across_processes_with_different_hash_seeds(tiny):
    # str hashing is randomized per process; the world must not depend on it.
    code = ("import json,sys; sys.path.insert(0, %r); from tests.data.test_world import digest, TINY;"
            "from lmstack.data.world import build_world, WorldConfig;"
            "print(digest(build_world(WorldConfig(**TINY), seed=7)))" % str(REPO_ROOT))
    for hash_seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                             check=True).stdout.strip()
        assert out == digest(tiny)


def test_sizes_follow_config(tiny):
    cfg = tiny.config
    assert len(tiny.people) == cfg.n_people + cfg.n_sft_only_people
    assert len(tiny.cities) == cfg.n_cities and len(tiny.countries) == cfg.n_countries
    assert Counter(p.group for p in tiny.people) == {"pretrain+sft": 3, "pretrain_only": 3, "sft_only": 2}
    kinds = Counter(d["kind"] for d in tiny.pretrain_docs())
    assert {k: v for k, v in kinds.items() if k not in ("bio", "story")} == {
        "geo": cfg.n_geo_docs, "quiz": cfg.n_quiz_docs, "arith": cfg.n_arith_docs + cfg.n_arith_drill_docs, "copy": cfg.n_copy_docs,
            "parallel": cfg.n_parallel_docs}
    by_kind = tiny.stats()["docs_by_kind"]
    assert by_kind["bio"]["items"] == cfg.n_people * cfg.bios_per_person  # one paragraph per person and round
    assert by_kind["story"]["items"] == cfg.n_stories
    assert kinds["bio"] < by_kind["bio"]["items"]  # pages hold 2-3 people
    bios = [d["text"] for d in tiny.pretrain_docs() if d["kind"] == "bio"]
    for p in tiny.people_in("pretrain+sft", "pretrain_only"):
        assert sum(p.name_en in t or p.name_zh in t for t in bios) == cfg.bios_per_person
    assert (len(tiny.sft_train), len(tiny.sft_eval)) == (cfg.n_sft_train, cfg.n_sft_eval)
    assert (len(tiny.prefs_train), len(tiny.prefs_eval)) == (cfg.n_prefs_train, cfg.n_prefs_eval)
    # facts_eval: every fact in both languages
    assert len(tiny.facts_eval) == 2 * (4 * len(tiny.people) + cfg.n_cities + cfg.n_countries)
    assert len(tiny.unknown_people["train"]) + len(tiny.unknown_people["eval"]) == cfg.n_unknown_people
    assert set(Counter(i["task"] for i in tiny.sft_train)) == {"fact_qa", "multiturn", "translate", "arith",
                                                              "refuse_pii", "idk"}
    assert set(Counter(i["category"] for i in tiny.prefs_train)) == {"helpful", "honest", "harmless"}


def test_names_are_unique_and_never_contain_each_other(world):
    names = [p.name_en for p in world.people] + [x["name_en"] for s in ("train", "eval")
                                                  for x in world.unknown_people[s]]
    names_zh = [p.name_zh for p in world.people] + [x["name_zh"] for s in ("train", "eval")
                                                     for x in world.unknown_people[s]]
    for pool in (names, names_zh, [c.name_en for c in world.cities], [c.name_zh for c in world.cities]):
        assert len(set(pool)) == len(pool)
        for a in pool:
            assert sum(a in b for b in pool) == 1, a
    assert len({p.phone for p in world.people}) == len(world.people)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_countries=99"):
        WorldConfig(n_countries=99)
    with pytest.raises(ValueError, match="phone_in_bio_prob"):
        WorldConfig(phone_in_bio_prob=1.5)
    with pytest.raises(ValueError, match="n_stories=-1"):
        WorldConfig(n_stories=-1)
    from lmstack.config import ConfigError, config_from_dict
    with pytest.raises(ConfigError, match="n_peple.*n_people"):
        config_from_dict(WorldConfig, {"n_peple": 3}, "data.world")


# ------------------------------------------------------------------------------------------ facts are consistent

def test_every_qa_answer_matches_the_entity_table(world):
    checked = Counter()
    for split in (world.sft_train, world.sft_eval):
        for item in split:
            if item["task"] == "fact_qa":
                (fid,) = item["facts"]
                assert item["answer"] == expected_value(world, fid, item["lang"])
                assert answer_matches(item["messages"][-1]["content"], item["answer"])
                checked[item["task"]] += 1
            elif item["task"] == "multiturn":
                assert item["answer"] == expected_value(world, item["facts"][-1], item["lang"])
                # every assistant turn states its own fact
                assistant = [m["content"] for m in item["messages"] if m["role"] == "assistant"]
                for text, fid in zip(assistant, item["facts"]):
                    assert answer_matches(text, expected_value(world, fid, item["lang"])), (text, fid)
                checked[item["task"]] += 1
            elif item["task"] == "arith":
                a, op, b = re.search(r"(\d+) ?(\+|-|\*|plus|minus|times|加|减|乘) ?(\d+)", user_turns(item)[-1]).groups()
                value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[
                    {"plus": "+", "加": "+", "minus": "-", "减": "-", "times": "*", "乘": "*"}.get(op, op)]
                assert item["answer"] == str(value)
                assert answer_matches(item["messages"][-1]["content"], item["answer"])
                checked[item["task"]] += 1
    for item in world.facts_eval:
        assert item["answer"] == expected_value(world, item["fact"], item["lang"])
        assert item["prompt"] == qa_prompt(item["question"], item["lang"])
        checked["facts_eval"] += 1
    for item in world.prefs_train + world.prefs_eval:
        if item["kind"] == "wrong_fact":
            value = expected_value(world, item["facts"][0], item["lang"])
            assert answer_matches(item["chosen"], value) and not answer_matches(item["rejected"], value)
            checked["prefs"] += 1
    assert min(checked.values()) >= 20, checked


def test_facts_eval_questions_name_their_entity(world):
    for item in world.facts_eval:
        kind, eid, _ = item["fact"].split(":")
        zh = item["lang"] == "zh"
        if kind == "person":
            name = world.person(eid).name_zh if zh else world.person(eid).name_en
        elif kind == "city":
            name = world.city(eid).name_zh if zh else world.city(eid).name_en
        else:
            name = world.country(eid).name_zh if zh else world.country(eid).name_en
        assert name in item["question"]


def test_pretraining_states_each_fact_many_times(world):
    docs = list(world.pretrain_docs())
    for p in world.people:
        for lang in ("en", "zh"):
            name = p.name_en if lang == "en" else p.name_zh
            with_name = [d["text"] for d in docs if name in d["text"]]
            if p.group == "sft_only":
                assert not with_name, f"{name} is sft_only but appears in pretraining docs"
                continue
            for attr in T.PERSON_FACTS:
                value = expected_value(world, f"person:{p.id}:{attr}", lang)
                # independent of the generator's own counter: docs naming the person and the value
                assert sum(value in t for t in with_name) >= 5, (name, attr)
    stats = world.stats()["fact_mentions_in_pretrain"]
    for ftype, s in stats.items():
        assert s["min"] >= 10, (ftype, s)


def test_held_out_groups_match_the_flags(world):
    train_items = world.sft_train + world.prefs_train
    for item in world.facts_eval:
        group = item["group"]
        if group == "pretrain_only":
            assert item["in_pretrain"] and not item["in_sft"] and not item["in_prefs"]
        elif group == "sft_only":
            assert item["in_sft"] and not item["in_pretrain"]
        elif group == "pretrain+sft":
            assert item["in_pretrain"] and item["in_sft"]
    # pretrain-only people: no SFT / preference text states any of their facts next to their name
    for p in world.people_in("pretrain_only"):
        for lang in ("en", "zh"):
            name = p.name_en if lang == "en" else p.name_zh
            values = [expected_value(world, f"person:{p.id}:{a}", lang) for a in T.PERSON_FACTS]
            for item in train_items:
                texts = ([m["content"] for m in item["messages"]] if "messages" in item
                         else [item["prompt"] + " " + item["chosen"] + " " + item["rejected"]])
                blob = "\n".join(texts)
                if name in blob:
                    assert not any(re.search(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])", blob)
                                   for v in values), (name, blob)


# ------------------------------------------------------------------------------------------ held-out phrasings

def test_no_eval_question_appears_in_any_training_text(world):
    big = training_text(world)
    questions = []
    for item in world.sft_eval:
        questions += user_turns(item)
    questions += [item["prompt"] for item in world.prefs_eval]
    questions += [item["question"] for item in world.facts_eval] + [item["prompt"] for item in world.facts_eval]
    assert len(questions) > 800
    leaked = [q for q in questions if q in big]
    assert not leaked, leaked[:5]


def test_eval_templates_are_disjoint_from_training_templates():
    for lang in ("en", "zh"):
        for ftype in T.FACT_TYPES:
            assert not set(T.QUESTIONS_EVAL[lang][ftype]) & set(T.QUESTIONS_TRAIN[lang][ftype])
            assert len(T.STATEMENTS[lang][ftype]) >= 6
            assert len(T.QUESTIONS_TRAIN[lang][ftype]) >= 6
        assert not set(T.PHONE_REQUESTS["eval"][lang]) & set(T.PHONE_REQUESTS["train"][lang])


def test_eval_arithmetic_and_translation_inputs_are_unseen(world):
    train_user = {u for item in world.sft_train for u in user_turns(item)}
    eval_sentences = [item["messages"][-1]["content"] for item in world.sft_eval if item["task"] == "translate"]
    big = training_text(world)
    assert eval_sentences and not [s for s in eval_sentences if s in big]
    eval_arith = [user_turns(i)[-1] for i in world.sft_eval if i["task"] == "arith"]
    assert eval_arith and not set(eval_arith) & train_user


def test_held_out_translations_are_new_combinations_of_known_patterns_and_words(world):
    """A held-out sentence is unseen as a whole, but its pattern (the sentence with its slot words removed) and
    its words occur in training pairs: the task measures composition, not vocabulary the model never read."""
    from lmstack.data.world.documents import translation_is_heldout

    train_words = {w.strip(".,") for w in training_text(world).split()}
    held = [i for i in world.sft_eval if i["task"] == "translate" and i["direction"] == "zh_en"]
    assert held
    for item in held:
        english = item["answer"]
        assert translation_is_heldout(english)
        unknown = {w.strip(".,") for w in english.split()} - train_words
        assert not unknown, (english, unknown)


# ------------------------------------------------------------------------------------------ languages

def test_chinese_and_english_both_present(world):
    docs = list(world.pretrain_docs())
    langs = Counter(d["lang"] for d in docs)
    assert langs["en"] > 100 and langs["zh"] > 100 and langs["mixed"] > 10
    for d in docs:
        if d["lang"] == "zh":
            assert CJK.search(d["text"]) and not re.search(r"[A-Za-z]{2,}", d["text"]), d["text"]
        elif d["lang"] == "en":
            assert not CJK.search(d["text"]), d["text"]
        else:
            assert CJK.search(d["text"]) and re.search(r"[A-Za-z]{3}", d["text"])
        assert d["source"] == "world" and d["text"].strip()
    for split in (world.sft_train, world.sft_eval, world.prefs_train, world.facts_eval):
        assert Counter(i["lang"] for i in split).keys() == {"en", "zh"}
    for item in world.sft_train:
        if item["task"] == "translate":
            target = item["messages"][-1]["content"]
            assert bool(CJK.search(target)) == (item["lang"] == "zh")


# ------------------------------------------------------------------------------------------ PII, refusals, unknowns

def test_phone_requests_get_refusals_and_no_phone_leaks_in_sft(world):
    phones = [p.phone for p in world.people]
    n_refusals = 0
    for item in world.sft_train + world.sft_eval:
        for m in item["messages"]:
            assert not any(ph in m["content"] for ph in phones), m
        last_user = user_turns(item)[-1]
        asks_phone = re.search(r"phone|number|mobile|telephone|电话|手机|号码|联系方式", last_user)
        if item["task"] == "refuse_pii":
            assert asks_phone, last_user
            assert is_refusal(item["messages"][-1]["content"]) and not is_idk(item["messages"][-1]["content"])
            n_refusals += 1
        elif item["task"] in ("fact_qa", "multiturn", "idk"):
            assert not asks_phone, last_user
            assert not is_refusal(item["messages"][-1]["content"])
    assert n_refusals >= 100
    harmless = [p for p in world.prefs_train if p["category"] == "harmless"]
    assert harmless
    for pref in harmless:
        assert is_refusal(pref["chosen"]) and not any(ph in pref["chosen"] for ph in phones)
        assert any(ph in pref["rejected"] for ph in phones) and not is_refusal(pref["rejected"])


def test_unknown_entities_get_i_dont_know(world):
    known = [p.name_en for p in world.people] + [p.name_zh for p in world.people]
    idk = [i for i in world.sft_train + world.sft_eval if i["task"] == "idk"]
    assert len(idk) >= 100
    for item in idk:
        q = user_turns(item)[-1]
        assert not any(n in q for n in known)
        assert is_idk(item["messages"][-1]["content"]) and not is_refusal(item["messages"][-1]["content"])
    train_unknown = {u["name_en"] for u in world.unknown_people["train"]}
    for item in world.sft_eval:
        if item["task"] == "idk":
            assert not any(n in user_turns(item)[-1] for n in train_unknown)
    for pref in world.prefs_train:
        if pref["kind"] == "fabrication":
            assert is_idk(pref["chosen"]) and not is_idk(pref["rejected"])


def test_multiturn_followups_refer_back_with_pronouns(world):
    items = [i for i in world.sft_train if i["task"] == "multiturn"]
    assert len(items) >= 50
    for item in items:
        p = world.person(item["facts"][0].split(":")[1])
        name = p.name_en if item["lang"] == "en" else p.name_zh
        first, *later = user_turns(item)
        assert name in first and later
        for follow in later:
            assert name not in follow
        if item["lang"] == "en" and "city_country" not in item["facts"][-1]:
            pronouns = {"f": r"\b(she|her)\b", "m": r"\b(he|his)\b"}[p.gender]
            assert re.search(pronouns, later[0]), later[0]


# ------------------------------------------------------------------------------------------ helpers

def test_normalize_and_answer_matches():
    assert normalize_answer("  The Paris!! ") == "paris"
    assert normalize_answer("１９８７年") == "1987年"
    assert normalize_answer("瓦尔 莫拉。") == "瓦尔莫拉"
    assert answer_matches("Li Wei was born in Valmora.", "Valmora")
    assert answer_matches(" Valmora\nQuestion: Where was Anna born?\nAnswer: Kelton", "Valmora")
    assert not answer_matches(" Kelton\nQuestion: ...\nAnswer: Valmora", "Valmora")  # only the first span counts
    assert not answer_matches("Valmorax", "Valmora")
    assert answer_matches("李伟出生于瓦尔莫拉。后来他搬走了。", "瓦尔莫拉")
    assert answer_matches("他出生于1987年。", "1987") and answer_matches("1987", "1987")
    assert answer_matches("23 + 45 = 68.", "68") and not answer_matches("23 + 45 = 69.", "68")
    assert not answer_matches("23 + 45 = 69", "23")  # restating an operand is not the answer
    assert answer_matches("The answer is 68. Next, 7.", "68")
    assert answer_matches("He is a teacher.", "teacher") and not answer_matches("He is a teacher.", "tea")
    assert answer_matches("the United States", "the United States", exact=True)
    assert not answer_matches("Paris is nice", "Paris", exact=True)
    assert not answer_matches("", "Paris") and not answer_matches("Paris", "")
    assert first_answer_span("\n  Paris. Then") == "Paris"


def test_refusal_and_idk_detectors():
    for text in ["I'm sorry, but I can't share that phone number.", "I cannot provide personal contact details.",
                 "抱歉，我不能提供他的电话号码。", "这是个人隐私。"]:
        assert is_refusal(text) and not is_idk(text), text
    for text in ["I don't know.", "I have no information about Zed.", "我不知道。", "我没听说过这个人。",
                 "I’m not aware of a city with that name."]:
        assert is_idk(text) and not is_refusal(text), text
    for text in ["Li Wei was born in Valmora.", "Sure! Her number is +1 (415) 555-0100.", "他是一名教师。", "谁知道呢？"]:
        assert not is_refusal(text) and not is_idk(text), text


def test_few_shot_prompt(world):
    en = [i for i in world.facts_eval if i["lang"] == "en"]
    zh = [i for i in world.facts_eval if i["lang"] == "zh"]
    prompt = few_shot_prompt(en[0], en[:3])  # en[0] itself is skipped as a shot
    blocks = prompt.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == en[0]["prompt"]
    assert blocks[0] == f"Question: {en[1]['question']}\nAnswer: {en[1]['answer']}"
    zprompt = few_shot_prompt(zh[5], [(zh[0]["question"], zh[0]["answer"])])
    assert zprompt == f"问题：{zh[0]['question']}\n答案：{zh[0]['answer']}\n\n问题：{zh[5]['question']}\n答案："
    with pytest.raises(ValueError, match="lang"):
        few_shot_prompt(en[0], [], lang="fr")


# ------------------------------------------------------------------------------------------ files and CLI

def test_write_and_load_round_trip(tiny, tmp_path):
    paths = tiny.write(tmp_path / "world")
    assert {p.name for p in paths.values()} == {"world.json", "sft_train.jsonl", "sft_eval.jsonl",
                                                "prefs_train.jsonl", "prefs_eval.jsonl", "facts_eval.jsonl"}
    rows = [json.loads(line) for line in paths["sft_train"].read_text(encoding="utf-8").splitlines()]
    assert rows == tiny.sft_train
    assert not list((tmp_path / "world").glob("*.tmp"))
    data = json.loads(paths["world"].read_text(encoding="utf-8"))
    assert data["seed"] == 7 and len(data["people"]) == len(tiny.people)
    assert "王" in paths["world"].read_text(encoding="utf-8") or CJK.search(paths["world"].read_text("utf-8"))
    again = load_world(tmp_path / "world")
    assert digest(again) == digest(tiny)
    data["people"][0]["birth_year"] += 1
    paths["world"].write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="generator has changed"):
        load_world(tmp_path / "world")
    with pytest.raises(FileNotFoundError, match="world.json"):
        load_world(tmp_path / "missing")


def test_cli_writes_files_and_rejects_bad_keys(tmp_path, capsys):
    args = [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(["--seed", "3", "--out", str(tmp_path), *args]) == 0
    out = capsys.readouterr().out
    assert "| bio |" in out and "birthplace" in out
    assert (tmp_path / "pretrain.jsonl").exists() and (tmp_path / "facts_eval.jsonl").exists()
    assert main(["--set", "n_peopel=3"]) == 2
    assert "n_people" in capsys.readouterr().err


def test_world_pages_survive_the_data_stage_filters(world):
    """Integration with lmstack.data.clean: the default web-quality chain (Gopher rules etc.) must keep
    nearly all world pages, or the facts would never reach pretraining."""
    clean = pytest.importorskip("lmstack.data.clean")
    filters = clean.build_filters(clean.FiltersConfig())
    verdicts = Counter()
    for doc in world.pretrain_docs():
        doc = clean.annotate(dict(doc, text=clean.normalize_text(doc["text"])))
        verdicts[clean.apply_filters(doc, filters) is True] += 1
    assert verdicts[True] >= 0.85 * sum(verdicts.values()), verdicts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_invariants_hold_for_other_seeds_and_sizes(seed):
    cfg = WorldConfig(**dict(TINY, n_people=5 + seed, n_cities=3 + seed, sft_people_fraction=0.4 + 0.1 * seed))
    w = build_world(cfg, seed=seed)
    big = training_text(w)
    questions = [q for item in w.sft_eval for q in user_turns(item)] + [i["question"] for i in w.facts_eval]
    assert not [q for q in questions if q in big]
    for item in w.facts_eval:
        assert item["answer"] == expected_value(w, item["fact"], item["lang"])
    for item in w.sft_train + w.sft_eval:
        last = item["messages"][-1]["content"]
        if item["answer"] is not None:
            assert answer_matches(last, item["answer"]), (last, item["answer"])
        assert is_refusal(last) == (item["task"] == "refuse_pii")
        assert is_idk(last) == (item["task"] == "idk")
        if item["facts"]:
            assert item["group"] in ("pretrain+sft", "pretrain_only", "sft_only", "place")
    # pretrain-only people are never the subject of an SFT training conversation
    pretrain_only = {p.id for p in w.people_in("pretrain_only")}
    assert not [f for item in w.sft_train for f in item["facts"] if f.split(":")[1] in pretrain_only]


def test_config_without_sft_people_is_rejected_or_empty():
    with pytest.raises(ValueError, match="sft_people_fraction"):
        WorldConfig(n_people=4, n_sft_only_people=0, sft_people_fraction=0.0)
    w = build_world(WorldConfig(**dict(TINY, n_sft_only_people=0, sft_people_fraction=0.0, n_sft_train=0,
                                       n_prefs_train=0)), seed=1)
    assert w.sft_train == [] and w.prefs_train == [] and len(w.sft_eval) == TINY["n_sft_eval"]
    assert not any(i["in_sft"] for i in w.facts_eval if i["fact_type"] in T.PERSON_FACTS)


def test_biography_switches():
    base = dict(TINY, n_stories=0, n_geo_docs=0, n_arith_docs=0, n_arith_drill_docs=0, n_copy_docs=0, n_parallel_docs=0, phone_in_bio_prob=0.0)
    full = build_world(WorldConfig(**base, bio_full_names=True), seed=7)
    pron = build_world(WorldConfig(**base), seed=7)
    for w, every_sentence in ((full, True), (pron, False)):
        for doc in w.pretrain_docs():
            if doc["kind"] != "bio" or doc["lang"] != "zh":
                continue
            for para in doc["text"].split("\n\n")[1:]:
                person = next(p for p in w.people if para.startswith(p.name_zh) or p.name_zh in para)
                values = (str(person.birth_year), w.city(person.birthplace).name_zh, person.occupation_zh,
                          person.hobby_zh)
                country = w.country(w.city(person.birthplace).country).name_zh  # "X is a city in <country>"
                facts = [s for s in para.split("。") if any(v in s for v in values) and country not in s]
                named = sum(person.name_zh in s for s in facts)
                assert (named == len(facts)) == every_sentence, para
    english = build_world(WorldConfig(**base, bilingual_bios=False), seed=7)
    assert {d["lang"] for d in english.pretrain_docs() if d["kind"] == "bio"} == {"en"}
    quiz_sft = build_world(WorldConfig(**base, quiz_people="sft"), seed=7)
    quizzes = "\n".join(d["text"] for d in quiz_sft.pretrain_docs() if d["kind"] == "quiz")
    assert all(p.name_en not in quizzes and p.name_zh not in quizzes for p in quiz_sft.people_in("pretrain_only"))
    assert any(p.name_en in quizzes or p.name_zh in quizzes for p in quiz_sft.people_in("pretrain+sft"))


# ------------------------------------------------------------------------------------------ SFT data choices

def test_worked_arithmetic_shows_columns_and_ends_with_the_result():
    from lmstack.data.world.dialogues import worked_arith

    assert worked_arith("+", 27, 58, "en") == "27 + 58: ones 7 + 8 = 15, tens 2 + 5 + 1 = 8, so 27 + 58 = 85."
    assert worked_arith("-", 63, 28, "zh") == "63减28：个位13减8得5，十位6减2再减1得3，所以63减28等于35。"
    for a in range(2, 100):
        for b in range(2, 100, 7):
            for op in "+-":
                if op == "-" and b > a:
                    continue
                c = a + b if op == "+" else a - b
                for lang in ("en", "zh"):
                    text = worked_arith(op, a, b, lang)
                    # the judge reads the last number of the first clause: the steps must not end it early
                    assert answer_matches(text, str(c)) and not answer_matches(text, str(c + 1)), text
                    ones, tens = (int(n) for n in re.findall(r"(?:=|得) ?(-?\d+)", text)[:2])
                    assert ones % 10 == c % 10 and tens == c // 10, text
    with pytest.raises(ValueError, match="worked_arith"):
        worked_arith("-", 5, 9, "en")


def test_sft_arithmetic_is_worked_for_sums_and_differences_only_in_training(world):
    train = [i for i in world.sft_train if i["task"] == "arith"]
    worked = [i for i in train if re.search(r"\bones\b|个位", i["messages"][-1]["content"])]
    assert len(worked) > len(train) / 2
    assert not any(re.search(r"\bones\b|个位", i["messages"][-1]["content"]) for i in world.sft_eval)


def test_extra_sft_conversations_are_appended_from_their_own_streams_and_never_held_out():
    from lmstack.data.world.documents import _arith_is_heldout

    base = build_world(WorldConfig(**TINY), seed=7)
    more = build_world(WorldConfig(**dict(TINY, sft_extra={"arith": 50, "translate": 10})), seed=7)
    assert more.sft_train[:len(base.sft_train)] == base.sft_train and more.sft_eval == base.sft_eval
    extra = more.sft_train[len(base.sft_train):]
    assert [i["task"] for i in extra] == ["arith"] * 50 + ["translate"] * 10
    assert not any(_arith_is_heldout(i["op"], *map(int, re.findall(r"\d+", i["messages"][-2]["content"])[:2]))
                   for i in extra[:50])
    held_out = {i["answer"] for i in more.sft_eval if i["task"] == "translate"}
    assert not held_out & {i["answer"] for i in extra[50:]}
    with pytest.raises(ValueError, match="sft_extra"):
        WorldConfig(sft_extra={"poetry": 5})


def test_drill_pages_state_one_digit_column_facts_when_asked_and_never_held_out_ones():
    from lmstack.data.world.documents import _arith_is_heldout, column_fact

    rng = random.Random(0)
    facts = [column_fact(rng, op) for op in "+-" * 500]
    assert all(0 <= c <= 18 and not _arith_is_heldout(op, a, b) for op, a, b, c in facts)
    assert {(a, b) for op, a, b, _ in facts if op == "-" and a > 9} and {c for op, *_, c in facts if op == "-"} >= {0, 9}
    cfg = dict(TINY, n_arith_drill_docs=40)
    plain, more = build_world(WorldConfig(**cfg), seed=3), build_world(WorldConfig(**cfg, arith_fact_share=0.5), seed=3)
    assert plain.docs == build_world(WorldConfig(**cfg, arith_fact_share=0.0), seed=3).docs  # share 0: unchanged

    def numbers(w):  # the first two numbers of each sentence of the English arithmetic pages
        return [tuple(map(int, re.findall(r"\d+", line)[:2])) for d in w.docs if d["kind"] == "arith" and d["lang"] == "en"
                for line in re.split(r"(?<=\.) ", d["text"].split("\n", 1)[1]) if len(re.findall(r"\d+", line)) >= 3]
    one_digit = lambda w: sum(a <= 18 and b <= 9 for a, b in numbers(w)) / len(numbers(w))  # noqa: E731
    assert one_digit(more) > one_digit(plain) + 0.25
    with pytest.raises(ValueError, match="arith_fact_share"):
        WorldConfig(arith_fact_share=1.5)


def test_arithmetic_probe_asks_only_held_out_problems_in_held_out_phrasings(tiny):
    from lmstack.data.world.dialogues import DialogBuilder
    from lmstack.data.world.documents import _arith_is_heldout

    probes = DialogBuilder(tiny).probe_conversations("arith", 120, seed=0)
    assert len(probes) == 120 and {p["op"] for p in probes} == {"+", "-", "*"}
    trained = {m["content"] for i in tiny.sft_train for m in i["messages"] if m["role"] == "user"}
    for p in probes:
        question = p["messages"][-2]["content"]
        a, b = map(int, re.findall(r"\d+", question)[:2])
        assert _arith_is_heldout(p["op"], a, b) and question not in trained
        assert int(p["answer"]) == {"+": a + b, "-": a - b, "*": a * b}[p["op"]]


def test_pretraining_only_people_are_named_in_sft_training_only_inside_translations(world):
    # Physics of LMs 3.1's setup: the people whose facts are extracted never appear in fine-tuning, so SFT
    # cannot teach "this name gets a refusal" (phone requests used to name them).
    names = [n for p in world.people_in("pretrain_only") for n in (p.name_en, p.name_zh)]
    for item in world.sft_train:
        blob = "\n".join(m["content"] for m in item["messages"])
        if any(n in blob for n in names):
            assert item["task"] == "translate", item


def test_training_task_mix_does_not_change_the_held_out_set(monkeypatch):
    import lmstack.data.world.dialogues as D

    before = build_world(WorldConfig(**TINY), seed=7)
    monkeypatch.setattr(D, "SFT_TASK_MIX", dict(D.SFT_TASK_MIX, idk=0.3, fact_qa=0.18))
    after = build_world(WorldConfig(**TINY), seed=7)
    assert [i["messages"][:-1] for i in after.sft_eval] == [i["messages"][:-1] for i in before.sft_eval]
    count = lambda w: sum(i["task"] == "idk" for i in w.sft_train)  # noqa: E731
    assert count(after) > count(before)
