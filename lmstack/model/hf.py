"""Hugging Face interop: export to / import from `transformers` directories.

llama-style models become ``LlamaForCausalLM``, gpt2-style models ``GPT2LMHeadModel`` and masked LMs
(family "mlm") ``BertForMaskedLM`` (config.json
+ model.safetensors, + tokenizer files when the tokenizer can write them). Only ``safetensors`` and
``json`` are needed here -- not ``transformers`` itself -- so exporting works in a minimal install;
the tests load the result with ``transformers`` and compare logits.

NTK-aware RoPE scaling has no static HF equivalent, but it is exactly a larger rope_theta, so it is
exported as ``rope_theta = theta * factor^(d/(d-2))`` with no scaling (and imports back as such).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from lmstack.runs import atomic_write_bytes, atomic_write_json

from .config import ModelConfig
from .transformer import Transformer

_GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_GPT2_ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                        "gelu": "gelu", "relu": "relu"}


class HFExportError(ValueError):
    """The model uses a feature the target HF architecture does not have."""


def _require(ok: bool, arch: str, what: str) -> None:
    if not ok:
        raise HFExportError(f"cannot export to {arch}: {what}")


def _common_checks(cfg: ModelConfig, arch: str) -> None:
    _require(cfg.n_experts == 0, arch, "MoE layers (n_experts > 0) are not supported by this export")
    _require(not cfg.qk_norm, arch, "qk_norm=True has no equivalent (Qwen3/OLMo2 have it; not exported)")
    _require(cfg.logit_softcap == 0, arch, "logit_softcap has no equivalent")
    _require(not cfg.value_embed_layers and not cfg.unet_skips, arch,
             "value_embed_layers / unet_skips (speedrun options) have no equivalent")
    _require(all(k == "full" for k in cfg.attention_pattern) or cfg.sliding_window >= cfg.max_seq_len, arch,
             f"attention_pattern={cfg.attention_pattern} (sliding/local layers) has no equivalent")


def _hf_special_ids(tokenizer) -> dict:
    ids = {}
    for attr, key in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "pad_token_id")):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if isinstance(value, int):
            ids[key] = value
    return ids


def llama_config_dict(cfg: ModelConfig) -> dict:
    arch = "LlamaForCausalLM"
    _common_checks(cfg, arch)
    _require(cfg.position_type == "rope", arch, f"position_type={cfg.position_type!r} (Llama uses rope)")
    _require(cfg.ffn_type == "swiglu", arch, f"ffn_type={cfg.ffn_type!r} (Llama uses swiglu)")
    _require(cfg.norm_type == "rmsnorm", arch, f"norm_type={cfg.norm_type!r} (Llama uses rmsnorm)")
    theta = cfg.rope_theta
    rope_parameters: dict = {"rope_type": "default", "rope_theta": theta}
    rope_scaling = None
    if cfg.rope_scaling == "ntk" and cfg.rope_scaling_factor != 1.0:
        theta = theta * cfg.rope_scaling_factor ** (cfg.head_dim / (cfg.head_dim - 2))
        rope_parameters["rope_theta"] = theta
    elif cfg.rope_scaling == "linear" and cfg.rope_scaling_factor != 1.0:
        rope_scaling = {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
    elif cfg.rope_scaling == "yarn" and cfg.rope_scaling_factor != 1.0:
        rope_scaling = {"rope_type": "yarn", "factor": cfg.rope_scaling_factor,
                        "original_max_position_embeddings": cfg.rope_original_max_len,
                        "beta_fast": cfg.yarn_beta_fast, "beta_slow": cfg.yarn_beta_slow, "truncate": True}
    if rope_scaling:
        rope_parameters = {**rope_scaling, "rope_theta": theta}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": 0.0,
        # transformers >= 5 reads rope_parameters; 4.x (and llama.cpp, vLLM) read rope_theta/rope_scaling
        "rope_parameters": rope_parameters, "rope_theta": theta, "rope_scaling": rope_scaling,
        "torch_dtype": "float32", "use_cache": True, "bos_token_id": None, "eos_token_id": None,
    }


def gpt2_config_dict(cfg: ModelConfig) -> dict:
    arch = "GPT2LMHeadModel"
    _common_checks(cfg, arch)
    _require(cfg.position_type == "learned", arch, f"position_type={cfg.position_type!r} (GPT-2 uses learned)")
    _require(cfg.ffn_type in _GPT2_ACTIVATIONS, arch, f"ffn_type={cfg.ffn_type!r}; GPT-2 supports {sorted(_GPT2_ACTIVATIONS)}")
    _require(cfg.norm_type == "layernorm", arch, f"norm_type={cfg.norm_type!r} (GPT-2 uses layernorm)")
    _require(cfg.n_kv_heads == cfg.n_heads, arch, f"n_kv_heads={cfg.n_kv_heads} != n_heads={cfg.n_heads} (GPT-2 is MHA)")
    _require(cfg.head_dim * cfg.n_heads == cfg.d_model, arch, "head_dim * n_heads must equal d_model")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.ffn_hidden,
        "activation_function": _GPT2_ACTIVATIONS[cfg.ffn_type], "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": cfg.init_std,
        "scale_attn_weights": True, "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32",
        "use_cache": True, "bos_token_id": None, "eos_token_id": None,
    }


def _llama_state(model: Transformer) -> dict[str, torch.Tensor]:
    cfg, out = model.config, {}
    sd = model.state_dict()
    out["model.embed_tokens.weight"] = sd["embed.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "attn_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "ffn_norm.weight"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for kind in ("weight", "bias"):
                if src + f"attn.{name}.{kind}" in sd:
                    out[dst + f"self_attn.{name}.{kind}"] = sd[src + f"attn.{name}.{kind}"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            for kind in ("weight", "bias"):
                if src + f"ffn.{name}.{kind}" in sd:
                    out[dst + f"mlp.{name}.{kind}"] = sd[src + f"ffn.{name}.{kind}"]
    out["model.norm.weight"] = sd["norm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _ln(sd: dict, prefix: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = sd[prefix + ".weight"]
    bias = sd.get(prefix + ".bias")
    return weight, bias if bias is not None else torch.zeros(dim)


def _gpt2_state(model: Transformer) -> dict[str, torch.Tensor]:
    cfg, out = model.config, {}
    sd = model.state_dict()
    d = cfg.d_model

    def bias(key: str, size: int) -> torch.Tensor:
        return sd[key] if key in sd else torch.zeros(size)

    out["transformer.wte.weight"] = sd["embed.weight"]
    out["transformer.wpe.weight"] = sd["pos_embed.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"transformer.h.{i}."
        out[dst + "ln_1.weight"], out[dst + "ln_1.bias"] = _ln(sd, src + "attn_norm", d)
        out[dst + "ln_2.weight"], out[dst + "ln_2.bias"] = _ln(sd, src + "ffn_norm", d)
        # HF GPT-2 uses Conv1D: weight stored as [in, out], q/k/v fused along out.
        qkv = [sd[src + f"attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]
        out[dst + "attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()
        out[dst + "attn.c_attn.bias"] = torch.cat([bias(src + f"attn.{n}.bias", d) for n in ("q_proj", "k_proj", "v_proj")])
        out[dst + "attn.c_proj.weight"] = sd[src + "attn.o_proj.weight"].t()
        out[dst + "attn.c_proj.bias"] = bias(src + "attn.o_proj.bias", d)
        out[dst + "mlp.c_fc.weight"] = sd[src + "ffn.up_proj.weight"].t()
        out[dst + "mlp.c_fc.bias"] = bias(src + "ffn.up_proj.bias", cfg.ffn_hidden)
        out[dst + "mlp.c_proj.weight"] = sd[src + "ffn.down_proj.weight"].t()
        out[dst + "mlp.c_proj.bias"] = bias(src + "ffn.down_proj.bias", d)
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = _ln(sd, "norm", d)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def detect_architecture(cfg: ModelConfig) -> str:
    if cfg.position_type == "learned" and cfg.norm_type == "layernorm":
        return "gpt2"
    if cfg.position_type == "rope" and cfg.ffn_type == "swiglu" and cfg.norm_type == "rmsnorm":
        return "llama"
    raise HFExportError(
        f"no HF architecture matches position_type={cfg.position_type!r}, ffn_type={cfg.ffn_type!r}, "
        f"norm_type={cfg.norm_type!r}; use the llama-style (rope/swiglu/rmsnorm) or gpt2-style "
        "(learned/gelu/layernorm) preset")


def _export_tokenizer(tokenizer, directory: Path) -> None:
    """Write the lmstack tokenizer beside the weights as tokenizer.json (+ config) when one was given."""
    if tokenizer is not None:
        from lmstack.tokenizer import export_hf as export_tokenizer_hf

        export_tokenizer_hf(tokenizer, directory)


def export_hf(model: Transformer, directory: str | os.PathLike, tokenizer=None, architecture: str | None = None) -> Path:
    """Write a `transformers`-loadable directory. architecture: "llama", "gpt2" or None (auto)."""
    directory = Path(directory)
    cfg = model.config
    family = getattr(cfg, "family", "transformer")
    if family == "mlm":  # BERT-style encoder -> BertForMaskedLM
        return export_bert(model, directory, tokenizer)
    if family != "transformer":
        raise HFExportError(f"model family {family!r} has no transformers counterpart lmstack exports to "
                            "(export works for the transformer and mlm families)")
    arch = architecture or detect_architecture(cfg)
    if arch == "llama":
        config, state = llama_config_dict(cfg), _llama_state(model)
    elif arch == "gpt2":
        config, state = gpt2_config_dict(cfg), _gpt2_state(model)
    else:
        raise HFExportError(f"unknown architecture {arch!r}; choose 'llama' or 'gpt2'")
    config.update(_hf_special_ids(tokenizer))
    state = {k: v.detach().float().contiguous().cpu() for k, v in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / "model.safetensors", save(state, metadata={"format": "pt"}))
    atomic_write_json(directory / "config.json", config)
    _export_tokenizer(tokenizer, directory)
    return directory


# ---------------------------------------------------------------------------------------- BERT (mlm family)

_BERT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def bert_config_dict(cfg: ModelConfig, n_embeddings: int) -> dict:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HFExportError(f"cannot export to BertForMaskedLM: {what}")

    need(cfg.family == "mlm", f"family={cfg.family!r}, expected 'mlm'")
    need(cfg.norm_type == "layernorm" and cfg.norm_bias, "BERT uses LayerNorm with a bias (norm_bias=True)")
    need(cfg.bias, "BERT's linears have biases (bias=True)")
    need(cfg.ffn_type in _BERT_ACTIVATIONS, f"ffn_type={cfg.ffn_type!r} has no BERT activation")
    need(cfg.n_kv_heads == cfg.n_heads, "BERT has no grouped-query attention (n_kv_heads must equal n_heads)")
    need(cfg.head_dim * cfg.n_heads == cfg.d_model, "BERT needs head_dim * n_heads == d_model")
    need(not cfg.qk_norm, "BERT has no qk_norm")
    need(cfg.tie_embeddings, "BertForMaskedLM ties its decoder to the word embeddings (tie_embeddings=True)")
    return {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": n_embeddings,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden, "hidden_act": _BERT_ACTIVATIONS[cfg.ffn_type],
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": 1, "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute", "tie_word_embeddings": True, "pad_token_id": 0,
    }


def bert_state_dict(model) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {"bert.embeddings.word_embeddings.weight": sd["embed.weight"],
           "bert.embeddings.position_embeddings.weight": sd["pos_embed.weight"],
           # one token type, all zeros: lmstack has no segment embeddings
           "bert.embeddings.token_type_embeddings.weight": torch.zeros(1, model.config.d_model),
           "bert.embeddings.LayerNorm.weight": sd["embed_norm.weight"],
           "bert.embeddings.LayerNorm.bias": sd["embed_norm.bias"],
           "cls.predictions.transform.dense.weight": sd["head_dense.weight"],
           "cls.predictions.transform.dense.bias": sd["head_dense.bias"],
           "cls.predictions.transform.LayerNorm.weight": sd["head_norm.weight"],
           "cls.predictions.transform.LayerNorm.bias": sd["head_norm.bias"],
           "cls.predictions.bias": sd["lm_head.bias"]}
    names = {"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
             "attn.v_proj": "attention.self.value", "attn.o_proj": "attention.output.dense",
             "attn_norm": "attention.output.LayerNorm", "ffn.up_proj": "intermediate.dense",
             "ffn.down_proj": "output.dense", "ffn_norm": "output.LayerNorm"}
    for i in range(model.config.n_layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"bert.encoder.layer.{i}.{theirs}.{p}"] = sd[f"layers.{i}.{ours}.{p}"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_bert(model, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write a ``transformers`` BertForMaskedLM directory (config.json + model.safetensors, and the
    tokenizer's files when given). With mlm_mask_id=-1 the [MASK] id is vocab_size, a row the
    tokenizer itself does not name."""
    if getattr(model.config, "family", None) != "mlm":
        raise HFExportError(f"export_bert needs a masked LM (family 'mlm'), got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_cfg = bert_config_dict(model.config, model.n_embeddings)
    hf_cfg.update(_hf_special_ids(tokenizer))
    hf_cfg["mask_token_id"] = model.mask_id
    atomic_write_bytes(directory / "model.safetensors", save(bert_state_dict(model), metadata={"format": "pt"}))
    atomic_write_json(directory / "config.json", hf_cfg)
    _export_tokenizer(tokenizer, directory)
    return directory


# ---------------------------------------------------------------------------------------- import
def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for name in files:
            state.update(load_file(str(directory / name)))
        return state
    if (directory / "pytorch_model.bin").exists():
        raise ValueError(f"{directory}: only pytorch_model.bin (pickle) found; lmstack never unpickles. "
                         "Convert it with transformers: model.save_pretrained(dir, safe_serialization=True)")
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def _llama_model_config(hf: dict, where: str) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported (Llama uses silu)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    max_len = int(hf.get("max_position_embeddings", 2048))
    extra: dict = {}
    if kind == "linear":
        extra = dict(rope_scaling="linear", rope_scaling_factor=float(rope["factor"]))
    elif kind == "yarn":
        for unsupported in ("attention_factor", "mscale", "mscale_all_dim"):
            if rope.get(unsupported) is not None:
                raise ValueError(f"{where}: YaRN with {unsupported} is not supported")
        if rope.get("truncate", True) is False:
            raise ValueError(f"{where}: YaRN with truncate=false is not supported")
        extra = dict(rope_scaling="yarn", rope_scaling_factor=float(rope["factor"]),
                     rope_original_max_len=int(rope.get("original_max_position_embeddings", max_len)),
                     yarn_beta_fast=float(rope.get("beta_fast") or 32.0),
                     yarn_beta_slow=float(rope.get("beta_slow") or 1.0))
    elif kind != "default":
        raise ValueError(f"{where}: RoPE type {kind!r} is not supported (default, linear and yarn are)")
    bias = bool(hf.get("attention_bias", False))
    if bool(hf.get("mlp_bias", False)) != bias:
        raise ValueError(f"{where}: attention_bias != mlp_bias is not supported (lmstack has one 'bias' switch)")
    n_heads = int(hf["num_attention_heads"])
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]), n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads, n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_heads), max_seq_len=max_len,
        ffn_type="swiglu", ffn_hidden=int(hf["intermediate_size"]), norm_type="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), position_type="rope", rope_theta=theta,
        bias=bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **extra)


def _gpt2_model_config(hf: dict, where: str) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTIVATIONS_IN:
        raise ValueError(f"{where}: activation_function={act!r} is not supported ({sorted(_GPT2_ACTIVATIONS_IN)})")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise ValueError(f"{where}: {flag}=true is not supported")
    if hf.get("scale_attn_weights", True) is False:
        raise ValueError(f"{where}: scale_attn_weights=false is not supported")
    d = int(hf.get("n_embd", 768))
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf.get("n_layer", 12)),
        n_heads=int(hf.get("n_head", 12)), n_kv_heads=int(hf.get("n_head", 12)),
        max_seq_len=int(hf.get("n_positions", 1024)), ffn_type=_GPT2_ACTIVATIONS_IN[act],
        ffn_hidden=int(hf.get("n_inner") or 4 * d), norm_type="layernorm", norm_bias=True,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), position_type="learned", bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _llama_to_lmstack(state: dict, cfg: ModelConfig) -> dict:
    out = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"]}
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[dst + "attn_norm.weight"] = state[src + "input_layernorm.weight"]
        out[dst + "ffn_norm.weight"] = state[src + "post_attention_layernorm.weight"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            for kind in ("weight", "bias") if cfg.bias else ("weight",):
                out[dst + f"attn.{name}.{kind}"] = state[src + f"self_attn.{name}.{kind}"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            for kind in ("weight", "bias") if cfg.bias else ("weight",):
                out[dst + f"ffn.{name}.{kind}"] = state[src + f"mlp.{name}.{kind}"]
    out["lm_head.weight"] = state["model.embed_tokens.weight"] if cfg.tie_embeddings \
        else state["lm_head.weight"]
    return out


def _gpt2_to_lmstack(state: dict, cfg: ModelConfig) -> dict:
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    d = cfg.d_model
    out = {"embed.weight": state["wte.weight"], "pos_embed.weight": state["wpe.weight"],
           "norm.weight": state["ln_f.weight"], "norm.bias": state["ln_f.bias"]}
    for i in range(cfg.n_layers):
        src, dst = f"h.{i}.", f"layers.{i}."
        for a, b in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm")):
            out[dst + f"{b}.weight"], out[dst + f"{b}.bias"] = state[src + f"{a}.weight"], state[src + f"{a}.bias"]
        w = state[src + "attn.c_attn.weight"].t()  # [3D, D]
        bias = state[src + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[dst + f"attn.{name}.weight"] = w[j * d:(j + 1) * d]
            out[dst + f"attn.{name}.bias"] = bias[j * d:(j + 1) * d]
        out[dst + "attn.o_proj.weight"] = state[src + "attn.c_proj.weight"].t()
        out[dst + "attn.o_proj.bias"] = state[src + "attn.c_proj.bias"]
        out[dst + "ffn.up_proj.weight"] = state[src + "mlp.c_fc.weight"].t()
        out[dst + "ffn.up_proj.bias"] = state[src + "mlp.c_fc.bias"]
        out[dst + "ffn.down_proj.weight"] = state[src + "mlp.c_proj.weight"].t()
        out[dst + "ffn.down_proj.bias"] = state[src + "mlp.c_proj.bias"]
    out["lm_head.weight"] = state["wte.weight"] if cfg.tie_embeddings else state["lm_head.weight"]
    return out


def import_hf(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    """Load a LlamaForCausalLM or GPT2LMHeadModel directory (safetensors) as an lmstack Transformer."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing; expected a Hugging Face model directory")
    hf = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = hf.get("model_type")
    where = str(config_path)
    if model_type == "llama":
        cfg, convert = _llama_model_config(hf, where), _llama_to_lmstack
    elif model_type == "gpt2":
        cfg, convert = _gpt2_model_config(hf, where), _gpt2_to_lmstack
    else:
        raise ValueError(f"{where}: model_type={model_type!r} is not supported; lmstack imports 'llama' and 'gpt2'")
    state = _read_hf_weights(directory)
    try:
        converted = convert(state, cfg)
    except KeyError as e:
        raise ValueError(f"{directory}: weight {e.args[0]!r} missing from the safetensors files") from None
    model = Transformer(cfg)
    converted = {k: v.float() for k, v in converted.items()}
    model.load_state_dict(converted, strict=True)
    return model.to(device)


def main(argv: list[str]) -> int:
    """`lmstack hf export CKPT_DIR OUT_DIR [--tokenizer tokenizer.json] [--arch llama|gpt2]`
    and `lmstack hf import HF_DIR OUT_DIR` (OUT_DIR gets an lmstack model.safetensors + config.json)."""
    import argparse

    from .io import load_pretrained, save_pretrained

    ap = argparse.ArgumentParser(prog="lmstack hf", description="Hugging Face transformers interop")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="lmstack checkpoint -> transformers directory")
    ex.add_argument("checkpoint", help="directory with model.safetensors + config.json (e.g. runs/x/checkpoints/sft)")
    ex.add_argument("out", help="output directory for the transformers model")
    ex.add_argument("--tokenizer", help="tokenizer.json to export alongside (e.g. runs/x/tokenizer/tokenizer.json)")
    ex.add_argument("--arch", choices=["llama", "gpt2"], help="target architecture (default: detected)")
    im = sub.add_parser("import", help="transformers directory -> lmstack checkpoint")
    im.add_argument("hf_dir")
    im.add_argument("out")
    args = ap.parse_args(argv)
    if args.command == "export":
        tokenizer = None
        if args.tokenizer:
            from lmstack.tokenizer import Tokenizer

            tokenizer = Tokenizer.load(args.tokenizer)
        model = load_pretrained(args.checkpoint)
        out = export_hf(model, args.out, tokenizer=tokenizer, architecture=args.arch)
        print(f"wrote {out} ({model.num_params():,} parameters)")
    else:
        model = import_hf(args.hf_dir)
        out = save_pretrained(model, args.out)
        print(f"wrote {out} ({model.num_params():,} parameters)")
    return 0
