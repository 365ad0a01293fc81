"""GGUF export for llama.cpp: a llama-style lmstack checkpoint + its tokenizer -> one ``.gguf`` file.

Weights are written in F32, F16, Q8_0 or Q4_0. The two block formats are computed here, following
ggml's reference quantizers (``quantize_row_q8_0_ref`` / ``quantize_row_q4_0_ref``), and tested to
be byte-identical to the ``gguf`` package's own quantizer:
- Q8_0: blocks of 32 values; ``d = max|x| / 127`` (fp16), ``q = roundf(x / d)`` as int8; 34 bytes.
- Q4_0: blocks of 32; ``m`` = the value of largest magnitude (with its sign), ``d = m / -8`` (fp16),
  ``q = min(15, trunc(x / d + 8.5))``; value j sits in the low nibble of byte j, value j + 16 in
  its high nibble; 18 bytes.
Norm weights (1-D) always stay F32, and so does any matrix whose rows are not a multiple of 32.

Layout notes. llama.cpp's llama architecture rotates (q, k) pairs that are adjacent in a head,
while lmstack (like Hugging Face Llama) rotates dimension i with i + head_dim/2; the q and k
projection rows are reordered so that both compute the same attention. A tied output head is
left out: llama.cpp then reuses ``token_embd``. The ``gguf`` package is needed only to write the
file (``pip install 'lmstack[gguf]'``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

QK = 32  # values per Q8_0 / Q4_0 block
FILE_TYPES = ("f32", "f16", "q8_0", "q4_0")


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C ``roundf``: halves away from zero (torch.round would round them to even)."""
    a = x.abs()
    f = torch.floor(a)
    return torch.sign(x) * (f + (a - f >= 0.5).to(x.dtype))


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach().to(torch.float32).contiguous()
    if w.shape[-1] % QK:
        raise ValueError(f"Q8_0/Q4_0 need rows that are a multiple of {QK}, got {w.shape[-1]}")
    return w.reshape(-1, QK)


def _half_bytes(d: torch.Tensor) -> np.ndarray:
    return d.to(torch.float16).numpy().view(np.uint8).reshape(-1, 2)


def quantize_q8_0(weight: torch.Tensor) -> np.ndarray:
    """``weight [rows, cols]`` -> uint8 [rows, cols / 32 * 34] in ggml's Q8_0 layout."""
    b = _blocks(weight)
    d = b.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = _roundf(b * inv).to(torch.int8).numpy().view(np.uint8)
    out = np.concatenate([_half_bytes(d), q], axis=1)
    return out.reshape(weight.shape[0], -1) if weight.dim() == 2 else out.reshape(-1)


def quantize_q4_0(weight: torch.Tensor) -> np.ndarray:
    """``weight [rows, cols]`` -> uint8 [rows, cols / 32 * 18] in ggml's Q4_0 layout."""
    b = _blocks(weight)
    idx = b.abs().argmax(dim=1, keepdim=True)  # first of equal magnitudes, like ggml's strict '>'
    d = b.gather(1, idx) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.trunc(b * inv + 8.5).clamp(0, 15).to(torch.uint8)
    packed = (q[:, : QK // 2] | (q[:, QK // 2:] << 4)).numpy()
    out = np.concatenate([_half_bytes(d), packed], axis=1)
    return out.reshape(weight.shape[0], -1) if weight.dim() == 2 else out.reshape(-1)


def dequantize_q8_0(data: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, 2 + QK)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return torch.from_numpy((q * d).reshape(shape))


def dequantize_q4_0(data: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, 2 + QK // 2)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    packed = blocks[:, 2:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32) - 8
    return torch.from_numpy((q * d).reshape(shape))


# ----------------------------------------------------------------------------- model -> tensors


def check_exportable(cfg) -> None:
    """llama.cpp's llama architecture: RoPE (plain), RMSNorm, SwiGLU, no biases, dense FFN, full attention."""
    problems = []
    if cfg.position_type != "rope":
        problems.append(f"position_type={cfg.position_type!r} (needs 'rope')")
    if cfg.rope_scaling != "none":
        problems.append(f"rope_scaling={cfg.rope_scaling!r} (only 'none' is exported)")
    if cfg.norm_type != "rmsnorm":
        problems.append(f"norm_type={cfg.norm_type!r} (needs 'rmsnorm')")
    if cfg.ffn_type != "swiglu":
        problems.append(f"ffn_type={cfg.ffn_type!r} (needs 'swiglu')")
    if cfg.bias:
        problems.append("bias=true")
    if cfg.n_experts:
        problems.append("MoE layers")
    if cfg.qk_norm or cfg.logit_softcap:
        problems.append("qk_norm / logit_softcap")
    if cfg.value_embed_layers or cfg.unet_skips:
        problems.append("value_embed_layers / unet_skips")
    if any(k != "full" for k in cfg.attention_pattern):
        problems.append(f"attention_pattern={cfg.attention_pattern}")
    if problems:
        raise NotImplementedError("GGUF export covers llama-style models only; this checkpoint has " + ", ".join(problems))


def rope_rows_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder a q/k projection's output rows from the "half" RoPE layout (dim i pairs with
    i + hd/2) to the "interleaved" one (dim 2i pairs with 2i + 1), head by head."""
    out, inp = weight.shape
    hd = out // n_heads
    return weight.reshape(n_heads, 2, hd // 2, inp).transpose(1, 2).reshape(out, inp)


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> dense fp32 tensor, in llama.cpp's llama naming."""
    cfg = model.config
    check_exportable(cfg)
    t = {"token_embd.weight": model.embed.weight}
    for i, blk in enumerate(model.layers):
        a, f = blk.attn, blk.ffn
        t[f"blk.{i}.attn_norm.weight"] = blk.attn_norm.weight
        t[f"blk.{i}.attn_q.weight"] = rope_rows_to_interleaved(a.q_proj.weight, cfg.n_heads)
        t[f"blk.{i}.attn_k.weight"] = rope_rows_to_interleaved(a.k_proj.weight, cfg.n_kv_heads)
        t[f"blk.{i}.attn_v.weight"] = a.v_proj.weight
        t[f"blk.{i}.attn_output.weight"] = a.o_proj.weight
        t[f"blk.{i}.ffn_norm.weight"] = blk.ffn_norm.weight
        t[f"blk.{i}.ffn_gate.weight"] = f.gate_proj.weight
        t[f"blk.{i}.ffn_up.weight"] = f.up_proj.weight
        t[f"blk.{i}.ffn_down.weight"] = f.down_proj.weight
    t["output_norm.weight"] = model.norm.weight
    if not cfg.tie_embeddings:
        t["output.weight"] = model.lm_head.weight
    return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


# ----------------------------------------------------------------------------- tokenizer


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what llama.cpp's "gpt2" vocab expects):
    printable Latin-1 bytes map to themselves, the rest to code points from 256 upwards."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tokenizer_fields(tokenizer) -> dict:
    """Token strings, types and merges of an lmstack byte-level BPE tokenizer in llama.cpp's "gpt2" form."""
    if tokenizer.mode != "byte":
        raise NotImplementedError(f"GGUF export needs a byte-level BPE tokenizer; this one is mode={tokenizer.mode!r} "
                                  "(llama.cpp's gpt2 vocabulary has no character-level fallback)")
    b2u = _byte_to_unicode()
    tokens, types = [], []
    for i in range(tokenizer.vocab_size):
        if i < tokenizer.n_regular:
            tokens.append("".join(b2u[b] for b in tokenizer.token_bytes(i)))
            types.append(1)  # NORMAL
        else:
            tokens.append(tokenizer.id_to_token(i))
            types.append(3)  # CONTROL
    merges = [f"{tokens[a]} {tokens[b]}" for a, b, _ in tokenizer.merges]
    return {"tokens": tokens, "types": types, "merges": merges}


def llama_cpp_pre_tokenizer(tokenizer) -> tuple[str, str]:
    """The llama.cpp pre-tokenizer (``tokenizer.ggml.pre``) closest to the tokenizer's split pattern,
    and "" when it is exact or a sentence saying where the two differ.

    llama.cpp only knows a fixed list of split rules. lmstack's ``gpt2`` pattern is llama.cpp's
    "gpt-2"; its ``gpt4`` pattern with 3-digit groups is "llama-bpe" (Llama 3 uses the cl100k rule).
    The default ``lmstack`` pattern has no exact counterpart: "llama-bpe" differs in that a Han run
    may take a leading punctuation mark and join adjacent Latin letters, and numbers split into
    groups of 3 instead of ``max_digits``. ``lmstack_hanchar`` differs in the same ways (its vocabulary has no
    token across two Han characters, so a whole Han run still encodes one character at a time).
    """
    meta = getattr(tokenizer, "metadata", {}) or {}
    name, digits = meta.get("pattern_name"), meta.get("max_digits")
    if name == "gpt2":
        return "gpt-2", ""
    if name == "gpt4" and digits == 3:
        return "llama-bpe", ""
    if name in ("gpt4", "lmstack", "lmstack_hanchar"):
        return "llama-bpe", (f"lmstack pattern {name!r} (digit groups of {digits}) has no exact llama.cpp pre-tokenizer; "
                             "'llama-bpe' splits numbers in groups of 3" + (" and does not cut Han runs from "
                             "neighbouring letters/punctuation" if name != "gpt4" else "") +
                             ", so llama.cpp may tokenize such text differently")
    return "llama-bpe", "unknown split pattern: llama.cpp's 'llama-bpe' rule is a guess"


# ----------------------------------------------------------------------------- writing


def export_gguf(model, tokenizer, path: str | os.PathLike, file_type: str = "f32", *, name: str = "lmstack",
                pre_tokenizer: str = "auto", warn=None) -> Path:
    """Write ``model`` (a llama-style lmstack Transformer) and its tokenizer as a GGUF file.

    ``pre_tokenizer`` names one of llama.cpp's built-in pre-tokenizers (tokenizer.ggml.pre); "auto"
    picks the closest to the tokenizer's pattern (:func:`llama_cpp_pre_tokenizer`) and passes the
    caveat, if any, to ``warn``.
    """
    try:
        import gguf
    except ImportError:
        raise ImportError("GGUF export needs the 'gguf' package: pip install 'lmstack[gguf]' (or pip install gguf)") from None
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type={file_type!r}: choose one of {', '.join(FILE_TYPES)}")
    cfg = model.config
    tensors = gguf_tensors(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path) + ".tmp", arch="llama")
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[file_type]
    writer.add_name(name)
    writer.add_file_type(int(ftype))
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_hidden)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    tok = tokenizer_fields(tokenizer)
    if len(tok["tokens"]) != cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tok['tokens'])} tokens but the model's vocab_size is {cfg.vocab_size}")
    duplicates = len(tok["tokens"]) - len(set(tok["tokens"]))
    if duplicates and warn is not None:
        warn(f"{duplicates} tokens share their bytes with another token (BPE reached them by different merges); "
             "llama.cpp keeps one id per string, so its tokenization can differ on those")
    if pre_tokenizer == "auto":
        pre_tokenizer, caveat = llama_cpp_pre_tokenizer(tokenizer)
        if caveat and warn is not None:
            warn(caveat)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    for tname, w in tensors.items():
        if w.dim() == 1 or file_type == "f32" or (file_type != "f16" and w.shape[-1] % QK):
            writer.add_tensor(tname, w.numpy())
        elif file_type == "f16":
            writer.add_tensor(tname, w.to(torch.float16).numpy())
        elif file_type == "q8_0":
            writer.add_tensor(tname, quantize_q8_0(w), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tname, quantize_q4_0(w), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(str(path) + ".tmp", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``lmstack export gguf CHECKPOINT --tokenizer T --out F.gguf --type q8_0``."""
    import argparse

    p = argparse.ArgumentParser(prog="lmstack export gguf", description="write a llama-style checkpoint as GGUF for llama.cpp")
    p.add_argument("checkpoint", help="checkpoint directory (plain or written by lmstack compress), or a run directory")
    p.add_argument("--tokenizer", help="tokenizer.json (default: <run>/tokenizer/tokenizer.json next to the checkpoint)")
    p.add_argument("--out", required=True, help="output .gguf path")
    p.add_argument("--type", default="f32", choices=FILE_TYPES, help="weight type of the matrices (default f32)")
    p.add_argument("--pre", default="auto", help="llama.cpp pre-tokenizer written to tokenizer.ggml.pre "
                                                 "(default: the closest to the tokenizer's split pattern)")
    args = p.parse_args(argv)
    from lmstack.compress import dequantize_model, load_compressed
    from lmstack.tokenizer import Tokenizer

    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").exists() and (ckpt / "checkpoints").is_dir():
        from lmstack.compress.stage import resolve_checkpoint
        ckpt = resolve_checkpoint(ckpt, "")
    tok_path = Path(args.tokenizer) if args.tokenizer else _find_tokenizer(ckpt)
    model = dequantize_model(load_compressed(ckpt)).eval()
    import sys
    out = export_gguf(model, Tokenizer.load(tok_path), args.out, args.type, name=ckpt.name, pre_tokenizer=args.pre,
                      warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {args.type})")
    return 0


def _find_tokenizer(ckpt: Path) -> Path:
    for parent in [ckpt, *ckpt.parents]:
        cand = parent / "tokenizer" / "tokenizer.json"
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no tokenizer/tokenizer.json found above {ckpt}; pass --tokenizer")


__all__ = ["export_gguf", "quantize_q8_0", "quantize_q4_0", "dequantize_q8_0", "dequantize_q4_0", "gguf_tensors",
           "tokenizer_fields", "rope_rows_to_interleaved", "check_exportable", "llama_cpp_pre_tokenizer", "FILE_TYPES"]
