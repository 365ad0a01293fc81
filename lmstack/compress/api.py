"""compress_model: prune and/or quantize a model's linear layers in place; save and load the result.

Linears are picked by name the way LoRA picks them (``target_modules``, default every linear but
the output head and embeddings) and replaced in place by :class:`QuantLinear` (or the QLoRA
``NF4Linear``). Pruned layers stay ``nn.Linear`` with exact zeros. A compressed checkpoint is
``model.safetensors`` (packed codes, scales, the untouched tensors) + ``config.json`` (format
``lmstack-compressed``: the model config plus one entry per replaced module).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lmstack.align.lora import parent_and_attr
from lmstack.runs import atomic_write_bytes, atomic_write_json, read_json

from .awq import (ModuleOutputLoss, awq_group_search, awq_quantize_linear, awq_quantize_scaled, fold_scale_into_norm,
                  smoothquant_linear)
from .calibrate import collect_inputs, layer_groups, record_module_calls
from .gptq import gptq_quantize, sparsegpt_prune
from .prune import magnitude_score, make_mask, parse_n_m, wanda_score
from .quant import QuantLinear, QuantSpec

QUANT_METHODS = ("", "rtn", "gptq", "awq", "smoothquant", "nf4")
PRUNE_METHODS = ("", "magnitude", "wanda", "sparsegpt")
CALIBRATED = {"gptq", "awq", "smoothquant", "wanda", "sparsegpt"}
FORMAT = "lmstack-compressed"


@dataclass
class CompressConfig:
    """What to do to the weights (the ``[compress]`` recipe table holds these fields)."""

    quantize: str = "rtn"          # "" | rtn | gptq | awq | smoothquant (W8A8) | nf4
    bits: int = 4                  # 2, 3, 4 or 8 (nf4 is always 4; smoothquant always 8)
    group_size: int = 128          # input columns per scale; 0 = per output channel; 32 suits tiny models
    symmetric: bool = False
    act_order: bool = False        # GPTQ: columns by decreasing Hessian diagonal
    block_size: int = 128          # GPTQ / SparseGPT lazy-batch width (SparseGPT: also its mask-selection block)
    percdamp: float = 0.01         # GPTQ / SparseGPT: damping, a fraction of mean(diag H)
    awq_grid: int = 20
    awq_clip: bool = True          # AWQ: also search each group's clipping range
    awq_scope: str = "linear"      # AWQ: "linear" = a scale per linear (a runtime input scale); "group" = one
                                   # scale per shared input (q/k/v, gate/up), judged on the attention / FFN
                                   # output and folded into the norm (no runtime scale there)
    awq_windows: int = 16          # AWQ group search: calibration windows replayed through the module
    awq_duo: bool = True           # AWQ: also AutoAWQ's weight-aware scales mean|x|^a / w_mean^(1-a)
    smooth_alpha: float = 0.5
    nf4_block_size: int = 64
    prune: str = ""                # "" | magnitude | wanda | sparsegpt
    sparsity: float = 0.5
    n_m: str = ""                  # "2:4" / "4:8": N:M pattern instead of unstructured sparsity
    structured: str = ""           # "" | ffn | heads | layers: remove whole units first (a smaller dense model)
    structured_ratio: float = 0.25 # fraction of FFN neurons / head groups / blocks removed
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    calib_samples: int = 64        # training-set windows used for calibration
    calib_seq_len: int = 0         # 0 = the model's max_seq_len

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "compress") -> None:
        if self.quantize not in QUANT_METHODS:
            raise ValueError(f"{where}.quantize={self.quantize!r}: choose one of {', '.join(repr(m) for m in QUANT_METHODS)}")
        if self.prune not in PRUNE_METHODS:
            raise ValueError(f"{where}.prune={self.prune!r}: choose one of {', '.join(repr(m) for m in PRUNE_METHODS)}")
        if self.quantize in ("rtn", "gptq", "awq"):
            QuantSpec(self.bits, self.group_size, self.symmetric)  # a group that does not divide a layer shrinks there
        if self.prune and self.quantize == "gptq":
            raise ValueError(f"{where}: prune + gptq is not supported (GPTQ's updates would refill pruned weights); "
                             "use prune with rtn, awq or nf4, or SparseGPT alone")
        if self.prune and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"{where}.sparsity must be in [0, 1), got {self.sparsity}")
        parse_n_m(self.n_m)
        if self.structured not in ("", "ffn", "heads", "layers"):
            raise ValueError(f"{where}.structured={self.structured!r}: choose '', 'ffn', 'heads' or 'layers'")
        if self.structured and not 0.0 <= self.structured_ratio < 1.0:
            raise ValueError(f"{where}.structured_ratio must be in [0, 1), got {self.structured_ratio}")
        if self.awq_scope not in ("group", "linear"):
            raise ValueError(f"{where}.awq_scope={self.awq_scope!r}: choose 'group' (shared input, folded into the "
                             "norm) or 'linear'")
        if self.awq_windows <= 0:
            raise ValueError(f"{where}.awq_windows must be positive, got {self.awq_windows}")
        if self.calib_samples <= 0:
            raise ValueError(f"{where}.calib_samples must be positive, got {self.calib_samples}")

    @property
    def needs_calibration(self) -> bool:
        return self.quantize in CALIBRATED or self.prune in CALIBRATED or bool(self.structured)

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, self.symmetric)

    def label(self) -> str:
        parts = []
        if self.structured:
            parts.append(f"structured {self.structured} -{self.structured_ratio:.0%}")
        if self.prune:
            # SparseGPT picks its mask per block of columns: a non-default block changes the result
            block = f" mask-block {self.block_size}" if self.prune == "sparsegpt" and self.block_size != 128 else ""
            parts.append(f"{self.prune} {self.n_m or f'{self.sparsity:.0%}'}{block}")
        if self.quantize == "nf4":
            parts.append("nf4")
        elif self.quantize == "smoothquant":
            parts.append("smoothquant w8a8")
        elif self.quantize:
            g = f"g{self.group_size}" if self.group_size else "per-channel"
            parts.append(f"{self.quantize} w{self.bits} {g}{' sym' if self.symmetric else ''}"
                         f"{' act-order' if self.act_order and self.quantize == 'gptq' else ''}"
                         f"{' no-clip' if self.quantize == 'awq' and not self.awq_clip else ''}"
                         f"{' shared-input' if self.quantize == 'awq' and self.awq_scope == 'group' else ''}"
                         f"{' no-duo' if self.quantize == 'awq' and not self.awq_duo else ''}")
        return " + ".join(parts) or "none"


def target_linears(model: nn.Module, patterns: list[str]) -> list[str]:
    from lmstack.align.lora import find_target_linears

    modules = dict(model.named_modules())
    names = [n for n in find_target_linears(model, patterns) if type(modules[n]) is nn.Linear]
    if not names:
        raise ValueError(f"compress.target_modules={patterns} matched no nn.Linear in the model")
    tied = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n == "embed.weight"}
    bad = [n for n in names if id(modules[n].weight) in tied]
    if bad:
        raise ValueError(f"compress: {bad[0]} shares its weight with the embedding; exclude it from target_modules")
    return names


@torch.no_grad()
def _prune_linear(linear: nn.Linear, cfg: CompressConfig, acc) -> dict:
    n_m = parse_n_m(cfg.n_m)
    if cfg.prune == "sparsegpt":
        new_w, keep = sparsegpt_prune(linear.weight, acc.hessian, cfg.sparsity, n_m=n_m,
                                      block_size=cfg.block_size, percdamp=cfg.percdamp)
        linear.weight.copy_(new_w)
    else:
        score = magnitude_score(linear.weight) if cfg.prune == "magnitude" else wanda_score(linear.weight, acc.channel_sq_norm())
        keep = make_mask(score, cfg.sparsity, n_m)
        linear.weight.mul_(keep.to(linear.weight.dtype))
    return {"sparsity": float(1 - keep.float().mean())}


@torch.no_grad()
def _quantize_linear(linear: nn.Linear, cfg: CompressConfig, acc, rows) -> tuple[nn.Module, dict]:
    spec = cfg.spec().fitted(linear.in_features)
    if cfg.quantize == "rtn":
        return QuantLinear.from_linear(linear, spec), {}
    if cfg.quantize == "nf4":
        from lmstack.align.nf4 import NF4Linear
        return NF4Linear.from_linear(linear, block_size=cfg.nf4_block_size), {}
    if cfg.quantize == "gptq":
        codes, scales, zeros, perm = gptq_quantize(linear.weight, acc.hessian, spec, block_size=cfg.block_size,
                                                   percdamp=cfg.percdamp, act_order=cfg.act_order)
        return QuantLinear.from_codes(codes, scales, zeros, spec, bias=linear.bias, perm=perm), {}
    if cfg.quantize == "awq":
        return awq_quantize_linear(linear, rows, acc.channel_abs_mean(), spec, cfg.awq_grid, cfg.awq_clip, cfg.awq_duo)
    if cfg.quantize == "smoothquant":
        return smoothquant_linear(linear, acc.abs_max, cfg.smooth_alpha)
    raise ValueError(f"unknown quantization method {cfg.quantize!r}")


def awq_shared_input(model: nn.Module, group: list[str]) -> tuple[str, str] | None:
    """(module, norm) when ``group`` is every linear that reads one norm's output: q/k/v of a block's
    attention (after ``attn_norm``) or gate/up of its FFN (after ``ffn_norm``). AWQ then searches one
    scale for the whole group, judged on that module's output, and folds it into the norm."""
    from lmstack.model.transformer import MLP, Attention

    m = re.fullmatch(r"(layers\.\d+)\.(attn|ffn)\.\w+", group[0])
    if m is None:
        return None
    block, part = m.groups()
    modules = dict(model.named_modules())
    parent, norm = modules.get(f"{block}.{part}"), modules.get(f"{block}.{part}_norm")
    readers = ("q_proj", "k_proj", "v_proj") if part == "attn" else ("gate_proj", "up_proj")
    expected = {f"{block}.{part}.{r}" for r in readers if isinstance(getattr(parent, r, None), nn.Linear)}
    if (set(group) != expected or not isinstance(parent, Attention if part == "attn" else MLP)
            or getattr(norm, "weight", None) is None):
        return None
    return f"{block}.{part}", f"{block}.{part}_norm"


def _awq_group(model: nn.Module, group: list[str], shared: tuple[str, str], stats: dict, calib: torch.Tensor,
               cfg: CompressConfig) -> dict[str, tuple[nn.Module, dict]]:
    parent_name, norm_name = shared
    modules = dict(model.named_modules())
    linears = [modules[n] for n in group]
    specs = [cfg.spec().fitted(lin.in_features) for lin in linears]
    calls = record_module_calls(model, parent_name, calib, cfg.awq_windows)
    loss = ModuleOutputLoss(modules[parent_name], linears, calls)
    acc, rows = stats[group[0]]
    scale, alpha, err = awq_group_search([lin.weight for lin in linears], specs, acc.channel_abs_mean(), loss,
                                         cfg.awq_grid, cfg.awq_duo)
    fold_scale_into_norm(modules[norm_name], scale)
    out = {}
    for name, lin, spec in zip(group, linears, specs):
        q, info = awq_quantize_scaled(lin, scale, rows, spec, cfg.awq_clip, runtime_scale=False)
        out[name] = (q, {"alpha": alpha, "rel_error": err, "folded_into": norm_name, **info})
    return out


def compress_model(model: nn.Module, cfg: CompressConfig, calib: torch.Tensor | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Prune and/or quantize ``model`` in place. ``calib [n, T]`` token ids are needed by the
    calibrated methods (GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT). Returns per-module details."""
    from tqdm import tqdm

    cfg.validate()
    if cfg.needs_calibration and calib is None:
        raise ValueError(f"compress: {cfg.label()} needs calibration tokens (pass calib=[n, T] token ids)")
    names = target_linears(model, cfg.target_modules)
    modules = dict(model.named_modules())
    details: dict[str, dict] = {}
    t0 = time.time()
    groups = layer_groups(model, names)
    keep_rows = 2048 if cfg.quantize == "awq" else 0  # AWQ searches its scales on these input rows
    for group in tqdm(groups, desc=f"compress ({cfg.label()})", leave=False):
        stats = collect_inputs(model, group, calib, keep_rows=keep_rows) if cfg.needs_calibration else {}
        for name in group:
            details[name] = _prune_linear(modules[name], cfg, stats.get(name, (None, None))[0]) if cfg.prune else {}
        shared = awq_shared_input(model, group) if cfg.quantize == "awq" and cfg.awq_scope == "group" else None
        grouped = _awq_group(model, group, shared, stats, calib, cfg) if shared else {}
        for name in group:
            linear = modules[name]
            acc, rows = stats.get(name, (None, None))
            info = details[name]
            if cfg.quantize:
                fitted = cfg.spec().fitted(linear.in_features).group_size
                if cfg.quantize in ("rtn", "gptq", "awq") and fitted != cfg.group_size:
                    if not any("group_size" in d for d in details.values()):
                        log(f"{name}: group_size {cfg.group_size} does not divide its {linear.in_features} inputs; "
                            f"using {fitted or 'per-channel'} there (and wherever else that happens)")
                    info["group_size"] = fitted
                new, qinfo = grouped[name] if name in grouped else _quantize_linear(linear, cfg, acc, rows)
                info.update(qinfo)
                parent, child = parent_and_attr(model, name)
                setattr(parent, child, new)
    model.compress_config = cfg
    log(f"compressed {len(names)} linears ({cfg.label()}) in {time.time() - t0:.1f}s")
    return details


def compress(model: nn.Module, cfg: CompressConfig, calib: torch.Tensor | None = None,
             log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Everything ``cfg`` asks for: structured pruning first (it returns a new, smaller model), then
    unstructured pruning and quantization in place. Returns (model, per-module details)."""
    details: dict = {}
    if cfg.structured:
        from .structured import structured_prune
        if calib is None:
            raise ValueError("compress: structured pruning needs calibration tokens")
        before = sum(p.numel() for p in model.parameters())
        model, info = structured_prune(model, calib, cfg.structured, cfg.structured_ratio)
        log(f"structured pruning ({cfg.structured}, {cfg.structured_ratio:.0%}): {before:,} -> "
            f"{sum(p.numel() for p in model.parameters()):,} parameters")
        details["structured"] = {"kept": [k.tolist() if hasattr(k, "tolist") else k for k in info["kept"]]}
    if cfg.prune or cfg.quantize:
        details.update(compress_model(model, cfg, calib=calib, log=log))
    model.compress_config = cfg
    return model, details


# ----------------------------------------------------------------------------- size accounting


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if getattr(m, "is_quantized_linear", False)}


def linear_bits_per_weight(model: nn.Module) -> float:
    """Average stored bits per weight over the linears inside the blocks (the compressed part)."""
    bits = weights = 0
    for name, m in model.named_modules():
        if not name.startswith("layers."):
            continue
        if getattr(m, "is_quantized_linear", False):
            bits += 8 * m.storage_bytes() - (0 if getattr(m, "bias", None) is None else 32 * m.bias.numel())
            weights += m.in_features * m.out_features
        elif type(m) is nn.Linear:
            bits += 32 * m.weight.numel()
            weights += m.weight.numel()
    return bits / max(weights, 1)


# ----------------------------------------------------------------------------- save / load


def _module_meta(m: nn.Module) -> dict:
    if isinstance(m, QuantLinear):
        return m.quant_meta()
    return {"kind": "nf4", "block_size": m.block_size, "double_quant": m._double_quant,
            "scale_block_size": m._scale_block_size, "bias": m.bias is not None,
            "in_features": m.in_features, "out_features": m.out_features}


def save_compressed(model: nn.Module, directory: str | os.PathLike) -> Path:
    from safetensors.torch import save

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    cfg = getattr(model, "compress_config", None)
    atomic_write_bytes(directory / "model.safetensors", save(state, metadata={"format": "pt", "lmstack": FORMAT}))
    atomic_write_json(directory / "config.json", {
        "format": FORMAT, "format_version": 1, "model": model.config.to_dict(),
        "compress": asdict(cfg) if cfg is not None else None,
        "modules": {n: _module_meta(m) for n, m in quantized_modules(model).items()},
    })
    return directory


def load_compressed(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by :func:`save_compressed` (or a plain lmstack checkpoint)."""
    from safetensors.torch import load_file

    from lmstack.align.nf4 import NF4Linear, quantize_nf4
    from lmstack.model import ModelConfig, Transformer, load_pretrained

    directory = Path(directory)
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a directory written by save_compressed")
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        return load_pretrained(directory, device=device)
    model = Transformer(ModelConfig.from_dict(meta["model"], where=f"{path} model"))
    for name, m in meta.get("modules", {}).items():
        parent, child = parent_and_attr(model, name)
        if m["kind"] == "int":
            new = QuantLinear.from_meta(m)
        elif m["kind"] == "nf4":
            shape = torch.zeros(m["out_features"], m["in_features"])
            new = NF4Linear(m["in_features"], m["out_features"],
                            quantize_nf4(shape, m["block_size"], m["double_quant"], m["scale_block_size"]),
                            torch.zeros(m["out_features"]) if m["bias"] else None)
        else:
            raise ValueError(f"{path}: module {name} has unknown kind {m['kind']!r}")
        setattr(parent, child, new)
    state = load_file(str(directory / "model.safetensors"))
    if model.config.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("embed.weight"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory / 'model.safetensors'}: does not match config.json; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if meta.get("compress"):
        model.compress_config = CompressConfig(**meta["compress"])
    return model.to(device).eval()


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every quantized linear by a dense ``nn.Linear`` with the weight it computes with."""
    for name, m in list(quantized_modules(model).items()):
        parent, child = parent_and_attr(model, name)
        setattr(parent, child, m.to_linear())
    return model


__all__ = ["CompressConfig", "compress", "compress_model", "save_compressed", "load_compressed", "dequantize_model",
           "linear_bits_per_weight", "quantized_modules", "target_linears", "awq_shared_input", "QUANT_METHODS", "PRUNE_METHODS"]
