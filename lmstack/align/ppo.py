"""Stage ``ppo``: RLHF with PPO (Ouyang et al. 2022) or GRPO (Shao et al. 2024) against the reward model.

PPO: the policy gets a value head on its final hidden states; each iteration samples responses to
prompts through lmstack.generate, scores them with checkpoints/reward at the end of the response,
subtracts a per-token KL penalty to the frozen reference (the initial policy), computes GAE
advantages (whitened) and returns, then runs several epochs of clipped policy + clipped value
updates on minibatches of that rollout batch.
GRPO (``algo = "grpo"``): ``group_size`` samples per prompt, advantage = the reward standardised
within its group, no value model; the KL to the reference is a loss term (k3 estimator).
The report plots mean reward and KL per iteration. Writes checkpoints/ppo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from lmstack.align import common, dpo
from lmstack.align.data import chat_answer_pairs, chunks, load_preferences_jsonl
from lmstack.align.gold import WorldGoldReward
from lmstack.align.losses import (gae, grpo_advantages, grpo_loss, ppo_policy_loss, ppo_rewards, ppo_value_loss,
                                  whiten)
from lmstack.align.lora import LoRAAdapterConfig
from lmstack.align.reward import load_reward_model
from lmstack.report import format_score, markdown_table, save_line_plot, table_cell
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig

# A verifiable (rule) reward: (prompts, sampled response texts) -> one score per response.
RewardFn = Callable[[Sequence[list[dict]], Sequence[str]], Sequence[float]]


@dataclass
class Config:
    algo: Literal["ppo", "grpo"] = "ppo"
    init_from: str = "sft"           # policy init = frozen reference
    reward_from: str = "reward"      # reward model checkpoint
    prompt_file: str = ""            # "" = prompts of data/world/prefs_train.jsonl
    iterations: int = 10             # rollout batches
    prompts_per_iteration: int = 16
    group_size: int = 4              # GRPO: samples per prompt
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_k: int = 0
    ppo_epochs: int = 2              # passes over each rollout batch
    minibatch_size: int = 16
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05            # PPO: per-token KL penalty in the reward (initial value when kl_target > 0); GRPO: KL loss weight
    # Adaptive KL controller (Ziegler et al. 2019, Sec. 2.2): beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * n/horizon
    # after each rollout batch of n sequences; 0 = fixed kl_coef
    kl_target: float = 0.0
    kl_horizon: int = 10000          # sequences
    # Divide RM scores by the running std of all scores seen so far, after subtracting their running mean, so
    # the KL coefficient means the same whatever the reward model's scale (Ziegler et al. normalise the RM)
    normalize_scores: bool = False
    value_warmup_iterations: int = 0  # first iterations train only the value head (its zero init gives A = returns)
    kl_estimator: Literal["k1", "k3"] = "k1"  # PPO reward penalty estimator
    whiten_advantages: bool = True
    missing_end_penalty: float = 1.0  # subtracted from the score of a response cut off without <|end|>
    # + gold_coef * the world's rule reward (lmstack.align.gold: refuse PII requests, "I don't know" for entities
    # that do not exist, state known facts), added after normalisation; 0 = the reward model alone
    gold_coef: float = 0.0
    # + this many prompts from the SFT conversations (data/world/sft_train.jsonl, follow-up turns included: the
    # preference prompts are all single-turn, and PPO answered "And her phone number?" with an IDK); 0 = none
    sft_prompts: int = 0
    optim: OptimConfig = field(default_factory=lambda: common.finetune_optim(lr=3e-5))
    schedule: ScheduleConfig = field(default_factory=lambda: common.finetune_schedule(warmup_steps=0, kind="constant"))
    grad_clip: float = 1.0           # 0 = no clipping
    lora: LoRAAdapterConfig = field(default_factory=LoRAAdapterConfig)
    eval_prompts: int = 48           # held-out prompts scored greedily before/after (0 = skip)
    # + this many held-out conversations of sft_eval.jsonl (a seeded sample; held-out phrasings, follow-up turns,
    # arithmetic and translation too) in the held-out reward: prefs_eval has 150 prompts, and at that n the SE
    # of the paired gain (~0.04) is as large as a run-to-run difference in the gain
    eval_sft_prompts: int = 0
    behaviour_examples: int = 0      # gold measures (PII refusal, IDK, facts) on this many prompts each; 0 = skip

    def __post_init__(self):
        if self.algo not in ("ppo", "grpo"):
            raise ValueError(f"algo={self.algo!r} must be 'ppo' or 'grpo'")
        if self.algo == "grpo" and self.group_size < 2:
            raise ValueError(f"GRPO needs group_size >= 2 (advantages are relative within a group), got {self.group_size}")
        if self.kl_target < 0 or self.kl_horizon <= 0:
            raise ValueError(f"ppo.kl_target must be >= 0 and ppo.kl_horizon > 0, got {self.kl_target}, {self.kl_horizon}")
        if self.gold_coef < 0 or self.sft_prompts < 0:
            raise ValueError(f"ppo.gold_coef and ppo.sft_prompts must be >= 0, got {self.gold_coef}, {self.sft_prompts}")
        if self.gold_coef > 0 and self.prompt_file:
            raise ValueError("ppo.gold_coef > 0 needs the world's prompts (ppo.prompt_file must be empty): the rule reward"
                             " reads each prompt's kind from data/world/prefs_train.jsonl")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r} must be 'k1' or 'k3'")


class PolicyWithValueHead(nn.Module):
    """The causal LM plus a scalar value head V(s_t) on the final normed hidden state."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.value_head = nn.Linear(lm.config.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, *args, **kw):  # generation goes straight through to the LM
        return self.lm(*args, **kw)


class AdaptiveKLController:
    """Proportional controller on the KL coefficient (Ziegler et al. 2019): steers the per-sequence KL of the
    rollouts toward ``target``; with target 0 the coefficient stays fixed."""

    def __init__(self, init: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_sequences: int) -> float:
        if self.target > 0:
            error = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + error * n_sequences / self.horizon
        return self.value


class RunningMoments:
    """Mean and std of every score seen so far (Chan et al.'s parallel update of Welford's algorithm)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.detach().double().flatten().cpu()
        n_b, mean_b = xs.numel(), float(xs.mean())
        m2_b = float(((xs - mean_b) ** 2).sum())
        delta, total = mean_b - self.mean, self.n + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta ** 2 * self.n * n_b / total
        self.n = total

    @property
    def std(self) -> float:
        return (self.m2 / max(self.n - 1, 1)) ** 0.5


@dataclass
class Rollout:
    input_ids: torch.Tensor       # [N, T] prompt + response, right-padded
    response_mask: torch.Tensor   # [N, T-1] 1 where position t predicts a response token
    logprobs: torch.Tensor        # [N, T-1] old policy log-probs (0 off-mask)
    ref_logprobs: torch.Tensor
    values: torch.Tensor | None   # [N, T-1]
    scores: torch.Tensor          # [N] reward-model score (after the missing-<|end|> penalty)
    raw_scores: torch.Tensor      # [N] reward-model score as is
    lengths: torch.Tensor         # [N] response lengths
    texts: list[str]


def load_prompts(path: Path) -> list[list[dict]]:
    pairs = load_preferences_jsonl(path)
    seen, prompts = set(), []
    for p in pairs:
        key = repr(p.prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(p.prompt)
    return prompts


@torch.no_grad()
def score_sequences(rm, seqs: list[list[int]], pad_id: int, device: str) -> torch.Tensor:
    out = []
    for part in chunks(seqs, 32):
        T = max(len(s) for s in part)
        ids = torch.full((len(part), T), pad_id, dtype=torch.long)
        for i, s in enumerate(part):
            ids[i, : len(s)] = torch.tensor(s)
        out.append(rm(ids.to(device), torch.tensor([len(s) for s in part], device=device)).float().cpu())
    return torch.cat(out)


def _stack(prompt_ids: list[list[int]], responses: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [p + r for p, r in zip(prompt_ids, responses)]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    comp = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        comp[i, len(p): len(p) + len(r)] = 1
    return ids, comp


def policy_forward(policy: PolicyWithValueHead, ids: torch.Tensor, comp: torch.Tensor, with_values: bool,
                   detach_trunk: bool = False):
    _, per_token, mask, hidden = common.completion_logps(policy.lm, ids, comp, return_hidden=with_values)
    if with_values and detach_trunk:
        hidden = hidden.detach()  # value warm-up: the value loss must not move the policy's weights
    values = policy.value_head(hidden.float()).squeeze(-1) * mask if with_values else None
    return per_token, mask, values


@torch.no_grad()
def collect_rollout(policy, ref_model, rm, tokenizer, prompts: list[list[dict]], cfg: Config, device: str, seed: int,
                    reward_fn: RewardFn | None = None) -> Rollout:
    """Sample one response per prompt and score it: with the reward model ``rm``, or, when ``reward_fn`` is
    given, with that rule (``reward_fn(prompts, response_texts) -> scores``; ``rm`` may then be None)."""
    from lmstack.generate import generate

    policy.eval()
    prompt_ids = [list(tokenizer.encode_chat(p, add_generation_prompt=True)[0]) for p in prompts]
    gen_cfg = common.generation_config(cfg.max_new_tokens, strategy="sample", temperature=cfg.temperature,
                                       top_k=cfg.top_k, seed=seed)
    gens = generate(policy.lm, tokenizer, prompt_ids, gen_cfg, batch_size=64)
    responses = [list(g.token_ids) or [tokenizer.end_id] for g in gens]
    ids, comp = _stack(prompt_ids, responses, tokenizer.pad_id)
    ids, comp = ids.to(device), comp.to(device)
    logprobs, mask, values = policy_forward(policy, ids, comp, with_values=(cfg.algo == "ppo"))
    _, ref_logprobs, _, _ = common.completion_logps(ref_model, ids, comp)
    if reward_fn is not None:
        raw = torch.tensor([float(x) for x in reward_fn(prompts, [g.text for g in gens])], dtype=torch.float32)
    else:
        raw = score_sequences(rm, [p + r for p, r in zip(prompt_ids, responses)], tokenizer.pad_id, device)
    ended = torch.tensor([bool(r) and r[-1] in (tokenizer.end_id, tokenizer.eos_id) for r in responses])
    scores = raw - cfg.missing_end_penalty * (~ended).float()
    return Rollout(ids, mask, logprobs, ref_logprobs, values, scores.to(device), raw, torch.tensor([len(r) for r in responses]),
                   [g.text for g in gens])


def _minibatches(roll: Rollout, cfg: Config, seed: int):
    """``cfg.ppo_epochs`` shuffled passes over the rollout batch in minibatches: yields the row
    indices, their token ids, response mask, and the mask aligned with the full sequence."""
    n = roll.input_ids.size(0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, cfg.minibatch_size):
            idx = perm[start: start + cfg.minibatch_size].to(roll.input_ids.device)
            mask = roll.response_mask[idx]
            comp = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1).long()
            yield idx, roll.input_ids[idx], mask, comp


def ppo_update(policy, optimizer, roll: Rollout, cfg: Config, step0: int, total: int, kl_coef: float | None = None,
               value_only: bool = False) -> dict:
    """Several epochs of clipped PPO updates over one rollout batch. Returns averaged statistics.
    ``value_only`` trains the value head alone (warm-up); ``kl_coef`` overrides cfg.kl_coef (adaptive KL)."""
    kl_coef = cfg.kl_coef if kl_coef is None else kl_coef
    rewards, kl = ppo_rewards(roll.scores, roll.logprobs, roll.ref_logprobs, roll.response_mask, kl_coef, cfg.kl_estimator)
    advantages, returns = gae(rewards, roll.values, roll.response_mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, roll.response_mask)
    stats = {"policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": []}
    policy.train()
    for idx, ids, mask, comp in _minibatches(roll, cfg, step0):
        logprobs, _, values = policy_forward(policy, ids, comp, with_values=True, detach_trunk=value_only)
        pol = ppo_policy_loss(logprobs, roll.logprobs[idx], advantages[idx], mask, cfg.clip_eps)
        vloss, _ = ppo_value_loss(values, roll.values[idx], returns[idx], mask, cfg.value_clip)
        loss = cfg.vf_coef * vloss if value_only else pol.loss + cfg.vf_coef * vloss
        loss.backward()
        common.optimizer_step(policy, optimizer, step0, total, cfg.schedule, cfg.grad_clip)
        stats["policy_loss"].append(float(pol.loss.detach()))
        stats["value_loss"].append(float(vloss.detach()))
        stats["clip_frac"].append(float(pol.clip_fraction))
        stats["approx_kl"].append(float(pol.approx_kl))
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["kl"] = float((kl * roll.response_mask).sum(1).mean())  # sequence-level KL(pi || ref), k-estimator
    return out


def grpo_update(policy, optimizer, roll: Rollout, cfg: Config, step0: int, total: int, kl_coef: float | None = None,
                value_only: bool = False) -> dict:
    advantages = grpo_advantages(roll.scores, cfg.group_size)
    stats = {"policy_loss": [], "clip_frac": [], "approx_kl": [], "kl_term": []}
    policy.train()
    for idx, ids, mask, comp in _minibatches(roll, cfg, step0):
        logprobs, _, _ = policy_forward(policy, ids, comp, with_values=False)
        loss, pol, mean_kl = grpo_loss(logprobs, roll.logprobs[idx], roll.ref_logprobs[idx], advantages[idx].to(logprobs.device),
                                       mask, cfg.clip_eps, cfg.kl_coef if kl_coef is None else kl_coef)
        loss.backward()
        common.optimizer_step(policy, optimizer, step0, total, cfg.schedule, cfg.grad_clip)
        stats["policy_loss"].append(float(pol.loss.detach()))
        stats["clip_frac"].append(float(pol.clip_fraction))
        stats["approx_kl"].append(float(pol.approx_kl))
        stats["kl_term"].append(float(mean_kl))
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    k1 = (roll.logprobs - roll.ref_logprobs) * roll.response_mask
    out["kl"] = float(k1.sum(1).mean())
    return out


@torch.no_grad()
def greedy_eval(lm, rm, tokenizer, prompts, cfg: Config, device: str) -> tuple[list[float | None], list[str]]:
    """Reward-model score of the greedy answer to each prompt (None where the prompt does not fit)."""
    if not prompts:
        return [], []
    texts = common.chat_answers(lm, tokenizer, prompts, cfg.max_new_tokens)
    kept = [i for i, t in enumerate(texts) if t is not None]
    seqs = [list(tokenizer.encode_chat(prompts[i] + [{"role": "assistant", "content": texts[i]}])[0]) for i in kept]
    scores: list[float | None] = [None] * len(prompts)
    if seqs:
        for i, v in zip(kept, score_sequences(rm, seqs, tokenizer.pad_id, device).tolist()):
            scores[i] = v
    return scores, texts


def paired_change(before: list, after: list) -> dict:
    """Mean before / after and the standard error of the mean paired difference (same prompts)."""
    pairs = [(b, a) for b, a in zip(before, after) if b is not None and a is not None]
    if not pairs:
        return {"before": float("nan"), "after": float("nan"), "diff": float("nan"), "se": float("nan"), "n": 0}
    diffs = [a - b for b, a in pairs]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return {"before": sum(b for b, _ in pairs) / n, "after": sum(a for _, a in pairs) / n, "diff": mean,
            "se": (var / n) ** 0.5, "n": n}


def sft_prompt_chats(run_path: Path, n: int, seed: int, name: str = "sft_train.jsonl") -> list:
    """``n`` conversations of the run's ``sft_train.jsonl`` (or another world file ``name``; a seeded sample): the
    training ones join PPO's prompts, the held-out ones (``sft_eval.jsonl``) its held-out reward."""
    import random

    from lmstack.align.data import load_chat_jsonl

    path = common.world_file(run_path, name)
    chats = load_chat_jsonl(path)
    return random.Random(seed).sample(chats, min(n, len(chats)))


def train_loop(ctx, cfg: Config, policy, ref_model, rm, tokenizer, prompts,
               gold_fn: RewardFn | None = None) -> tuple[dict, list, float]:
    """Rollout / update iterations; ``gold_fn`` (with cfg.gold_coef) adds a rule reward to the RM score.
    Returns (per-iteration history, sample rows, seconds)."""
    optimizer = common.build_optimizer_for(policy, cfg.optim, cfg.lora.lr if cfg.lora.enabled and cfg.lora.lr else None)
    per_iter = cfg.prompts_per_iteration
    g = torch.Generator().manual_seed(ctx.seed)
    order = torch.randperm(len(prompts), generator=g).tolist()
    hist = {k: [] for k in ("reward", "raw_reward", "gold", "kl", "kl_coef", "length", "policy_loss", "value_loss",
                            "clip_frac")}
    controller = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    moments = RunningMoments()
    timer = common.Timer()
    samples = []
    for it in common.progress(range(cfg.iterations), cfg.iterations, cfg.algo):
        batch = [prompts[order[(it * per_iter + j) % len(order)]] for j in range(per_iter)]
        if cfg.algo == "grpo":
            batch = [p for p in batch for _ in range(cfg.group_size)]  # groups are contiguous
        roll = collect_rollout(policy, ref_model, rm, tokenizer, batch, cfg, ctx.device, seed=ctx.seed * 1000 + it)
        mean_score = float(roll.scores.mean())
        if cfg.normalize_scores:
            moments.update(roll.scores)
            roll.scores = (roll.scores - moments.mean) / max(moments.std, 1e-6)
        gold = torch.tensor([float(x) for x in gold_fn(batch, roll.texts)]) if gold_fn is not None else None
        if gold is not None:
            roll.scores = roll.scores + cfg.gold_coef * gold.to(roll.scores.device)
        update = ppo_update if cfg.algo == "ppo" else grpo_update
        coef = controller.value
        stats = update(policy, optimizer, roll, cfg, it, cfg.iterations, kl_coef=coef,
                       value_only=it < cfg.value_warmup_iterations)
        controller.update(stats["kl"], len(batch))
        for key, value in (("reward", mean_score), ("raw_reward", float(roll.raw_scores.mean())),
                           ("gold", float(gold.mean()) if gold is not None else float("nan")), ("kl", stats["kl"]),
                           ("kl_coef", coef), ("length", float(roll.lengths.float().mean())),
                           ("policy_loss", stats["policy_loss"]), ("value_loss", stats.get("value_loss", float("nan"))),
                           ("clip_frac", stats["clip_frac"])):
            hist[key].append(value)
        ctx.run.append_metrics({"stage": "ppo", "algo": cfg.algo, "iteration": it, "reward": mean_score, "kl_coef": coef,
                                "kl": stats["kl"], "response_len": hist["length"][-1],
                                **{k: v for k, v in stats.items() if k != "kl"}})
        if it in (0, cfg.iterations - 1):
            samples.append((it, batch[0][-1]["content"], roll.texts[0], float(roll.raw_scores[0])))
    policy.eval()
    return hist, samples, timer.seconds


def run(ctx, cfg: Config):
    from lmstack.pipeline import StageResult

    run_path = ctx.run.path
    tokenizer, lm = common.start_stage(ctx, cfg, "ppo")
    ref_model = common.frozen_copy(lm)
    rm_dir = common.checkpoint_dir(run_path, cfg.reward_from)
    if not (rm_dir / "config.json").exists():
        raise FileNotFoundError(f"{rm_dir}: no reward model; the ppo stage needs the reward stage to run first")
    rm = load_reward_model(rm_dir, ctx.device).eval()
    for p in rm.parameters():
        p.requires_grad_(False)
    param_metrics = common.attach_lora(lm, cfg.lora, ctx.log)
    policy = PolicyWithValueHead(lm).to(ctx.device)
    if cfg.algo == "grpo":
        policy.value_head.requires_grad_(False)

    prompt_path = Path(cfg.prompt_file) if cfg.prompt_file else common.world_file(run_path, "prefs_train.jsonl")
    prompts = load_prompts(prompt_path)
    sft_chats = sft_prompt_chats(run_path, cfg.sft_prompts, ctx.seed) if cfg.sft_prompts > 0 else []
    prompts += [pair.prompt for pair in chat_answer_pairs(sft_chats)]
    eval_path = run_path / "data" / "world" / "prefs_eval.jsonl"
    eval_prompts = load_prompts(eval_path)[: cfg.eval_prompts] if (cfg.eval_prompts and eval_path.exists() and not cfg.prompt_file) else []
    n_prefs_eval = len(eval_prompts)
    if cfg.eval_sft_prompts > 0 and not cfg.prompt_file:
        eval_prompts += [pair.prompt for pair in chat_answer_pairs(
            sft_prompt_chats(run_path, cfg.eval_sft_prompts, ctx.seed, "sft_eval.jsonl"))]
    probes = (dpo.behaviour_probes(run_path, cfg.behaviour_examples, ctx.seed, pii_idk_from_world=True)
              if cfg.behaviour_examples > 0 and not cfg.prompt_file else {})
    scores_before, _ = greedy_eval(lm, rm, tokenizer, eval_prompts, cfg, ctx.device)
    gold_before = dpo.measure_behaviour(lm, tokenizer, probes, cfg.max_new_tokens) if probes else {}

    gold_fn = None
    if cfg.gold_coef > 0:  # Config checked that the prompts are the world's
        gold_fn = WorldGoldReward(prompt_path, run_path / "data" / "world" / "world.json")
        gold_fn.add_chats(sft_chats)
    hist, samples, seconds = train_loop(ctx, cfg, policy, ref_model, rm, tokenizer, prompts, gold_fn)
    scores_after, _ = greedy_eval(lm, rm, tokenizer, eval_prompts, cfg, ctx.device)
    gold_after = dpo.measure_behaviour(lm, tokenizer, probes, cfg.max_new_tokens) if probes else {}
    change = paired_change(scores_before, scores_after)
    parts = {"prefs_eval": paired_change(scores_before[:n_prefs_eval], scores_after[:n_prefs_eval]),
             "sft_eval": paired_change(scores_before[n_prefs_eval:], scores_after[n_prefs_eval:])}

    out_dir = common.checkpoint_dir(run_path, "ppo")
    common.save_finetuned(lm, out_dir, cfg.lora, {"stage": "ppo", "algo": cfg.algo, "iterations": cfg.iterations,
                                                  "init_from": cfg.init_from}, str(common.checkpoint_dir(run_path, cfg.init_from)))
    if cfg.algo == "ppo":
        from safetensors.torch import save

        from lmstack.runs import atomic_write_bytes

        atomic_write_bytes(out_dir / "value_head.safetensors",
                           save({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}))
    from lmstack.align.familiarity import carry_over

    gate_info = carry_over(lm, tokenizer, run_path, out_dir, ctx.seed)
    plot = _plot(run_path, cfg, hist)
    n_third = max(1, cfg.iterations // 3)
    first, last = _mean(hist["reward"][:n_third]), _mean(hist["reward"][-n_third:])
    metrics = {"algo": cfg.algo, "reward_first": first, "reward_last": last, "kl_last": hist["kl"][-1],
               "kl_max": max(hist["kl"]), "kl_coef_last": hist["kl_coef"][-1], "eval_reward_before": change["before"],
               "eval_reward_after": change["after"], "eval_reward_gain": change["diff"], "eval_reward_gain_se": change["se"],
               "eval_reward_n": change["n"],
               **{f"eval_reward_gain_{k}": v["diff"] for k, v in parts.items() if v["n"]},
               **{f"eval_reward_gain_{k}_se": v["se"] for k, v in parts.items() if v["n"]},
               "train_seconds": round(seconds, 1), **param_metrics, **gate_info}
    if cfg.gold_coef > 0:
        metrics.update(gold_first=_mean(hist["gold"][:n_third]), gold_last=_mean(hist["gold"][-n_third:]))
    gold_rows = dpo.behaviour_rows(probes, gold_before, gold_after, metrics) if probes else []
    report = _report(cfg, hist, samples, seconds, change, parts, plot, gold_rows)
    return StageResult(metrics=metrics, artifacts={"checkpoint": str(out_dir.relative_to(run_path)), "plot": plot},
                       report=report)


def _plot(run_path: Path, cfg: Config, hist: dict) -> str:
    xs = list(range(1, cfg.iterations + 1))
    plot = f"plots/ppo_{cfg.algo}_reward_kl.png"
    save_line_plot(run_path / plot, {"mean reward (RM score - penalties)": (xs, hist["reward"]),
                                     "mean RM score": (xs, hist["raw_reward"])},
                   f"{cfg.algo.upper()}: reward and KL to the reference per iteration", "iteration", "reward",
                   secondary={"KL(pi || ref) per sequence": (xs, hist["kl"])}, secondary_label="KL (nats)")
    return plot


def _report(cfg: Config, hist: dict, samples: list, seconds: float, change: dict, parts: dict, plot: str,
            gold_rows: list) -> str:
    n_third = max(1, cfg.iterations // 3)
    first, last = _mean(hist["reward"][:n_third]), _mean(hist["reward"][-n_third:])
    kl_desc = (f"adaptive KL coef (start {cfg.kl_coef}, target {cfg.kl_target} nats, horizon {cfg.kl_horizon})"
               if cfg.kl_target > 0 else f"KL coef {cfg.kl_coef}")
    desc = (f"**{cfg.algo.upper()}** from `checkpoints/{cfg.init_from}` against `checkpoints/{cfg.reward_from}`:"
            f" {cfg.iterations} iterations x {cfg.prompts_per_iteration} prompts"
            + (f" x {cfg.group_size} samples" if cfg.algo == "grpo" else "")
            + f", {cfg.ppo_epochs} epoch(s) per rollout batch, clip {cfg.clip_eps}, {kl_desc}"
            + (", RM scores normalised by running mean/std" if cfg.normalize_scores else "")
            + (f", plus {cfg.gold_coef:g} x the world's rule reward (`lmstack.align.gold`: refuse PII requests, say"
               " \"I don't know\" for entities that do not exist, state known facts; a verifier reward as in"
               " DeepSeek-R1, not a learned one)" if cfg.gold_coef > 0 else "")
            + (f", GAE gamma={cfg.gamma} lambda={cfg.lam}, whitened advantages, value loss x{cfg.vf_coef},"
               f" {cfg.value_warmup_iterations} value warm-up iteration(s)" if cfg.algo == "ppo"
               else ", group-standardised advantages, k3 KL loss term")
            + f". Rollouts sampled with `lmstack.generate` (T={cfg.temperature}); {seconds:.1f}s of training.\n")
    verdict = ("rises beyond 3 standard errors" if change["diff"] > 3 * change["se"] else
               "does not rise beyond 3 standard errors")
    rows = [(i + 1, hist["reward"][i], hist["raw_reward"][i], hist["gold"][i], hist["kl"][i], hist["kl_coef"][i],
             hist["length"][i], hist["clip_frac"][i]) for i in range(cfg.iterations)]
    report = [desc,
              f"Mean rollout RM score over the first third of training {first:.3f} -> last third {last:.3f}; KL to the"
              f" reference ends at {hist['kl'][-1]:.3f} nats/sequence (max {max(hist['kl']):.3f}).\n",
              f"**Held-out reward** (greedy answers to {change['n']} held-out prompts, scored by the reward model):"
              f" {format_score(change['before'])} before -> {format_score(change['after'])} after, paired gain"
              f" {change['diff']:+.3f} +- {change['se']:.3f} (SE): it {verdict}. By source: "
              + "; ".join(f"`{k}.jsonl` ({v['n']} prompts) {v['diff']:+.3f} +- {v['se']:.3f}"
                          for k, v in parts.items() if v["n"]) + ".\n",
              f"![{cfg.algo} reward and KL]({plot})\n"]
    if gold_rows:
        report += ["**Gold measures before / after** (greedy generation, judged by the world's checkers):\n",
                   markdown_table(dpo.BEHAVIOUR_HEADER, gold_rows), ""]
    report += [markdown_table(["iteration", "RM score (rollouts)", "RM score (raw)", "world rule reward", "KL", "KL coef",
                               "response tokens", "clip fraction"], rows), ""]
    if samples:
        report.append(markdown_table(["iteration", "prompt", "sampled response", "RM score"],
                                     [(i + 1, table_cell(p), table_cell(t), sc) for i, p, t, sc in samples]))
    return "\n".join(report) + "\n"


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


