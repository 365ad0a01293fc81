"""Each alignment stage end to end on a tiny run directory (tiny world, tokenizer and model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmstack.align import dpo, ppo, reward, sft
from lmstack.align.lora import LoRAAdapterConfig
from lmstack.report import format_score
from align_tiny_run import build_tiny_run, ctx_for, small





@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("align_run"))


def test_sft_stage_trains_on_assistant_tokens_and_reports(run_dir):
    cfg = small(sft.Config, steps=15, batch_size=4, eval_examples=12, facts_examples=8, few_shot=1, max_new_tokens=6,
                optim={"lr": 3e-3}, schedule={"warmup_steps": 2}, gate_fresh=60)
    result = sft.run(ctx_for(run_dir, "sft"), cfg)
    m = result.metrics
    assert (run_dir / "checkpoints" / "sft" / "model.safetensors").exists()
    assert (run_dir / "plots" / "sft_loss.png").exists()
    assert m["final_loss"] < math.log(320) and m["train_examples"] > 0
    for key in ("accuracy", "base_accuracy", "pii_refusal"):
        assert 0.0 <= m[key] <= 1.0 or math.isnan(m[key])
    assert "Knowledge placement" in result.report and "base few-shot" in result.report
    # the world's four placement groups that the tiny world produces show up as rows
    assert "pretrain only" in result.report and "SFT only" in result.report
    # the unknown-entity gate is fitted, saved beside the checkpoint, and the answers are scored through it
    assert (run_dir / "checkpoints" / "sft" / "familiarity" / "gate.json").exists()
    assert "unknown-entity gate" in result.report and 0.0 <= m["gated_idk_rate"] <= 1.0
    assert m["gate_train_real_kept"] >= 0.9 and m["gate_stopped_idk"] >= 0.0
    losses = [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(l).get("stage") == "sft"]
    assert losses[-1] < losses[0]  # it learns


def test_sft_with_packing_and_lora(run_dir, tmp_path):
    cfg = small(sft.Config, steps=3, batch_size=4, packing=True, eval_examples=4, facts_examples=-1, few_shot=0,
                max_new_tokens=4, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, familiarity_gate=False)
    result = sft.run(ctx_for(run_dir, "sft"), cfg)
    assert result.metrics["trainable_params"] < result.metrics["total_params"] / 5
    assert (run_dir / "checkpoints" / "sft" / "adapter" / "adapter_config.json").exists()
    from lmstack.model import load_pretrained

    load_pretrained(run_dir / "checkpoints" / "sft")  # the merged model is a plain checkpoint


def test_lora_stage_qlora_saves_adapter_alone(run_dir):
    cfg = small(sft.LoRAStageConfig, steps=3, batch_size=4, eval_examples=4, facts_examples=-1, max_new_tokens=4,
                lora={"qlora": True})
    assert cfg.lora.r == 8  # the [lora] stage keeps r=8 when only qlora is overridden
    result = sft.run_lora(ctx_for(run_dir, "lora"), cfg)
    out = run_dir / "checkpoints" / "lora"
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert result.metrics["lora_modules"] == 14


def test_reward_stage(run_dir):
    cfg = small(reward.Config, init_from="pretrain", steps=12, batch_size=8, optim={"lr": 3e-3}, schedule={"warmup_steps": 1})
    result = reward.run(ctx_for(run_dir, "reward"), cfg)
    m = result.metrics
    assert 0.0 <= m["eval_accuracy"] <= 1.0
    rm = reward.load_reward_model(run_dir / "checkpoints" / "reward")
    ids = torch.randint(0, 300, (3, 9))
    scores = rm(ids, torch.tensor([9, 5, 2]))
    assert scores.shape == (3,)
    # the score reads the last REAL token: padding after it must not change it
    padded = torch.cat([ids[1:2, :5], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(rm(padded, torch.tensor([5])), scores[1:2], rtol=1e-5, atol=1e-5)
    assert "held-out accuracy" in result.report


@pytest.mark.parametrize("precompute", [True, False])
def test_dpo_stage(run_dir, precompute):
    cfg = small(dpo.Config, init_from="pretrain", steps=4, batch_size=4, precompute_ref=precompute,
                behaviour_examples=3, max_new_tokens=4)
    result = dpo.run(ctx_for(run_dir, "dpo"), cfg)
    m = result.metrics
    # before any update the policy IS the reference: h = 0 and the sigmoid loss is log 2 on every pair
    assert abs(m["eval_loss_before"] - math.log(2)) < 1e-4
    assert 0.0 <= m["eval_reward_accuracy"] <= 1.0
    assert "pii_refusal_before" in m and "fact_correct_after" in m
    assert (run_dir / "checkpoints" / "dpo" / "model.safetensors").exists()


def test_dpo_ipo_with_lora(run_dir):
    cfg = small(dpo.Config, init_from="pretrain", steps=2, batch_size=4, loss_type="ipo", behaviour_examples=0,
                lora={"r": 2})
    m = dpo.run(ctx_for(run_dir, "dpo"), cfg).metrics
    # IPO at h = 0: (0 - 1/(2 beta))^2 = 25 for beta = 0.1
    assert abs(m["eval_loss_before"] - 25.0) < 1e-3
    assert m["trainable_params"] < m["total_params"]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_ppo_and_grpo_stages(run_dir, algo):
    if not (run_dir / "checkpoints" / "reward" / "config.json").exists():
        reward.run(ctx_for(run_dir, "reward"), small(reward.Config, init_from="pretrain", steps=2, batch_size=4))
    cfg = small(ppo.Config, algo=algo, init_from="pretrain", iterations=2, prompts_per_iteration=4, group_size=2,
                max_new_tokens=5, minibatch_size=4, eval_prompts=3)
    result = ppo.run(ctx_for(run_dir, "ppo"), cfg)
    m = result.metrics
    assert math.isfinite(m["reward_last"]) and math.isfinite(m["kl_last"])
    assert (run_dir / f"plots/ppo_{algo}_reward_kl.png").exists()
    assert (run_dir / "checkpoints" / "ppo" / "model.safetensors").exists()


def test_stage_configs_reject_bad_values():
    from lmstack.config import ConfigError

    with pytest.raises(ConfigError, match="loss_type"):
        small(dpo.Config, loss_type="kto")
    with pytest.raises(ConfigError, match="group_size"):
        small(ppo.Config, algo="grpo", group_size=1)
    with pytest.raises(ConfigError, match="unknown key"):
        small(sft.Config, lora={"rank": 8})
    assert isinstance(small(dpo.Config, lora={"r": 8}).lora, LoRAAdapterConfig)


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        sft.run(ctx_for(tmp_path, "sft"), sft.Config())


def test_sft_with_pretraining_replay_records_every_fact_answer(tmp_path):
    import numpy as np

    from lmstack.data.shards import write_tokens
    from lmstack.tokenizer import Tokenizer

    root = build_tiny_run(tmp_path)
    cfg = small(sft.Config, steps=3, batch_size=4, eval_examples=4, facts_examples=10, few_shot=0, max_new_tokens=6,
                replay_batch_size=2, replay_weight=0.5, familiarity_gate=False, chat_probes=5)
    with pytest.raises(FileNotFoundError, match="replay_batch_size"):
        sft.run(ctx_for(root, "sft"), cfg)
    tok = Tokenizer.load(root / "tokenizer" / "tokenizer.json")
    ids = [i for doc in ("Li Wei was born in Valmora. " * 40, "Anna Weber is a pilot. " * 40)
           for i in [tok.bos_id] + tok.encode(doc)]
    write_tokens(root / "shards" / "train.bin", np.array(ids, dtype=np.uint16))
    result = sft.run(ctx_for(root, "sft"), cfg)
    assert "0.5 x LM loss on 2 pretraining windows per step (replay)" in result.report
    rows = [json.loads(line) for line in (root / "eval" / "sft_facts.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == 10 and {"question", "answer", "output", "correct", "group"} <= set(rows[0])
    assert result.metrics["facts_chat_accuracy"] == sum(r["correct"] for r in rows) / 10
    assert "false refusal" in result.report and "translate (chrF)" in result.report
    m = result.metrics  # the held-out probes: as many multi-turn and phone-number conversations as asked
    assert m["n_probe_multiturn"] == m["n_probe_pii_refusal"] == 5 and 0 <= m["probe_multiturn"] <= 1
    assert f"multi-turn follow-up {format_score(m['probe_multiturn'])} (n=5)" in result.report

    # DPO with the same replay term: it pulls the policy toward the pretraining windows
    from lmstack.model import load_pretrained

    def replay_text_loss(stage: str) -> float:
        model = load_pretrained(root / "checkpoints" / stage).eval()
        x = torch.tensor([ids[:64]])
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x[:, :-1]).logits[0], x[0, 1:]))

    before = replay_text_loss("sft")
    dcfg = dict(steps=4, batch_size=4, behaviour_examples=0, max_new_tokens=4, optim={"lr": 3e-3})
    dpo.run(ctx_for(root, "dpo"), small(dpo.Config, **dcfg))
    plain = replay_text_loss("dpo")
    result = dpo.run(ctx_for(root, "dpo"), small(dpo.Config, **dcfg, replay_batch_size=2, replay_weight=5.0))
    assert "5 x LM loss on 2 pretraining windows per step (replay)" in result.report
    assert replay_text_loss("dpo") < min(before, plain) - 0.1


def test_sft_can_leave_out_a_task_of_the_world(tmp_path):
    root = build_tiny_run(tmp_path)
    rows = [json.loads(line) for line in (root / "data" / "world" / "sft_train.jsonl").read_text("utf-8").splitlines()]
    n_idk = sum(r["task"] == "idk" for r in rows)
    assert n_idk > 0
    base = dict(steps=1, batch_size=4, eval_examples=2, facts_examples=-1, few_shot=0, max_new_tokens=2,
                familiarity_gate=False)
    everything = sft.run(ctx_for(root, "sft"), small(sft.Config, **base)).metrics["train_examples"]
    without = sft.run(ctx_for(root, "sft"), small(sft.Config, exclude_tasks=["idk"], **base))
    assert everything - without.metrics["train_examples"] == n_idk
    assert "without its idk conversations" in without.report
    with pytest.raises(ValueError, match="exclude_tasks: unknown task 'dont_know'"):
        sft.run(ctx_for(root, "sft"), small(sft.Config, exclude_tasks=["dont_know"], **base))
