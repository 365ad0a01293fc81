"""Alignment losses on plain tensors: DPO family, Bradley-Terry reward loss, PPO and GRPO pieces.

Everything here is a pure function of log-probabilities / scores / masks, so each formula can be
checked against TRL on identical tensors (tests/align/test_align_losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]
DPO_LOSS_TYPES = get_args(DPOLossType)


@dataclass
class DPOLossOutput:
    loss: torch.Tensor              # scalar, mean over pairs
    losses: torch.Tensor            # [B] per pair
    chosen_rewards: torch.Tensor    # [B] implicit reward beta * log(pi/pi_ref) of the chosen answer (detached)
    rejected_rewards: torch.Tensor  # [B]

    @property
    def accuracy(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float().mean()

    @property
    def margin(self) -> torch.Tensor:
        return (self.chosen_rewards - self.rejected_rewards).mean()


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None) -> DPOLossOutput:
    """Preference losses on summed completion log-probs (one value per sequence).

    h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
    - sigmoid: -(1-eps) log s(beta h) - eps log s(-beta h)   DPO (Rafailov et al. 2023, Eq. 7);
      eps > 0 is conservative DPO (Mitchell 2023), labels flipped with probability eps
    - robust:  unbiased version of the same noise model (Chowdhury et al. 2024, Eq. 10)
    - hinge:   max(0, 1 - beta h)                             SLiC (Zhao et al. 2023)
    - ipo:     (h / |y| - 1/(2 beta))^2                        IPO (Azar et al. 2023, Eq. 17); like TRL, the
      log-ratios are averaged per completion token when lengths are given
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo.loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"dpo.beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        if chosen_lengths is not None and rejected_lengths is not None:
            h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    return DPOLossOutput(
        loss=losses.mean(), losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(), rejected_rewards=(beta * rejected_logratios).detach(),
    )


def reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, margin: torch.Tensor | float | None = None,
                center_coef: float = 0.0) -> torch.Tensor:
    """Bradley-Terry pairwise loss -log s(r_w - r_l - m) (Ouyang et al. 2022, Eq. 1; margin as in Llama 2 Eq. 2).

    ``center_coef`` adds c * mean((r_w + r_l)^2), keeping scores centred on zero (Eisenstein et al. 2023).
    """
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * torch.mean((chosen_scores + rejected_scores) ** 2)
    return loss


# ----------------------------------------------------------------------------- PPO / GRPO

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    # Bessel's correction: the sample variance over the n real tokens
    return var * n / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalize over the real (mask=1) entries to zero mean / unit variance; padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16) over right-padded responses.

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1}; the value after the last
    real token is 0 (the episode ends there). Returns (advantages, returns = A + V), zero on padding.
    """
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        # Padding positions pass the bootstrap through untouched, so the last real token sees V=0.
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, adv, next_adv)
    returns = (advantages + values) * mask
    return advantages, returns


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence", 2020).

    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = exp(-k1) - 1 + k1 (unbiased, >= 0; used by GRPO).
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"kl estimator must be k1, k2 or k3, got {kind!r}")


def ppo_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                kl_coef: float, kl_kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """RLHF reward shaping (Ziegler et al. 2019; Ouyang et al. 2022): r_t = -beta KL_t, plus the
    reward-model score on the last real token. Returns (rewards [B,T], kl [B,T])."""
    kl = kl_per_token(logprobs, ref_logprobs, kl_kind) * mask
    rewards = -kl_coef * kl
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & (mask > 0)
    rewards = rewards + last.to(rewards.dtype) * scores[:, None]
    return rewards, kl


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor  # KL(old || new) estimate, for early stopping / logging


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float = 0.2) -> PolicyLossOutput:
    """Clipped surrogate (Schulman et al. 2017, Eq. 7): -min(rho A, clip(rho, 1-e, 1+e) A), token mean."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)
    return PolicyLossOutput(loss, clip_fraction, approx_kl)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) (as in OpenAI baselines PPO2).
    Returns (loss, fraction of tokens where the clipped branch was taken)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        frac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, frac


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath Sec. 4.1.2): A_i = (r_i - mean_g) / (std_g + eps).

    ``rewards`` is [n_prompts * group_size], grouped contiguously (all samples of prompt 0 first).
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, kl_coef: float = 0.04) -> tuple[torch.Tensor, PolicyLossOutput, torch.Tensor]:
    """GRPO objective (DeepSeekMath Eq. 3): clipped surrogate with a sequence-level advantage on every
    token, plus beta * k3-KL to the reference, averaged per sequence then over sequences.
    Returns (loss, policy-loss stats, mean KL)."""
    adv = advantages[:, None].expand_as(logprobs)
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    kl = kl_per_token(logprobs, ref_logprobs, "k3")
    per_token = -(surrogate - kl_coef * kl)
    loss = masked_mean(per_token, mask, dim=1).mean()
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1).abs() > clip_eps).float(), mask)
        approx_kl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)
        mean_kl = masked_mean(kl, mask)
    return loss, PolicyLossOutput(loss.detach(), clip_fraction, approx_kl), mean_kl
