"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2021, arXiv:2106.09685).

``y = W0 x + (alpha / r) * B A x`` with ``W0`` frozen, ``A`` in R^{r x in} (Kaiming-uniform) and
``B`` in R^{out x r} (zeros), so training starts exactly at the base model. rsLoRA (Kalajdzievski
2023, arXiv:2312.03732) scales by ``alpha / sqrt(r)`` instead, which keeps the update size stable
as r grows.

Adapters are swapped in by module name (no model fork), trained alone, and saved alone in the PEFT
layout: ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight`` and an ``adapter_config.json`` that ``peft.PeftModel.from_pretrained`` reads.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

# Output heads and embeddings are left alone by "all-linear" (as PEFT does): adapting the vocab
# projection costs r*(V+D) parameters and rarely helps.
_NEVER_TARGET_BY_DEFAULT = re.compile(r"(^|\.)(lm_head|head|output|wte|wpe|embed\w*|tok_embeddings|router|score|value_head|reward_head)$")


@dataclass
class LoRAAdapterConfig:
    """The ``[<stage>.lora]`` table. ``r = 0`` means LoRA is off (full fine-tuning)."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # Each entry is either a module-name suffix ("q_proj", "attn.c_proj") or a regex that must match
    # the full qualified name ("layers\\.[0-3]\\..*"). "all-linear" = every nn.Linear except the head.
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    rslora: bool = False
    # QLoRA: quantize the frozen base weights to NF4 (double-quantized scales) before adding adapters.
    qlora: bool = False
    qlora_block_size: int = 64
    lr: float = 0.0  # 0 = use the stage's learning rate; LoRA usually wants ~10x the full-FT rate

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "lora") -> None:
        if self.r < 0:
            raise ValueError(f"{where}.r must be >= 0 (0 disables LoRA), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"{where}.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{where}.dropout must be in [0, 1), got {self.dropout}")
        if self.r > 0 and not self.target_modules:
            raise ValueError(f"{where}.target_modules is empty: name at least one module pattern or 'all-linear'")
        if self.qlora and self.r == 0:
            raise ValueError(f"{where}.qlora=true needs {where}.r > 0 (QLoRA trains adapters on a frozen 4-bit base)")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen base linear layer plus a trainable low-rank update.

    ``base`` is an ``nn.Linear`` or anything with ``in_features``, ``out_features``, ``forward`` and
    ``dense_weight()`` (the NF4 linear used by QLoRA).
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got r={r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.alpha = alpha
        self.rslora = rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        ref = _reference_weight(base)
        # A quantized base stores integer codes; its adapters still train in float32.
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=ref.device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=ref.device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        # Same init as the paper's reference code: A ~ Kaiming-uniform(a=sqrt(5)), B = 0 => delta W = 0 at start.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A``, the dense update that merge() adds to W0."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return y + (update * self.scaling).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into W0 (inference with zero adapter overhead). Exact up to float rounding."""
        if self.merged:
            return
        if not isinstance(self.base, nn.Linear):
            raise TypeError(
                "cannot merge LoRA into a quantized base in place (the sum is not representable in NF4); "
                "use merge_lora(model, dequantize=True) to produce a dense model instead"
            )
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, rslora={self.rslora}, merged={self.merged}"


def _reference_weight(module: nn.Module) -> torch.Tensor:
    for p in module.parameters():
        return p
    for b in module.buffers():
        return b
    raise ValueError(f"{type(module).__name__} has no parameters or buffers to take a device from")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "all-linear":
            if not _NEVER_TARGET_BY_DEFAULT.search(name):
                return True
            continue
        if name == pattern or name.endswith("." + pattern):
            return True
        try:
            if re.fullmatch(pattern, name):
                return True
        except re.error as e:
            raise ValueError(f"lora.target_modules: {pattern!r} is neither a module name nor a valid regex ({e})") from None
    return False


def find_target_linears(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules selected by ``patterns``."""
    patterns = list(patterns)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            continue
        if "." in name and isinstance(parent_and_attr(model, name)[0], LoRALinear):
            continue  # a wrapped base or an adapter's own A/B: never wrap twice
        is_linear = isinstance(module, nn.Linear) or getattr(module, "is_quantized_linear", False)
        if is_linear and _matches(name, patterns):
            names.append(name)
    return names


def parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds the submodule called ``name`` and the attribute it sits under, so
    that the submodule can be swapped (LoRA and the compressed linears swap linears by name)."""
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


def apply_lora(model: nn.Module, cfg: LoRAAdapterConfig, *, quantize: Callable[[nn.Linear], nn.Module] | None = None) -> list[str]:
    """Swap the targeted linears for ``LoRALinear`` in place, freeze everything else.

    Returns the names of the adapted modules. Raises if no module matches, listing the linear
    layers that exist so the user can fix the pattern.
    """
    cfg.validate()
    if not cfg.enabled:
        return []
    targets = find_target_linears(model, cfg.target_modules)
    if not targets:
        available = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"lora.target_modules={cfg.target_modules} matched no linear layer; available: {available[:20]}"
            + (" ..." if len(available) > 20 else "")
        )
    if cfg.qlora and quantize is None:
        from lmstack.align.nf4 import NF4Linear

        def quantize(linear: nn.Linear) -> nn.Module:
            return NF4Linear.from_linear(linear, block_size=cfg.qlora_block_size)

    for p in model.parameters():
        p.requires_grad_(False)
    tied = _tied_weight_ids(model)
    for name in targets:
        parent, child = parent_and_attr(model, name)
        base = getattr(parent, child)
        if id(base.weight) in tied:
            # merging B@A into a tied matrix would silently change the embedding too
            raise ValueError(f"{name}: its weight is tied to another module (e.g. lm_head and the embedding); "
                             "exclude it from lora.target_modules")
        if cfg.qlora:
            base = quantize(base)
        setattr(parent, child, LoRALinear(base, cfg.r, cfg.alpha, cfg.dropout, cfg.rslora))
    model.lora_config = cfg  # read by save_adapter
    model.lora_targets = targets
    return targets


def _tied_weight_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, module in model.named_modules():
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for m in lora_modules(model).values():
        params += [m.lora_A.weight, m.lora_B.weight]
    return params


def merge_lora(model: nn.Module, *, unload: bool = True, dequantize: bool = False) -> nn.Module:
    """Fold every adapter into its base weight.

    With ``unload`` the ``LoRALinear`` wrappers are replaced by plain ``nn.Linear`` so the result
    is an ordinary model (what ``save_pretrained`` and the HF exporter expect). For a QLoRA model,
    ``dequantize=True`` turns each NF4 base into a dense float linear first.
    """
    for name, module in list(lora_modules(model).items()):
        if not isinstance(module.base, nn.Linear):
            if not dequantize:
                raise TypeError(f"{name}: base is quantized; pass dequantize=True to merge into a dense model")
            module.base = module.base.to_linear()
        module.merge()
        if unload:
            parent, child = parent_and_attr(model, name)
            base = module.base
            for p in base.parameters():
                p.requires_grad_(True)
            setattr(parent, child, base)
    if unload:
        for attr in ("lora_config", "lora_targets"):
            if hasattr(model, attr):
                delattr(model, attr)
    return model


def unmerge_lora(model: nn.Module) -> None:
    for module in lora_modules(model).values():
        module.unmerge()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantized bases count their stored elements."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if getattr(m, "is_quantized_linear", False):
            total += m.in_features * m.out_features
    return trainable, total


# ----------------------------------------------------------------------------- saving / loading

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def adapter_state_dict(model: nn.Module, name_map: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """PEFT-style keys: ``base_model.model.<module>.lora_A.weight``.

    ``name_map`` translates an lmstack module name into the exported model's (for example the
    Hugging Face name produced by ``lmstack.model.hf``), so the file loads into PEFT directly.
    """
    out = {}
    for name, module in lora_modules(model).items():
        target = name_map(name) if name_map else name
        out[f"base_model.model.{target}.lora_A.weight"] = module.lora_A.weight.detach().to("cpu").contiguous()
        out[f"base_model.model.{target}.lora_B.weight"] = module.lora_B.weight.detach().to("cpu").contiguous()
    return out


def save_adapter(model: nn.Module, directory: str | Path, *, base_model_name_or_path: str = "",
                 name_map: Callable[[str], str] | None = None) -> dict:
    """Write the adapter alone: adapter_model.safetensors + adapter_config.json (PEFT layout)."""
    from safetensors.torch import save as st_save

    from lmstack.runs import atomic_write_bytes, atomic_write_json

    cfg: LoRAAdapterConfig | None = getattr(model, "lora_config", None)
    modules = lora_modules(model)
    if cfg is None or not modules:
        raise ValueError("model has no LoRA adapters to save (call apply_lora first)")
    directory = Path(directory)
    state = adapter_state_dict(model, name_map)
    targets = sorted({(name_map(n) if name_map else n).split(".")[-1] for n in modules})
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or None,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    atomic_write_bytes(directory / ADAPTER_WEIGHTS, st_save(state, metadata={"format": "pt"}))
    atomic_write_json(directory / ADAPTER_CONFIG, peft_config)
    # PEFT rejects unknown config keys, so lmstack's own module names (for load_adapter) live apart.
    atomic_write_json(directory / "lmstack_adapter.json", {"lora": asdict(cfg), "modules": sorted(modules)})
    return peft_config


def load_adapter(model: nn.Module, directory: str | Path) -> list[str]:
    """Re-attach an adapter saved by :func:`save_adapter` to a fresh base model (in lmstack names)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / "lmstack_adapter.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: missing (this adapter was not saved by lmstack.align.lora.save_adapter)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    cfg = LoRAAdapterConfig(**meta["lora"])
    cfg.target_modules = [re.escape(n) for n in meta["modules"]]
    names = apply_lora(model, cfg)
    state = load_file(str(directory / ADAPTER_WEIGHTS))
    modules = lora_modules(model)
    missing = []
    for name, module in modules.items():
        for part in ("lora_A", "lora_B"):
            key = f"base_model.model.{name}.{part}.weight"
            if key not in state:
                missing.append(key)
                continue
            getattr(module, part).weight.data.copy_(state[key])
    if missing:
        raise ValueError(f"{directory / ADAPTER_WEIGHTS}: missing tensors {missing[:4]} (saved with a name map? load it with PEFT instead)")
    return names


# ----------------------------------------------------------------------------- Hugging Face / PEFT names


def hf_llama_module_name(name: str) -> str:
    """lmstack module name -> the name of the same linear in ``transformers``' LlamaForCausalLM
    (the layout ``lmstack.model.hf.export_hf`` writes for llama-style models)."""
    m = re.fullmatch(r"layers\.(\d+)\.(attn|ffn)\.(\w+)", name)
    if not m:
        raise ValueError(f"{name}: no Hugging Face Llama equivalent (only attention and MLP projections are mapped)")
    layer, block, proj = m.groups()
    return f"model.layers.{layer}.{'self_attn' if block == 'attn' else 'mlp'}.{proj}"


def export_peft_adapter(model: nn.Module, directory: str | Path, base_model_name_or_path: str = "") -> dict:
    """Save the adapter under Hugging Face Llama module names, loadable with
    ``peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(<export_hf dir>), directory)``.

    GPT-2 style models are not supported: HF GPT-2 fuses q/k/v into one ``c_attn`` Conv1D, so three
    separate adapters would need one block-structured adapter of rank 3r with per-block scaling.
    """
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "position_type", "rope") != "rope":
        raise NotImplementedError("PEFT export is implemented for llama-style models (HF GPT-2 fuses q/k/v into c_attn)")
    return save_adapter(model, directory, base_model_name_or_path=base_model_name_or_path, name_map=hf_llama_module_name)
