"""DPO's extra world pairs (issue 22): PII requests with multi-turn follow-ups, facts SFT teaches, people who do not exist;
and the fact probes."""

from __future__ import annotations

import json

import pytest

from lmstack.align import dpo
from lmstack.align.data import load_preferences_jsonl
from lmstack.data import world_text as T
from lmstack.data.world import load_world
from lmstack.data.world.dialogues import DialogBuilder
from lmstack.eval.answers import answer_matches, is_idk, is_refusal
from align_tiny_run import build_tiny_run, ctx_for, small


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("dpo_pairs_run"), n_sft_train=40, n_prefs_train=30, n_prefs_eval=8,
                          max_seq_len=192)


@pytest.fixture(scope="module")
def builder(run_dir):
    return DialogBuilder(load_world(run_dir / "data" / "world"))


def _user_turns(prompt):
    return [m["content"] for m in prompt if m["role"] == "user"]


def test_pii_pairs_refuse_over_the_leak_and_over_idk_in_one_and_two_turns(builder):
    pairs = builder.pii_prefs(81, seed=0)
    assert len(pairs) == 81
    assert {p["kind"] for p in pairs} == {"pii_followup_leak", "pii_followup_idk", "pii_single_leak", "pii_single_idk"}
    assert {p["lang"] for p in pairs} == {"en", "zh"}
    w = builder.w
    for leak, idk in zip(pairs[0:80:2], pairs[1:80:2]):
        assert leak["prompt"] == idk["prompt"] and leak["chosen"] == idk["chosen"]  # one conversation, two pairs
        assert leak["kind"].endswith("_leak") and idk["kind"].endswith("_idk")
        roles = [m["role"] for m in leak["prompt"] if m["role"] != "system"]
        lang = leak["lang"]
        if leak["kind"].startswith("pii_followup"):
            assert roles == ["user", "assistant", "user"]  # a fact turn about a real person, then the follow-up
            person = w.person(w.fact(leak["facts"][0]).entity)
            templates = T.PHONE_FOLLOWUPS["train"][lang] + T.PHONE_REQUESTS["train"][lang]
        else:
            assert roles == ["user"]
            person = next(p for p in w.people if p.phone in leak["rejected"])
            templates = T.PHONE_REQUESTS["train"][lang] + T.PHONE_REQUESTS_MORE[lang]
        phone_request = _user_turns(leak["prompt"])[-1]
        assert phone_request in {t.format(**w.person_fields(person, lang)) for t in templates}
        assert is_refusal(leak["chosen"]) and not is_idk(leak["chosen"])
        assert person.phone in leak["rejected"] and not is_refusal(leak["rejected"])
        assert is_idk(idk["rejected"]) and idk["rejected"] in T.IDK_PERSON[lang]
    eval_requests = {t for lang in ("en", "zh") for t in T.PHONE_REQUESTS["eval"][lang] + T.PHONE_FOLLOWUPS["eval"][lang]}
    assert not eval_requests & {t for lang in ("en", "zh") for t in T.PHONE_REQUESTS_MORE[lang]}
    assert all(p["kind"].startswith("pii_followup") for p in builder.pii_prefs(20, seed=0, followup_share=1.0))
    assert all(p["kind"].startswith("pii_single") for p in builder.pii_prefs(20, seed=0, followup_share=0.0))
    with pytest.raises(ValueError, match="followup_share"):
        builder.pii_prefs(2, followup_share=1.5)
    assert pairs == builder.pii_prefs(81, seed=0)
    assert pairs != builder.pii_prefs(81, seed=1)
    assert builder.pii_prefs(0) == []


def test_pii_sft_conversations_are_the_pairs_prompts_with_their_refusals(run_dir, builder):
    from lmstack.align.data import world_pii_conversations

    convs = world_pii_conversations(run_dir, 12, seed=1)
    pairs = builder.pii_prefs(24, seed=1)
    assert len(convs) == 12 and {c["lang"] for c in convs} == {"en", "zh"}
    for conv, pair in zip(convs, pairs[::2]):
        assert conv["messages"] == list(pair["prompt"]) + [{"role": "assistant", "content": pair["chosen"]}]
        assert conv["task"] == "refuse_pii" and is_refusal(conv["messages"][-1]["content"])


def test_fact_pairs_choose_the_taught_fact_over_each_kind_of_error(builder):
    pairs = builder.fact_prefs(80, seed=0)
    assert len(pairs) == 80
    assert {p["lang"] for p in pairs} == {"en", "zh"}
    assert {p["kind"] for p in pairs} == {"false_idk", "false_refusal", "off_question", "wrong_fact"}
    w, taught = builder.w, {f.id for f in builder.sft_facts}
    for p in pairs:
        fact = w.fact(p["facts"][0])
        assert fact.id in taught  # only facts SFT teaches: the pretraining-only probe stays untouched
        assert p["answer"] == w.answer(fact, p["lang"])  # what the on-policy judge looks for
        assert answer_matches(p["chosen"], p["answer"]) and not is_idk(p["chosen"])
        assert not answer_matches(p["rejected"], w.answer(fact, p["lang"]))
        if p["kind"] != "wrong_fact":
            assert fact.type in T.PERSON_FACTS
        if p["kind"] == "false_idk":
            assert is_idk(p["rejected"])
        elif p["kind"] == "false_refusal":
            assert is_refusal(p["rejected"])
        elif p["kind"] == "off_question":  # a true statement about another attribute of the same person
            others = [w.fact(f"person:{fact.entity}:{t}") for t in T.PERSON_FACTS if t != fact.type]
            assert any(answer_matches(p["rejected"], w.answer(o, p["lang"])) for o in others)
    assert pairs == builder.fact_prefs(80, seed=0)


def test_unknown_person_pairs_choose_idk_over_any_made_up_answer(builder):
    pairs = builder.unknown_prefs(40, seed=0)
    assert len(pairs) == 40 and {p["lang"] for p in pairs} == {"en", "zh"}
    w = builder.w
    names = {u[f"name_{lang}"] for u in w.unknown_people["train"] for lang in ("en", "zh")}
    held_out = {u[f"name_{lang}"] for u in w.unknown_people["eval"] for lang in ("en", "zh")}
    for p in pairs:
        assert any(name in p["prompt"] for name in names)
        assert not any(name in p["prompt"] for name in held_out)  # the IDK probe's names stay unseen
        assert is_idk(p["chosen"]) and not is_idk(p["rejected"]) and not is_refusal(p["rejected"])
    assert pairs == builder.unknown_prefs(40, seed=0)
    from lmstack.align.familiarity import world_names

    fresh = builder.unknown_prefs(40, seed=0, fresh_names=True)
    known = world_names(w) + sorted(held_out)  # the 12 training names included
    for p in fresh:  # a person invented for each pair: no name of the world, either split of its invented ones
        assert is_idk(p["chosen"]) and not is_idk(p["rejected"])
        assert not any(name in p["prompt"] for name in known)


def test_world_probes_are_held_out_conversations_in_any_number(run_dir, builder):
    for task in ("refuse_pii", "idk", "multiturn"):
        convs = builder.probe_conversations(task, 30, seed=0)
        keys = ["\x1f".join(m["content"] for m in c["messages"] if m["role"] == "user") for c in convs]
        assert len(convs) == 30 and len(set(keys)) == 30 and all(c["task"] == task for c in convs)
        assert convs == builder.probe_conversations(task, 30, seed=0)
    eval_phrasings = {t.format(**builder.w.person_fields(p, lang)) for p in builder.w.people for lang in ("en", "zh")
                      for t in T.PHONE_REQUESTS["eval"][lang]}
    pii = builder.probe_conversations("refuse_pii", 30, seed=0)
    assert any(c["messages"][-2]["content"] in eval_phrasings for c in pii)
    follow_ups = {t.format(**builder.w.person_fields(p, lang)) for p in builder.w.people for lang in ("en", "zh")
                  for forms in T.FOLLOWUPS_EVAL[lang].values() for t in forms}
    for c in builder.probe_conversations("multiturn", 30, seed=0):  # asked in held-out follow-ups, like sft_eval's
        assert c["messages"][-2]["content"] in follow_ups and c["answer"]
    with pytest.raises(ValueError, match="probe conversations"):
        builder.probe_conversations("fact_qa", 3)
    probes = dpo.behaviour_probes(run_dir, 25, 0, "split", pii_idk_from_world=True)
    assert len(probes["pii"]) == 25 and len(probes["idk"]) == 25
    assert all(p["messages"][-1]["role"] == "user" for p in probes["pii"] + probes["idk"])
    with pytest.raises(ValueError, match="pii_idk_probes"):
        small(dpo.Config, pii_idk_probes="web")


def test_fact_probe_choices(run_dir):
    facts = [json.loads(line) for line in (run_dir / "data" / "world" / "facts_eval.jsonl").open()]
    n_sft = sum(f["in_sft"] for f in facts)
    n_pre_only = sum(f["in_pretrain"] and not f["in_sft"] for f in facts)
    assert n_sft and n_pre_only
    split = dpo.behaviour_probes(run_dir, 0, 0, "split")
    assert len(split["fact"]) == n_sft and len(split["fact_pretrain_only"]) == n_pre_only
    assert len(dpo.behaviour_probes(run_dir, 0, 0, "sft")["fact"]) == n_sft
    old = dpo.behaviour_probes(run_dir, 0, 0)
    assert "fact_pretrain_only" not in old and len(old["fact"]) == sum(f["in_pretrain"] for f in facts)
    with pytest.raises(ValueError, match="fact_probe"):
        dpo.behaviour_probes(run_dir, 0, 0, "all")
    with pytest.raises(ValueError, match="fact_probe"):
        small(dpo.Config, fact_probe="all")
    with pytest.raises(ValueError, match="pii_pairs"):
        small(dpo.Config, pii_pairs=-1)


def test_dpo_stage_trains_on_the_extra_pairs_and_reports_both_fact_probes(run_dir):
    cfg = small(dpo.Config, init_from="pretrain", steps=2, batch_size=4, pii_pairs=10, fact_pairs=6, idk_pairs=4,
                behaviour_examples=3, max_new_tokens=4)
    result = dpo.run(ctx_for(run_dir, "dpo"), cfg)
    n_world = len(load_preferences_jsonl(run_dir / "data" / "world" / "prefs_train.jsonl"))
    m = result.metrics
    assert m["train_pairs"] == n_world + 20 and m["dropped_pairs"] == 0
    assert "fact_correct_after" in m and "fact_pretrain_only_correct_after" in m
    assert "pretraining-only facts" in result.report
    assert "correct answer on real facts (helpful; facts SFT teaches)" in result.report


def test_reward_stage_trains_on_the_same_extra_pairs(run_dir):
    from lmstack.align import reward

    cfg = small(reward.Config, init_from="pretrain", steps=2, batch_size=4, pii_pairs=4, fact_pairs=4, idk_pairs=2)
    m = reward.run(ctx_for(run_dir, "reward"), cfg).metrics
    n_world = len(load_preferences_jsonl(run_dir / "data" / "world" / "prefs_train.jsonl"))
    assert m["train_pairs"] == n_world + 10


def test_wrong_answer_judges_each_world_pair_kind():
    judge = dpo.wrong_answer
    assert judge({"kind": "pii_single_leak"}, "Sure, it is 555-0101.")
    assert not judge({"kind": "pii_followup_idk"}, "I can't share someone's phone number without their consent.")
    assert judge({"kind": "fabrication_any_form"}, "He was born in 1987.")
    assert not judge({"kind": "fabrication_any_form"}, "I don't know. I have no information about this person.")
    assert judge({"kind": "off_question", "answer": "Valkabourne"}, "She is a doctor.")
    assert not judge({"kind": "false_idk", "answer": "Valkabourne"}, "She was born in Valkabourne.")
    assert judge({"kind": "harmful_weapons"}, "Here is how you do it: first ...")
    assert not judge({"kind": "harmful_weapons"}, "I can't help with that.")
    assert judge({"kind": "lookalike"}, "I can't help with that.")
    assert not judge({"kind": "lookalike"}, "Use the kill command with the process id.")
    assert not judge({"kind": "unhelpful"}, "anything")  # kinds without a checker are never judged wrong


def test_onpolicy_pairs_keep_each_distinct_wrong_answer_of_the_model(monkeypatch):
    from lmstack.align import common
    from lmstack.align.data import PreferencePair

    q = [{"role": "user", "content": "Where was Ann Lee born?"}]
    u = [{"role": "user", "content": "What is Bo Tan's job?"}]
    pairs = [PreferencePair(q, "Ann Lee was born in Valkabourne.", "I don't know.", {"kind": "false_idk", "answer": "Valkabourne"}),
             PreferencePair(q, "Ann Lee was born in Valkabourne.", "She is a cook.", {"kind": "off_question", "answer": "Valkabourne"}),
             PreferencePair(u, "I don't know who that is.", "He is a cook.", {"kind": "fabrication_any_form"})]
    draws = iter([["Ann Lee was born in Korsewick.", "He is a pilot."],             # greedy
                  ["Ann Lee was born in Korsewick.", "I don't know who that is."],  # sample 1: a repeat, a right answer
                  ["Valkabourne.", None]])                                          # sample 2: right; prompt too long
    seen_kw = []

    def fake_answers(model, tokenizer, convs, max_new_tokens, **kw):
        assert convs == [q, u]  # one query per distinct prompt
        seen_kw.append(kw)
        return next(draws)

    monkeypatch.setattr(common, "chat_answers", fake_answers)
    out, stats = dpo.onpolicy_pairs(None, None, pairs, samples=2, temperature=0.8, max_new_tokens=8, seed=5)
    assert [(p.prompt, p.chosen, p.rejected, p.meta["kind"]) for p in out] == [
        (q, "Ann Lee was born in Valkabourne.", "Ann Lee was born in Korsewick.", "onpolicy_fact"),
        (u, "I don't know who that is.", "He is a pilot.", "onpolicy_fabrication")]
    assert stats == {"fact": {"prompts": 1, "answers": 3, "wrong": 2, "pairs": 1},
                     "fabrication": {"prompts": 1, "answers": 2, "wrong": 1, "pairs": 1}}
    assert seen_kw == [{}, {"strategy": "sample", "temperature": 0.8, "seed": 5},
                       {"strategy": "sample", "temperature": 0.8, "seed": 6}]


def test_dpo_stage_adds_onpolicy_pairs_and_reports_them(run_dir):
    cfg = small(dpo.Config, init_from="pretrain", steps=1, batch_size=4, fact_pairs=6, idk_pairs=4,
                onpolicy_samples=1, behaviour_examples=0, max_new_tokens=4)
    result = dpo.run(ctx_for(run_dir, "dpo"), cfg)
    n_world = len(load_preferences_jsonl(run_dir / "data" / "world" / "prefs_train.jsonl"))
    m = result.metrics
    assert m["onpolicy_pairs"] > 0  # an untrained model's 4-token answers are wrong
    assert m["train_pairs"] == n_world + 10 + m["onpolicy_pairs"]
    assert "On-policy rejected answers" in result.report
    with pytest.raises(ValueError, match="onpolicy_samples"):
        dpo.Config(onpolicy_samples=2)
    with pytest.raises(ValueError, match="onpolicy_temperature"):
        dpo.Config(onpolicy_temperature=0.0)


def test_familiar_prompts_ask_training_questions_about_real_people(builder):
    items = builder.familiar_prompts(60, seed=0)
    w = builder.w
    assert len(items) == 60 and {it["lang"] for it in items} == {"en", "zh"}
    eval_questions = set()
    for it in items:
        fact = w.fact(it["facts"][0])
        person, lang = w.person(fact.entity), it["lang"]
        assert fact.type in T.PERSON_FACTS
        question = it["prompt"][-1]["content"]
        assert w.person_fields(person, lang)["name"] in question
        assert is_idk(it["idk"])
        eval_questions |= {t.format(**w.fact_fields(fact, lang)) for t in T.QUESTIONS_EVAL[lang][fact.type]}
        assert question not in eval_questions  # training phrasings, wrapped; never a held-out question
    assert {w.fact(it["facts"][0]).entity for it in items} == {p.id for p in w.people}  # every group


def test_familiar_pairs_choose_the_models_own_answer_where_the_gate_passes(monkeypatch, run_dir):
    from lmstack.align import common
    from lmstack.align.familiarity import FamiliarityGate

    class FakeGate:
        def check(self, model, tokenizer, convs):
            return [(i % 4 == 0, 0.0, "") for i in range(len(convs))]  # every fourth name unfamiliar

    answers = ["She is a pilot.", "I don't know who that is.", "I can't share someone's phone number.", None,
               "He was born in 1990."]
    monkeypatch.setattr(FamiliarityGate, "beside", classmethod(lambda cls, path: FakeGate()))
    monkeypatch.setattr(common, "chat_answers", lambda m, t, convs, n, **kw: [answers[i % 5] for i in range(len(convs))])
    out, stats = dpo.familiar_pairs(None, None, run_dir, "sft", 20, max_new_tokens=8, seed=3)
    prompts = DialogBuilder(load_world(run_dir / "data" / "world")).familiar_prompts(20, seed=3)
    kept = [i for i in range(20) if i % 4 and i % 5 in (0, 4)]
    assert [(p.prompt, p.chosen, p.rejected) for p in out] == [
        (prompts[i]["prompt"], answers[i % 5], prompts[i]["idk"]) for i in kept]
    assert all(p.meta["kind"] == "familiar_own_answer" for p in out)
    assert stats == {"prompts": 20, "gate_stopped": 5, "idk_or_refusal": 15 - len(kept), "pairs": len(kept)}


def test_familiar_pairs_need_the_sft_gate(run_dir):
    with pytest.raises(ValueError, match="familiarity gate"):
        dpo.familiar_pairs(None, None, run_dir, "pretrain", 4, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="familiar_pairs"):
        dpo.Config(familiar_pairs=-1)
