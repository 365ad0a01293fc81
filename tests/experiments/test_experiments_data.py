"""The data experiments (data_quality, repetition, mixing, curriculum) and their shared harness, at toy size."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from lmstack.experiments import datarun as D

TOY = ["steps=8", "d_model=32", "n_layers=1", "n_heads=2", "seq_len=48", "batch_size=4", "vocab_size=290",
       "eval_windows=3", "threads=1"]


def test_fill_budget_is_exact_seeded_and_keeps_order_when_asked():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    a, epochs = D.fill_budget(docs, 20, seed=3)
    b, _ = D.fill_budget(docs, 20, seed=3)
    assert len(a) == 20 and torch.equal(a, b) and epochs == pytest.approx(20 / 9, abs=1e-3)
    ordered, _ = D.fill_budget(docs, 7, seed=None)
    assert ordered.tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_window_stream_visits_windows_in_order_or_shuffled_once_per_pass():
    stream = torch.arange(33)
    ordered = D.window_stream(stream, 4, 2, None)
    x, y = next(ordered)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    shuffled = D.window_stream(stream, 4, 2, 1)
    batches = [next(shuffled)[0] for _ in range(4)]
    firsts = sorted(int(b[r, 0]) for b in batches for r in range(2))
    assert firsts == [0, 4, 8, 12, 16, 20, 24, 28]  # every window once in the first pass


class _Parrot(torch.nn.Module):
    """Predicts the token that follows the last one in ``text`` (so it has memorised ``text`` exactly)."""

    def __init__(self, text: list[int], vocab: int = 50):
        super().__init__()
        self.next = {a: b for a, b in zip(text, text[1:])}
        self.vocab = vocab
        self.config = SimpleNamespace(max_seq_len=64)

    def forward(self, x, targets=None):
        logits = torch.zeros(x.shape[0], x.shape[1], self.vocab)
        for r in range(x.shape[0]):
            logits[r, -1, self.next.get(int(x[r, -1]), 0)] = 1.0
        return SimpleNamespace(logits=logits)


def test_memorised_counts_exact_continuations_only():
    seen = list(range(1, 21))
    unseen = [1, 2, 3, 4, 5] + [30 + i for i in range(15)]
    res = D.memorised(_Parrot(seen), [seen, unseen, [1, 2]], prefix=5, continuation=15)
    assert res["n"] == 2 and res["exact"] == 0.5
    assert res["token_match"] == 0.5  # the unseen continuation matches nowhere


def test_pretrain_is_deterministic_given_seed():
    size = D.RunSize(steps=3, d_model=16, n_layers=1, n_heads=2, seq_len=8, batch_size=2, threads=1)
    stream = torch.randint(0, 40, (200,), generator=torch.Generator().manual_seed(0))
    _, a, _ = D.pretrain(size, stream, 40, seed=5, desc="t")
    _, b, curve = D.pretrain(size, stream, 40, seed=5, desc="t", curve_every=1,
                             probe=lambda m: D.heldout_loss(m, [stream.tolist()], 8, 2))
    assert a == b and len(curve) == 4 and curve[-1][1] < curve[0][1] + 1.0


def test_crossing_multiplier_interpolates_in_log_space():
    from lmstack.experiments.data_quality import crossing_multiplier

    assert crossing_multiplier(3.0, [(1, 4.0), (4, 2.0)]) == pytest.approx(2.0)
    assert crossing_multiplier(1.0, [(1, 4.0), (4, 2.0)]) is None
    assert crossing_multiplier(5.0, [(1, 4.0), (4, 2.0)]) == 1.0


def test_dedup_removes_exact_and_near_copies_but_keeps_distinct_documents():
    from lmstack.experiments.repetition import dedup_counts, perturbed_copy

    rng = random.Random(0)
    base = " ".join(f"word{i} of a fairly long repeated document about nothing in particular" for i in range(20))
    others = [" ".join(f"other{j}-{i} unrelated text line" for i in range(30)) for j in range(5)]
    copies = [base] + [perturbed_copy(base, rng, 0.5) for _ in range(15)]
    keep, counts = dedup_counts(copies + others)
    assert counts["exact_removed"] > 0 and counts["minhash_removed"] > 0
    assert keep[len(copies):].all() and keep[:len(copies)].sum() == 1


def test_english_only_people_lose_every_chinese_page():
    from lmstack.data.world import WorldConfig, build_world
    from lmstack.experiments.mixing import english_only_world

    world = build_world(WorldConfig(n_people=12, n_sft_train=0, n_sft_eval=0, n_prefs_train=0, n_prefs_eval=0), 0)
    docs, chosen = english_only_world(world, 0.25, 0)
    names = [world.person(pid).name_zh for pid in chosen]
    assert len(chosen) == 3
    assert not any(n in d["text"] for d in docs if d["lang"] != "en" for n in names)
    assert any(world.person(pid).name_en in d["text"] for d in docs for pid in chosen)


def test_ngram_difficulty_ranks_repetitive_text_easier():
    from lmstack.experiments.curriculum import ngram_perplexities

    rng = random.Random(0)
    easy = "the cat sat on the mat. " * 20
    hard = "".join(rng.choice("qwxzjkvbpy0123456789") for _ in range(400))
    ppl = ngram_perplexities([easy, hard, "the dog sat on the log. " * 10], 3)
    assert ppl[0] < ppl[1] and ppl[2] < ppl[1]


@pytest.mark.parametrize("name, extra", [
    ("data-quality", ["sources=['shakespeare','code']", "max_chars_per_source=15000", "exchange_base_steps=2",
                      "exchange_multipliers=[1,2]", "noisy_fractions=[0.0,1.0]"]),
    ("repetition", ["sources=['shakespeare','code']", "max_chars_per_source=15000", "repeats=[1,4]",
                    "prefix=8", "continuation=8"]),
    ("curriculum", ["sources=['shakespeare','code']", "max_chars_per_source=15000", "seeds=[0]",
                    "orders=['shuffled','short_to_long']", "curve_points=2"]),
])
def test_experiment_writes_report_and_results(tmp_path, capsys, name, extra):
    from lmstack.experiments.cli import run_one

    assert run_one(name, TOY + extra, tmp_path) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    report = (tmp_path / "report.md").read_text()
    assert result["runs"] and "Measured" in report and list(tmp_path.glob("*.png"))
    assert "result: " in capsys.readouterr().out


def test_mixing_runs_with_per_language_loss_and_qa(tmp_path, capsys):
    from lmstack.experiments.cli import run_one

    assert run_one("mixing", TOY + ["max_chars_per_source=15000", "en_fractions=[0.0,1.0]", "fact_items=4"],
                   tmp_path) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    groups = {"en", "zh_bilingual", "zh_english_only", "zh_unseen"}
    assert set(runs[0]["loss"]) >= {"world-en", "world-zh"} and set(runs[0]["qa"]) == groups
    assert set(runs[0]["answer_nll"]) == groups and all(v > 0 for v in runs[0]["answer_nll"].values())
    assert "result: loss_world-zh_en0=" in capsys.readouterr().out


def test_configs_reject_bad_values():
    from lmstack.config import ConfigError
    from lmstack.experiments.cli import parse_config
    from lmstack.experiments.curriculum import CurriculumConfig
    from lmstack.experiments.mixing import MixingConfig

    with pytest.raises(ConfigError, match="orders"):
        parse_config(CurriculumConfig, ["orders=['random']"], "experiment curriculum")
    with pytest.raises(ConfigError, match="en_fractions"):
        parse_config(MixingConfig, ["en_fractions=[1.5]"], "experiment mixing")


def test_curriculum_is_deterministic_given_seed(tmp_path):
    from lmstack.experiments.curriculum import CurriculumConfig, run_experiment

    cfg = CurriculumConfig(steps=4, d_model=16, n_layers=1, n_heads=2, seq_len=32, batch_size=2, vocab_size=280,
                           eval_windows=2, threads=1, seeds=[3], orders=["easy_to_hard"], sources=["shakespeare"],
                           max_chars_per_source=6000, curve_points=2)
    first = run_experiment(cfg, tmp_path / "a")["runs"]
    second = run_experiment(cfg, tmp_path / "b")["runs"]
    strip = lambda runs: [{k: v for k, v in r.items() if k != "seconds"} for r in runs]  # noqa: E731
    assert strip(first) == strip(second)


def test_experiment_names_accept_underscores(capsys):
    from lmstack.experiments.cli import main

    with pytest.raises(SystemExit):
        main(["data_quality", "--help"])
    assert "data-quality" in capsys.readouterr().out


def test_repetition_dedup_verdict():
    from lmstack.experiments.repetition import dedup_verdict

    def result(loss_k1, loss_k, mem_k, loss_after, mem_after, seeds=(0, 1)):
        runs = [{"k": k, "seed": s, "heldout_loss": loss, "memorised": {"exact": m}}
                for s in seeds for k, loss, m in ((1, loss_k1, 0.0), (64, loss_k, mem_k))]
        dedup = [{"k": 64, "seed": s, "heldout_loss": loss_after, "memorised": {"exact": mem_after},
                  "dedup": {"copies_removed": 60, "copies_total": 64}} for s in seeds]
        return {"runs": runs, "dedup": dedup}

    assert "**dedup removes the effect** (on held-out loss and memorisation)" in dedup_verdict(
        result(3.0, 3.2, 0.5, 3.0, 0.0), noise=0.02)
    assert "does not fully remove" in dedup_verdict(result(3.0, 3.2, 0.5, 3.15, 0.4), noise=0.02)
    text = dedup_verdict(result(3.0, 3.005, 0.0, 3.0, 0.0), noise=0.02)
    assert "**nothing to remove**" in text and "removed 94% of the copies" in text
    assert "One seed" in dedup_verdict(result(3.0, 3.005, 0.0, 3.0, 0.0, seeds=(0,)), noise=0.0)
