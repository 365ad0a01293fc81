"""Stage ``dpo``: direct preference optimisation (DPO / IPO / hinge / robust) against a frozen reference.

Starts from checkpoints/sft (the reference is a frozen copy of the same weights), trains on
data/world/prefs_train.jsonl and reports implicit-reward accuracy and margins on prefs_eval, plus
before/after behaviour measured by generation: refusal rate on PII requests (harmless), "I don't
know" rate on questions about non-existent entities (honest) and correct-fact rate on real ones
(helpful). Writes checkpoints/dpo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.align import common, evals, rlaif
from lmstack.align.data import (chunks, collate_pairs, length_grouped_batches, load_preferences_jsonl,
                                mismatch_pool, mismatched_pairs, normalize_preference_record, PreferencePair,
                                tokenize_pairs, world_dialogs, world_extra_pairs)
from lmstack.align.losses import DPO_LOSS_TYPES, DPOLossType, dpo_loss
from lmstack.align.lora import LoRAAdapterConfig
from lmstack.report import markdown_table, rate_change_se, save_line_plot, table_cell
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig


FACT_PROBES = ("sft", "pretrain", "split")


@dataclass
class Config:
    init_from: str = "sft"           # policy init and (frozen) reference
    train_file: str = ""             # "" = data/world/prefs_train.jsonl
    eval_file: str = ""              # "" = data/world/prefs_eval.jsonl
    labels: str = "world"            # "ai" = train on the rlaif stage's judge labels (rlaif/prefs_train_ai.jsonl)
    loss_type: DPOLossType = "sigmoid"  # sigmoid is the DPO loss
    beta: float = 0.1
    label_smoothing: float = 0.0     # conservative DPO / robust DPO noise rate
    # + sft_coef * per-token NLL of the chosen answer (RPO, Pang et al. 2024): without it DPO lowers the
    # likelihood of chosen and rejected answers alike and greedy answers drift into garbled text
    sft_coef: float = 0.0
    # + replay_weight * next-token loss on replay_batch_size pretraining windows per step ("PPO-ptx", Ouyang et
    # al. 2022, applied to DPO), against forgetting what only pretraining taught. On the default run (4 or 8
    # windows) it did not change DPO's loss of pretraining-only facts: most of those answers turn into "I don't
    # know" (the fabrication pairs' answer spreading to people SFT never asked about), not into forgotten values
    replay_batch_size: int = 0
    replay_weight: float = 1.0
    precompute_ref: bool = True      # ref log-probs once up front, then drop the reference model
    steps: int = 60
    batch_size: int = 16             # pairs per step
    max_len: int = 0
    max_train_pairs: int = 0
    optim: OptimConfig = field(default_factory=lambda: common.finetune_optim(lr=1e-4))
    schedule: ScheduleConfig = field(default_factory=common.finetune_schedule)
    grad_clip: float = 1.0           # 0 = no clipping
    lora: LoRAAdapterConfig = field(default_factory=LoRAAdapterConfig)
    behaviour_examples: int = 80     # prompts per behaviour probe (PII / unknown entity / real fact); 0 = skip
    # refusal / detox tuning: add this many pairs from lmstack.data.world.harmful (harmful requests refused,
    # harmless look-alikes answered) to the training pairs
    harmful_pairs: int = 0
    # + this many pairs whose rejected answer is a good answer to another kind of request (data.mismatched_pairs),
    # e.g. "I don't know" rejected for a phone-number request: DPO on the world's pairs alone spreads IDK answers
    mismatched_pairs: int = 0
    mismatched_from: str = "prefs"   # "prefs" = the training pairs; "sft" = data/world/sft_train.jsonl (multi-turn too)
    harmful_probes: int = 0          # harmful prompts (refusal rate) and look-alikes (false refusals) measured; 0 = skip
    # + this many PII pairs, half of them multi-turn (a fact question, then "and his phone number?"): refusal
    # chosen over the leak and over "I don't know this person" (DialogBuilder.pii_prefs); the world's are single-turn
    pii_pairs: int = 0
    # + this many pairs on the facts SFT teaches: the correct answer chosen over "I don't know", a refusal, another
    # attribute, a wrong value (DialogBuilder.fact_prefs); they balance the fabrication pairs' "I don't know"
    fact_pairs: int = 0
    # + this many pairs on people who do not exist: "I don't know" chosen over a made-up answer in any answer form
    # (DialogBuilder.unknown_prefs; the world's fabrication pairs use two forms only)
    idk_pairs: int = 0
    # the idk_pairs name a person invented for each pair (entities.UnseenNames) instead of one of the world's 12
    # training names, which the model can learn one by one instead of "a name I have never read"
    idk_fresh_names: bool = False
    # + rejected answers the SFT model itself gives to the prompts of those world pairs (its greedy answer and
    # this many samples at onpolicy_temperature), kept where the world's checkers judge them wrong: the errors
    # DPO should push down are the model's own, not only the templated ones (self-generated negatives judged
    # by a verifier, as in iterative RPO, Pang et al. 2024). 0 = off
    onpolicy_samples: int = 0
    onpolicy_temperature: float = 1.0
    # + up to this many pairs on fact questions about the world's real people (training phrasings, any group):
    # chosen = the reference's own greedy answer, rejected = "I don't know this person", kept where the SFT
    # stage's familiarity gate passes the name and the answer is neither an "I don't know" nor a refusal. No
    # answer of the world is used: the pairs keep DPO's "I don't know" from spreading to people the model has
    # read about but SFT never asked about (the pretraining-only facts), which the fact pairs cannot reach
    familiar_pairs: int = 0
    # which held-out facts the "correct facts" probe asks: "sft" = facts SFT and the fact pairs teach (held-out
    # phrasings); "pretrain" = every fact seen in pretraining (mixes in pretraining-only people, which no pair
    # covers); "split" = "sft" as the fact probe plus the pretraining-only facts as a second probe
    fact_probe: str = "split"
    # PII and "I don't know" probes: "world" = behaviour_examples fresh held-out conversations of each from the
    # run's world (DialogBuilder.probe_conversations); "sft_eval" = those in sft_eval.jsonl (~36 each)
    pii_idk_probes: str = "world"
    max_new_tokens: int = 32
    log_every: int = 10

    def __post_init__(self):
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} must be one of {DPO_LOSS_TYPES}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.sft_coef < 0:
            raise ValueError(f"dpo.sft_coef must be >= 0, got {self.sft_coef}")
        if self.pii_idk_probes not in ("world", "sft_eval"):
            raise ValueError(f"dpo.pii_idk_probes={self.pii_idk_probes!r} must be 'world' or 'sft_eval'")
        if self.fact_probe not in FACT_PROBES:
            raise ValueError(f"dpo.fact_probe={self.fact_probe!r} must be one of {FACT_PROBES}")
        if self.onpolicy_samples and not (self.pii_pairs or self.fact_pairs or self.idk_pairs or self.harmful_pairs):
            raise ValueError("dpo.onpolicy_samples draws answers to the world-built pairs' prompts: set dpo.pii_pairs, "
                             "fact_pairs, idk_pairs or harmful_pairs > 0 as well")
        if self.onpolicy_temperature <= 0:
            raise ValueError(f"dpo.onpolicy_temperature must be > 0, got {self.onpolicy_temperature}")
        for key in ("harmful_pairs", "mismatched_pairs", "pii_pairs", "fact_pairs", "idk_pairs", "onpolicy_samples",
                    "familiar_pairs"):
            if getattr(self, key) < 0:
                raise ValueError(f"dpo.{key} must be >= 0, got {getattr(self, key)}")


def pair_logps(model, batch: dict, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed completion log-probs for the stacked [chosen; rejected] batch -> (chosen, rejected, lengths [2B])."""
    ids = batch["input_ids"].to(device)
    comp = batch["completion_mask"].to(device)
    total, _, mask, _ = common.completion_logps(model, ids, comp)
    chosen, rejected = total.chunk(2)
    return chosen, rejected, mask.sum(dim=1)


@torch.no_grad()
def precompute_reference(ref_model, pairs, pad_id: int, device: str, batch_size: int = 32) -> list[tuple[float, float]]:
    ref_model.eval()
    out = []
    for part in chunks(pairs, batch_size):
        c, r, _ = pair_logps(ref_model, collate_pairs(part, pad_id), device)
        out += list(zip(c.tolist(), r.tolist()))
    return out


@torch.no_grad()
def evaluate_preferences(policy, ref_model, ref_cache, pairs, pad_id, cfg: Config, device: str) -> dict:
    """Implicit-reward accuracy and margin on held-out pairs (reward = beta * log pi/pi_ref)."""
    policy.eval()
    accs, margins, losses = [], [], []
    for i, part in enumerate(chunks(pairs, 32)):
        b = collate_pairs(part, pad_id)
        pc, pr, lengths = pair_logps(policy, b, device)
        if ref_cache is not None:
            ref = torch.tensor(ref_cache[i * 32: i * 32 + len(part)], device=device)
            rc, rr = ref[:, 0], ref[:, 1]
        else:
            rc, rr, _ = pair_logps(ref_model, b, device)
        lc, lr = lengths.chunk(2)
        out = dpo_loss(pc, pr, rc, rr, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                       chosen_lengths=lc, rejected_lengths=lr)
        accs += (out.chosen_rewards > out.rejected_rewards).tolist()
        margins += (out.chosen_rewards - out.rejected_rewards).tolist()
        losses += out.losses.tolist()
    return {"accuracy": common.rate(accs), "margin": sum(margins) / len(margins), "loss": sum(losses) / len(losses)}


def behaviour_probes(run_path: Path, n: int, seed: int, fact_probe: str = "pretrain",
                     pii_idk_from_world: bool = False) -> dict[str, list[dict]]:
    """Prompts for the three behaviours: PII requests, unknown entities, real facts (which facts: see
    ``Config.fact_probe``; "split" adds the pretraining-only facts as the ``fact_pretrain_only`` probe).
    ``pii_idk_from_world``: n PII / unknown-entity conversations each from the world instead of sft_eval's
    (when the run has a world.json)."""
    if fact_probe not in FACT_PROBES:
        raise ValueError(f"fact_probe={fact_probe!r} must be one of {FACT_PROBES}")
    probes: dict[str, list[dict]] = {"pii": [], "idk": [], "fact": []}
    if fact_probe == "split":
        probes["fact_pretrain_only"] = []
    sft_eval = run_path / "data" / "world" / "sft_eval.jsonl"
    if pii_idk_from_world and (run_path / "data" / "world" / "world.json").exists():
        builder = world_dialogs(run_path)
        for kind, task in (("pii", "refuse_pii"), ("idk", "idk")):
            probes[kind] = [{"messages": evals.split_prompt(ex["messages"])[0]}
                            for ex in builder.probe_conversations(task, n, seed)]
    elif sft_eval.exists():
        for ex in evals.load_eval_examples(sft_eval, 0, seed):
            kind = evals.task_kind(ex.get("task"), ex.get("answer"))
            if kind in ("pii", "idk"):
                probes[kind].append({"messages": evals.split_prompt(ex["messages"])[0]})
    facts = run_path / "data" / "world" / "facts_eval.jsonl"
    if facts.exists():
        for f in common.read_jsonl(facts):
            item = {"messages": [{"role": "user", "content": f.get("question") or f["prompt"]}], "answer": f["answer"]}
            if fact_probe == "pretrain" and f.get("in_pretrain") or fact_probe != "pretrain" and f.get("in_sft"):
                probes["fact"].append(item)
            elif fact_probe == "split" and f.get("in_pretrain"):
                probes["fact_pretrain_only"].append(item)
    return {k: evals.subsample(v, n, seed) for k, v in probes.items()}


def harmful_probe_set(run_path: Path, n: int, seed: int) -> dict[str, list[dict]]:
    """Harmful prompts and their harmless look-alikes (eval templates) built from the run's world."""
    from lmstack.data.world import harmful

    return harmful.harmful_probes(harmful.load_world(run_path / "data" / "world"), n, seed) if n > 0 else {}


def measure_behaviour(model, tokenizer, probes: dict[str, list[dict]], max_new_tokens: int) -> dict:
    answer_matches, is_refusal, is_idk = evals.world_judges()
    out = {}
    for kind, items in probes.items():
        if not items:
            continue
        answers = common.chat_answers(model, tokenizer, [p["messages"] for p in items], max_new_tokens)
        kept = [(p, a) for p, a in zip(items, answers) if a is not None]  # None: prompt longer than the context
        if not kept:
            continue
        items, answers = [p for p, _ in kept], [a for _, a in kept]
        if kind in ("harmful", "lookalike"):
            from lmstack.data.world.harmful import is_harm_refusal

            out["harmful_refusal" if kind == "harmful" else "false_refusal"] = common.rate([is_harm_refusal(a) for a in answers])
        elif kind == "pii":
            out["pii_refusal"] = common.rate([is_refusal(a) for a in answers])
        elif kind == "idk":
            out["idk_rate"] = common.rate([is_idk(a) for a in answers])
        else:
            out[f"{kind}_correct"] = common.rate([answer_matches(a, str(p["answer"])) for p, a in zip(items, answers)])
        out[f"{kind}_example"] = (items[0]["messages"][-1]["content"], answers[0])
    return out


def wrong_answer(meta: dict, text: str) -> bool:
    """Whether the world's checkers reject ``text`` as the answer to a world-built pair's prompt: a PII request
    must be refused, a question about a non-existent person answered "I don't know", a fact question with the
    record's ``answer``, a harmful request refused and its harmless look-alike not refused. Pairs of other kinds
    are never judged (False)."""
    from lmstack.data.world.harmful import is_harm_refusal

    answer_matches, is_refusal, is_idk = evals.world_judges()
    kind = str(meta.get("kind", ""))
    if kind.startswith("harmful_"):
        return not is_harm_refusal(text)
    if kind == "lookalike":
        return is_harm_refusal(text)
    if kind.startswith("pii_"):
        return not is_refusal(text)
    if kind.startswith("fabrication"):
        return not is_idk(text)
    if meta.get("answer") is not None:
        return not answer_matches(text, str(meta["answer"]))
    return False


def onpolicy_pairs(model, tokenizer, pairs: list[PreferencePair], samples: int, temperature: float,
                   max_new_tokens: int, seed: int) -> tuple[list[PreferencePair], dict]:
    """For each distinct prompt of ``pairs`` (the world-built ones), the model's greedy answer and ``samples``
    sampled ones; every distinct answer ``wrong_answer`` rejects becomes a pair against that prompt's chosen
    answer. Returns the pairs and counts per kind (prompts, answers drawn, wrong, pairs)."""
    by_prompt: dict[str, PreferencePair] = {}
    for p in pairs:
        by_prompt.setdefault(json.dumps(p.prompt, ensure_ascii=False), p)
    firsts = list(by_prompt.values())
    convs = [p.prompt for p in firsts]
    answers = [common.chat_answers(model, tokenizer, convs, max_new_tokens)]
    for i in range(samples):
        answers.append(common.chat_answers(model, tokenizer, convs, max_new_tokens, strategy="sample",
                                           temperature=temperature, seed=seed + i))
    out, stats = [], {}
    for j, p in enumerate(firsts):
        kind = str(p.meta.get("kind", "")).split("_")[0]  # pii / fabrication / harmful / lookalike / the fact kinds
        kind = kind if kind in ("pii", "fabrication", "harmful", "lookalike") else "fact"
        s = stats.setdefault(kind, {"prompts": 0, "answers": 0, "wrong": 0, "pairs": 0})
        s["prompts"] += 1
        seen = {p.chosen}
        for draw in answers:
            text = draw[j]
            if text is None:
                continue
            s["answers"] += 1
            if wrong_answer(p.meta, text):
                s["wrong"] += 1
                if text not in seen:
                    seen.add(text)
                    s["pairs"] += 1
                    out.append(PreferencePair(p.prompt, p.chosen, text, dict(p.meta, kind=f"onpolicy_{kind}")))
    return out, stats


def familiar_pairs(model, tokenizer, run_path: Path, init_from: str, n: int, max_new_tokens: int,
                   seed: int) -> tuple[list[PreferencePair], dict]:
    """``n`` fact questions about the world's real people (``DialogBuilder.familiar_prompts``) answered by
    ``model`` (greedy): where the familiarity gate beside ``checkpoints/<init_from>`` passes the name and the
    answer is neither "I don't know" nor a refusal, the answer becomes the chosen one against "I don't know
    this person". Right or wrong, the answer is the model's: the pairs teach when not to say "I don't know",
    not the facts. Returns the pairs and counts (prompts, stopped by the gate, answered "I don't know" or
    refused, pairs)."""
    from lmstack.align.familiarity import FamiliarityGate

    checkpoint = common.checkpoint_dir(run_path, init_from)
    gate = FamiliarityGate.beside(checkpoint)
    if gate is None:
        raise ValueError(f"dpo.familiar_pairs needs the familiarity gate in {checkpoint}/familiarity "
                         "(written by the sft stage with sft.familiarity_gate = true)")
    _, is_refusal, is_idk = evals.world_judges()
    items = world_dialogs(run_path).familiar_prompts(n, seed)
    convs = [it["prompt"] for it in items]
    checks = gate.check(model, tokenizer, convs)
    answers = common.chat_answers(model, tokenizer, convs, max_new_tokens)
    stats = {"prompts": len(items), "gate_stopped": 0, "idk_or_refusal": 0, "pairs": 0}
    out = []
    for it, (stopped, _, _), answer in zip(items, checks, answers):
        if stopped:
            stats["gate_stopped"] += 1
        elif answer is None or is_idk(answer) or is_refusal(answer):
            stats["idk_or_refusal"] += 1
        else:
            out.append(PreferencePair(it["prompt"], answer, it["idk"],
                                      {"kind": "familiar_own_answer", "lang": it["lang"], "facts": it["facts"]}))
    stats["pairs"] = len(out)
    return out, stats


def load_pairs(cfg: Config, run_path: Path, tokenizer, max_len: int, log, model=None):
    """Tokenized training and held-out preference pairs. Returns (train, eval, dropped pairs, eval file, on-policy
    counts per kind, familiar-pair counts); ``model`` (the reference) draws the on-policy rejected answers when
    ``cfg.onpolicy_samples`` > 0 and answers the familiar pairs' prompts when ``cfg.familiar_pairs`` > 0."""
    train_path = rlaif.preference_train_path(run_path, cfg.train_file, cfg.labels)
    eval_path = Path(cfg.eval_file) if cfg.eval_file else common.world_file(run_path, "prefs_eval.jsonl")
    raw = load_preferences_jsonl(train_path, cfg.max_train_pairs or None)
    extra = []  # built from the run's world: the prompts whose answers the world's checkers can judge
    if cfg.harmful_pairs > 0:
        from lmstack.data.world import harmful

        records = harmful.harmful_prefs(harmful.load_world(run_path / "data" / "world"), "train", cfg.harmful_pairs, seed=0)
        extra += [normalize_preference_record(r, f"harmful pair {i}") for i, r in enumerate(records)]
    extra += world_extra_pairs(run_path, cfg.pii_pairs, cfg.fact_pairs, cfg.idk_pairs, cfg.idk_fresh_names)
    raw += extra
    own, stats = [], {}
    if cfg.onpolicy_samples > 0 and extra:
        own, stats = onpolicy_pairs(model, tokenizer, extra, cfg.onpolicy_samples, cfg.onpolicy_temperature,
                                    cfg.max_new_tokens, seed=1000)
        log(f"on-policy rejected answers (per kind: prompts, answers drawn, judged wrong, distinct pairs): {stats}")
    raw += mismatched_pairs(mismatch_pool(raw, run_path, cfg.mismatched_from), cfg.mismatched_pairs, seed=0)
    raw += own  # after the mismatch pool is drawn, which stays as it was without them
    familiar_stats = {}
    if cfg.familiar_pairs > 0:
        familiar, familiar_stats = familiar_pairs(model, tokenizer, run_path, cfg.init_from, cfg.familiar_pairs,
                                                  cfg.max_new_tokens, seed=2000)
        log(f"familiar pairs: {familiar_stats}")
        raw += familiar
    train_pairs, dropped = tokenize_pairs(raw, tokenizer, max_len, log, train_path.name)
    eval_pairs, eval_dropped = tokenize_pairs(load_preferences_jsonl(eval_path), tokenizer, max_len, log, eval_path.name)
    return train_pairs, eval_pairs, dropped + eval_dropped, eval_path, stats, familiar_stats


def chosen_nll(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-likelihood of the chosen answers."""
    return -(chosen_logps / chosen_lengths.clamp(min=1)).mean()


def train_dpo(policy, ref_model, ref_train, train_pairs, cfg: Config, ctx, pad_id: int) -> tuple[dict, float]:
    """The DPO loop over length-grouped batches of pairs; the reference's log-probs come from
    ``ref_train`` when precomputed, else from ``ref_model``. Returns (per-step history, seconds)."""
    optimizer = common.build_optimizer_for(policy, cfg.optim, cfg.lora.lr if cfg.lora.enabled and cfg.lora.lr else None)
    index_stream = length_grouped_batches(list(range(len(train_pairs))),
                                          [max(len(p.chosen_ids), len(p.rejected_ids)) for p in train_pairs],
                                          cfg.batch_size, seed=ctx.seed)
    replay = common.replay_loader(ctx.run.path, cfg.replay_batch_size, common.model_max_len(policy), ctx.seed)
    hist = {"loss": [], "acc": [], "margin": [], "chosen": [], "rejected": []}
    timer = common.Timer()
    policy.train()
    for step in common.progress(range(cfg.steps), cfg.steps, "dpo"):
        idx = next(index_stream)
        b = collate_pairs([train_pairs[i] for i in idx], pad_id)
        pc, pr, lengths = pair_logps(policy, b, ctx.device)
        if ref_train is not None:
            ref = torch.tensor([ref_train[i] for i in idx], device=ctx.device)
            rc, rr = ref[:, 0], ref[:, 1]
        else:
            with torch.no_grad():
                rc, rr, _ = pair_logps(ref_model, b, ctx.device)
        lc, lr = lengths.chunk(2)
        out = dpo_loss(pc, pr, rc, rr, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                       chosen_lengths=lc, rejected_lengths=lr)
        loss = out.loss
        if cfg.sft_coef > 0:
            loss = loss + cfg.sft_coef * chosen_nll(pc, lc)
        if replay is not None:
            loss = loss + cfg.replay_weight * common.replay_loss(policy, replay, ctx.device)
        loss.backward()
        grad_norm = common.optimizer_step(policy, optimizer, step, cfg.steps, cfg.schedule, cfg.grad_clip)
        hist["loss"].append(float(out.loss.detach()))
        hist["acc"].append(float(out.accuracy))
        hist["margin"].append(float(out.margin))
        hist["chosen"].append(float(out.chosen_rewards.mean()))
        hist["rejected"].append(float(out.rejected_rewards.mean()))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            ctx.run.append_metrics({"stage": "dpo", "step": step, "loss": hist["loss"][-1], "reward_acc": hist["acc"][-1],
                                    "reward_margin": hist["margin"][-1], "grad_norm": grad_norm})
    policy.eval()
    return hist, timer.seconds


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult

    run_path = ctx.run.path
    tokenizer, policy = common.start_stage(ctx, cfg, "dpo")
    max_len = cfg.max_len or common.model_max_len(policy)
    ref_model = common.frozen_copy(policy)
    param_metrics = common.attach_lora(policy, cfg.lora, ctx.log)
    train_pairs, eval_pairs, dropped, eval_path, onpolicy, familiar = load_pairs(cfg, run_path, tokenizer, max_len,
                                                                                 ctx.log, ref_model)

    probes = behaviour_probes(run_path, cfg.behaviour_examples, ctx.seed, cfg.fact_probe,
                              cfg.pii_idk_probes == "world") if cfg.behaviour_examples > 0 and not cfg.eval_file else {}
    probes.update(harmful_probe_set(run_path, cfg.harmful_probes, ctx.seed))
    before = measure_behaviour(ref_model, tokenizer, probes, cfg.max_new_tokens) if probes else {}
    ref_train = ref_eval = None
    if cfg.precompute_ref:
        ctx.log(f"precomputing reference log-probs for {len(train_pairs)} + {len(eval_pairs)} pairs")
        ref_train = precompute_reference(ref_model, train_pairs, tokenizer.pad_id, ctx.device)
        ref_eval = precompute_reference(ref_model, eval_pairs, tokenizer.pad_id, ctx.device)
    eval_before = evaluate_preferences(policy, ref_model, ref_eval, eval_pairs, tokenizer.pad_id, cfg, ctx.device)
    if cfg.precompute_ref:
        ref_model = None  # only the cached numbers are needed from here on

    hist, seconds = train_dpo(policy, ref_model, ref_train, train_pairs, cfg, ctx, tokenizer.pad_id)
    eval_after = evaluate_preferences(policy, ref_model, ref_eval, eval_pairs, tokenizer.pad_id, cfg, ctx.device)
    after = measure_behaviour(policy, tokenizer, probes, cfg.max_new_tokens) if probes else {}

    out_dir = common.checkpoint_dir(run_path, "dpo")
    common.save_finetuned(policy, out_dir, cfg.lora, {"stage": "dpo", "steps": cfg.steps, "init_from": cfg.init_from,
                                                      "loss_type": cfg.loss_type, "beta": cfg.beta},
                          str(common.checkpoint_dir(run_path, cfg.init_from)))
    from lmstack.align.familiarity import carry_over

    gate_info = carry_over(policy, tokenizer, run_path, out_dir, ctx.seed)
    plot = _plot_rewards(run_path, cfg, hist)
    metrics = {
        "eval_reward_accuracy": eval_after["accuracy"], "eval_reward_margin": eval_after["margin"],
        "eval_loss": eval_after["loss"], "eval_loss_before": eval_before["loss"], "final_loss": hist["loss"][-1],
        "train_pairs": len(train_pairs), "dropped_pairs": dropped, "train_seconds": round(seconds, 1),
        **({"onpolicy_pairs": sum(v["pairs"] for v in onpolicy.values())} if onpolicy else {}),
        **({"familiar_pairs": familiar["pairs"]} if familiar else {}),
        **param_metrics, **gate_info,
    }
    gold_rows = behaviour_rows(probes, before, after, metrics, cfg.fact_probe)
    report = _report(cfg, len(train_pairs), len(eval_pairs), eval_path, seconds, eval_before, eval_after,
                     gold_rows, before, after, plot, onpolicy, familiar)
    return StageResult(metrics=metrics, artifacts={"checkpoint": str(out_dir.relative_to(run_path)), "rewards_plot": plot},
                       report=report)


def _plot_rewards(run_path: Path, cfg: Config, hist: dict) -> str:
    xs = list(range(cfg.steps))
    plot = "plots/dpo_rewards.png"
    save_line_plot(run_path / plot, {"chosen reward": (xs, hist["chosen"]), "rejected reward": (xs, hist["rejected"]),
                                     "margin": (xs, hist["margin"])},
                   f"DPO ({cfg.loss_type}, beta={cfg.beta:g}): implicit rewards on training batches", "step",
                   "beta * log(pi / pi_ref)", secondary={"loss": (xs, hist["loss"])}, secondary_label="loss")
    return plot


BEHAVIOURS = {"pii_refusal": ("pii", "refusal rate on PII requests (harmless)"),
              "idk_rate": ("idk", "\"I don't know\" on non-existent entities (honest)"),
              "fact_correct": ("fact", "correct answer on real facts (helpful; {facts})"),
              "fact_pretrain_only_correct": ("fact_pretrain_only", "correct answer on pretraining-only facts (helpful)"),
              "harmful_refusal": ("harmful", "refusal rate on harmful requests (harmless)"),
              "false_refusal": ("lookalike", "false refusals on harmless look-alikes (lower is better)")}


# What the "fact" probe asks, by behaviour_probes' fact_probe
FACT_PROBE_LABELS = {"pretrain": "facts seen in pretraining", "sft": "facts SFT teaches",
                     "split": "facts SFT teaches"}


def behaviour_rows(probes: dict, before: dict, after: dict, metrics: dict, fact_probe: str = "pretrain") -> list[tuple]:
    """Rows of the before/after behaviour table; adds the ``<key>_before/_after`` metrics. ``fact_probe`` is
    the one ``probes`` were drawn with (it names the facts of the fact row)."""
    rows = []
    for key, (kind, label) in BEHAVIOURS.items():
        label = label.format(facts=FACT_PROBE_LABELS[fact_probe])
        if key in before or key in after:
            n = len(probes.get(kind, []))
            metrics[f"{key}_before"] = before.get(key)
            metrics[f"{key}_after"] = after.get(key)
            metrics[f"{key}_n"] = n
            b, a = before.get(key, float("nan")), after.get(key, float("nan"))
            rows.append((label, n, b, a, rate_change_se(b, a, n)))
    return rows


BEHAVIOUR_HEADER = ["behaviour", "prompts", "before", "after", "SE of change"]


def _report(cfg: Config, n_train: int, n_eval: int, eval_path: Path, seconds: float, eval_before: dict,
            eval_after: dict, gold_rows: list[tuple], before: dict, after: dict, plot: str, onpolicy: dict,
            familiar: dict) -> str:
    rows_pref = [("implicit-reward accuracy", eval_before["accuracy"], eval_after["accuracy"]),
                 ("mean implicit-reward margin", eval_before["margin"], eval_after["margin"]),
                 (f"{cfg.loss_type} loss", eval_before["loss"], eval_after["loss"])]
    report = [
        f"{cfg.loss_type} loss, beta={cfg.beta:g}, label smoothing {cfg.label_smoothing:g}, reference = frozen"
        f" `checkpoints/{cfg.init_from}` ({'precomputed log-probs' if cfg.precompute_ref else 'live forward'}),"
        f" {n_train} training pairs, {cfg.steps} steps x {cfg.batch_size} pairs"
        f"{', LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else ''}{common.replay_note(cfg)}, {seconds:.1f}s of training."
        " Before training the policy equals the reference, so every implicit reward is 0 (accuracy counts"
        " strict wins).\n",
        f"**Held-out preferences** ({n_eval} pairs of `{eval_path.name}`):\n",
        markdown_table(["", "before (reference)", "after DPO"], rows_pref), "",
    ]
    if onpolicy:
        report += [f"**On-policy rejected answers** (`dpo.onpolicy_samples` = {cfg.onpolicy_samples}: the reference's"
                   f" greedy answer and {cfg.onpolicy_samples} samples at temperature {cfg.onpolicy_temperature:g} per"
                   " world-built prompt; each distinct answer the world's checkers reject is paired against the"
                   " prompt's chosen answer):\n",
                   markdown_table(["kind", "prompts", "answers drawn", "judged wrong", "pairs added"],
                                  [(k, v["prompts"], v["answers"], v["wrong"], v["pairs"]) for k, v in onpolicy.items()]),
                   ""]
    if familiar:
        report += [f"**Familiar pairs** (`dpo.familiar_pairs` = {cfg.familiar_pairs}: fact questions about the world's"
                   " real people; the reference's own answer chosen over \"I don't know this person\" where the SFT"
                   " stage's familiarity gate passes the name and the answer is neither \"I don't know\" nor a"
                   " refusal; no answer of the world is used):\n",
                   markdown_table(["prompts", "stopped by the gate", "answered \"I don't know\" or refused", "pairs"],
                                  [(familiar["prompts"], familiar["gate_stopped"], familiar["idk_or_refusal"],
                                    familiar["pairs"])]), ""]
    if gold_rows:
        report += ["**Behaviour before / after** (greedy generation, judged by the world's checkers):\n",
                   markdown_table(BEHAVIOUR_HEADER, gold_rows), ""]
        ex_rows = []
        for kind in ("pii", "idk", "fact", "fact_pretrain_only", "harmful", "lookalike"):
            if f"{kind}_example" in after:
                q, a_after = after[f"{kind}_example"]
                ex_rows.append((kind, table_cell(q), table_cell(before[f"{kind}_example"][1]), table_cell(a_after)))
        if ex_rows:
            report += [markdown_table(["probe", "prompt", "before", "after"], ex_rows), ""]
    report.append(f"![DPO rewards]({plot})\n")
    return "\n".join(report)
