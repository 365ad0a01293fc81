"""Alignment layer: SFT, LoRA/QLoRA, reward model, DPO family, PPO/GRPO.

Stages (registered in lmstack.pipeline): ``sft`` and ``lora`` (lmstack.align.sft), ``reward``
(lmstack.align.reward), ``dpo`` (lmstack.align.dpo), ``ppo`` (lmstack.align.ppo, ``algo="grpo"``).
Building blocks usable on their own: ``lora`` (LoRALinear, apply_lora, merge/unmerge, PEFT-format
adapters), ``nf4`` (4-bit NormalFloat with double quantization, NF4Linear), ``losses`` (dpo_loss,
reward_loss, gae, ppo/grpo losses) and ``data`` (chat / preference loading and tokenization).
"""

from lmstack.align.losses import dpo_loss, gae, grpo_advantages, ppo_policy_loss, ppo_value_loss, reward_loss
from lmstack.align.lora import LoRAAdapterConfig, LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from lmstack.align.nf4 import NF4Linear, quantize_nf4

__all__ = ["LoRAAdapterConfig", "LoRALinear", "apply_lora", "merge_lora", "save_adapter", "load_adapter", "NF4Linear",
           "quantize_nf4", "dpo_loss", "reward_loss", "gae", "ppo_policy_loss", "ppo_value_loss", "grpo_advantages"]
