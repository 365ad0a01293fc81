"""Alignment losses against TRL (the peer) on identical tensors, plus PPO/GRPO pieces against
direct per-element formulas."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmstack.align.losses import (dpo_loss, gae, grpo_advantages, grpo_loss, kl_per_token, masked_mean,
                                  ppo_policy_loss, ppo_rewards, ppo_value_loss, reward_loss, whiten)

trl = pytest.importorskip("trl")


class _FakeAccelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


def _trl_dpo_loss(loss_type, beta, label_smoothing, policy_c, policy_r, ref_c, ref_r, len_c, len_r):
    """Run TRL's own DPOTrainer._compute_loss on a fake model whose per-token log-probs sum to the
    given sequence log-probs, with the reference log-probs passed as precomputed (TRL's option)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    B = policy_c.numel()
    T = int(max(len_c.max(), len_r.max())) + 1
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    per_token = torch.zeros(2 * B, T - 1)
    seq_logps = torch.cat([policy_c, policy_r])
    lengths = torch.cat([len_c, len_r])
    for i in range(2 * B):
        n = int(lengths[i])
        completion_mask[i, 1: 1 + n] = 1
        # spread the sequence log-prob over the completion tokens; their sum is what TRL uses
        per_token[i, :n] = seq_logps[i] / n

    class FakeModel:
        training = True

        def __call__(self, **kw):
            return SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                                   mean_logits=torch.zeros_like(per_token),
                                   is_top1=torch.zeros_like(per_token, dtype=torch.bool))

    model = FakeModel()
    trainer = SimpleNamespace(
        model=model, accelerator=_FakeAccelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return DPOTrainer._compute_loss(trainer, model, inputs, False)


def _random_logps(B, seed):
    g = torch.Generator().manual_seed(seed)
    base = -torch.rand(4, B, generator=g, dtype=torch.float64).float() * 30 - 1
    lengths = torch.randint(1, 12, (2, B), generator=g)
    return base[0], base[1], base[2], base[3], lengths[0], lengths[1]


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_losses_match_trl(loss_type, beta):
    ls = 0.1 if loss_type == "robust" else 0.0
    pc, pr, rc, rr, lc, lr = _random_logps(8, seed=hash((loss_type, beta)) % 1000)
    expected = _trl_dpo_loss(loss_type, beta, ls, pc, pr, rc, rr, lc, lr)
    ours = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls,
                    chosen_lengths=lc.float(), rejected_lengths=lr.float())
    torch.testing.assert_close(ours.loss, expected.float(), rtol=1e-5, atol=1e-5)


def test_conservative_dpo_matches_trl_label_smoothed_form():
    # TRL 1.x keeps the cDPO label-smoothed sigmoid only inside its "aot" losses; with batch size 1
    # the sorting in "aot" is the identity, so it is exactly the label-smoothed DPO loss.
    for seed in range(5):
        pc, pr, rc, rr, lc, lr = _random_logps(1, seed)
        expected = _trl_dpo_loss("aot", 0.3, 0.2, pc, pr, rc, rr, lc, lr)
        ours = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="sigmoid", label_smoothing=0.2)
        torch.testing.assert_close(ours.loss, expected.float(), rtol=1e-5, atol=1e-6)


def test_dpo_rewards_accuracy_and_gradient_direction():
    pc = torch.tensor([-5.0, -9.0], requires_grad=True)
    pr = torch.tensor([-6.0, -4.0], requires_grad=True)
    out = dpo_loss(pc, pr, torch.tensor([-6.0, -6.0]), torch.tensor([-6.0, -6.0]), beta=0.5)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, -1.5]))
    assert float(out.accuracy) == 0.5
    out.loss.backward()
    # minimising the loss raises the chosen log-prob and lowers the rejected one
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


def test_dpo_rejects_bad_settings():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(x, x, x, x, loss_type="nope")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0)


@pytest.mark.parametrize("margin", [None, 0.7])
def test_reward_loss_matches_trl(margin):
    from trl.trainer.reward_trainer import RewardTrainer

    g = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(6, generator=g), torch.randn(6, generator=g)
    logits = torch.cat([chosen, rejected])[:, None]

    class FakeModel:
        training = True

        def __call__(self, **kw):
            return SimpleNamespace(logits=logits)

    model = FakeModel()
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=None), accelerator=_FakeAccelerator(),
                              _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(12, 3, dtype=torch.long), "attention_mask": torch.ones(12, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = torch.full((6,), margin)
    expected = RewardTrainer.compute_loss(trainer, model, inputs)
    torch.testing.assert_close(reward_loss(chosen, rejected, None if margin is None else torch.full((6,), margin)), expected)


def test_gae_matches_direct_sum():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    spans = [(0, 7), (2, 6), (3, 4)]  # right-padded responses starting after a prompt
    for b, (s, e) in enumerate(spans):
        mask[b, s:e] = 1
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for b, (s, e) in enumerate(spans):
        for t in range(s, e):
            # A_t = sum_l (gamma lam)^l delta_{t+l}, with V = 0 after the last real token
            total = 0.0
            for l in range(e - t):
                v_next = values[b, t + l + 1] if t + l + 1 < e else 0.0
                delta = rewards[b, t + l] + gamma * v_next - values[b, t + l]
                total += (gamma * lam) ** l * delta
            assert abs(float(adv[b, t]) - float(total)) < 1e-5
            assert abs(float(ret[b, t]) - float(total + values[b, t])) < 1e-5
    assert float(adv[mask == 0].abs().sum()) == 0.0


def test_whiten_uses_only_real_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = whiten(x, mask)
    assert abs(float(masked_mean(w, mask))) < 1e-6
    assert abs(float((w[0, :3] ** 2).sum() / 2) - 1.0) < 1e-4  # unit sample variance
    assert float(w[0, 3]) == 0.0


def test_ppo_policy_loss_clipping():
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    out = ppo_policy_loss(new, old, adv, torch.ones(1, 3), clip_eps=0.2)
    # token 0: ratio 1.5 clipped to 1.2 for a positive advantage; token 1: ratio 0.5 clipped to 0.8 for a
    # negative advantage (pessimistic branch -> -(-1*0.8)=0.8 vs 0.5: max is 0.8); token 2 unclipped
    expected = (-1.2 + 0.8 - 1.1) / 3
    assert abs(float(out.loss) - expected) < 1e-6
    assert abs(float(out.clip_fraction) - 2 / 3) < 1e-6


def test_ppo_value_loss_and_reward_shaping():
    v, old, ret = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 1.0]])
    loss, frac = ppo_value_loss(v, old, ret, torch.ones(1, 2), clip_range=0.2)
    # clipped values 0.3 and 0.7 -> max((v-R)^2, (vc-R)^2) = max(1, .49)=1 and max(0, .09)=.09
    assert abs(float(loss) - 0.5 * (1 + 0.09) / 2) < 1e-6
    assert float(frac) == 0.5
    lp, ref = torch.tensor([[-1.0, -2.0, -3.0, 0.0]]), torch.tensor([[-1.5, -2.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards, kl = ppo_rewards(torch.tensor([2.0]), lp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 0.1 + 2.0, 0.0]]))


def test_grpo_advantages_and_loss():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])
    a = grpo_advantages(r, group_size=4)
    torch.testing.assert_close(a[:4], (r[:4] - 0.5) / (r[:4].std() + 1e-4))
    assert float(a[4:].abs().sum()) == 0.0  # no signal from a group where every sample ties
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(5), group_size=4)
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, stats, kl = grpo_loss(lp, lp.detach(), torch.zeros(2, 3), torch.tensor([1.0, -1.0]), torch.ones(2, 3), kl_coef=0.1)
    assert abs(float(kl)) < 1e-7 and abs(float(loss.detach())) < 1e-7  # ratio 1, mean advantage 0, no KL
    loss.backward()
    assert (lp.grad[0] < 0).all() and (lp.grad[1] > 0).all()


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    k1 = kl_per_token(lp, ref, "k1")
    torch.testing.assert_close(kl_per_token(lp, ref, "k3"), torch.exp(-k1) - 1 + k1)
    assert (kl_per_token(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError):
        kl_per_token(lp, ref, "k9")
