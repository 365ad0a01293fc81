"""GGUF export: Q8_0/Q4_0 blocks byte-identical to the gguf package's quantizer; the written file
read back by gguf's reader computes the same logits as lmstack under llama.cpp's RoPE convention."""

import math

import numpy as np
import pytest
import torch

from lmstack.export.gguf import (dequantize_q4_0, dequantize_q8_0, export_gguf, quantize_q4_0, quantize_q8_0,
                                 rope_rows_to_interleaved, tokenizer_fields)
from lmstack.model import ModelConfig, Transformer

gguf = pytest.importorskip("gguf", reason="the gguf package is the oracle here: pip install gguf")


def _tricky_matrix(seed=0, rows=6, cols=96):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[0, :32] = 0.0  # an all-zero block
    w[1, :32] = torch.linspace(-1, 1, 32)  # exact halves after scaling
    w[2, 5], w[2, 9] = 3.0, -3.0  # equal magnitudes, opposite signs: the first one wins
    w[3] *= 1e-3
    w[4, 32:64] = torch.round(w[4, 32:64] * 8) / 8  # values on the grid (ties for roundf)
    return w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q8_0_bytes_identical_to_gguf(seed):
    w = _tricky_matrix(seed)
    ours = quantize_q8_0(w)
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    assert torch.allclose(dequantize_q8_0(ours, tuple(w.shape)),
                          torch.from_numpy(gguf.quants.dequantize(theirs, gguf.GGMLQuantizationType.Q8_0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q4_0_bytes_identical_to_gguf(seed):
    w = _tricky_matrix(seed)
    ours = quantize_q4_0(w)
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(ours, theirs)
    assert torch.allclose(dequantize_q4_0(ours, tuple(w.shape)),
                          torch.from_numpy(gguf.quants.dequantize(theirs, gguf.GGMLQuantizationType.Q4_0)))


def test_real_weights_bytes_identical():
    model = _model()
    for w in (model.layers[0].ffn.down_proj.weight.detach(), model.embed.weight.detach()):
        for kind, fn in ((gguf.GGMLQuantizationType.Q8_0, quantize_q8_0), (gguf.GGMLQuantizationType.Q4_0, quantize_q4_0)):
            assert np.array_equal(fn(w), gguf.quants.quantize(w.numpy(), kind))


def test_rope_row_permutation_pairs_half_layout():
    hd, heads = 8, 2
    w = torch.arange(heads * hd, dtype=torch.float32)[:, None].repeat(1, 3)
    p = rope_rows_to_interleaved(w, heads)[:, 0].long().tolist()
    # head 0: dims (0, 4), (1, 5), ... become adjacent pairs; head 1 likewise
    assert p == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


# ----------------------------------------------------------------------------- whole file


class _ByteTokenizer:
    """A minimal byte-level BPE tokenizer with the attributes the exporter reads."""

    mode = "byte"

    def __init__(self, vocab_size):
        self.merges = [(104, 101, 256), (256, 108, 257)]  # "he", "hel"
        self._vocab = [bytes([i]) for i in range(256)] + [b"he", b"hel"]
        self._vocab += [b"x" * (i + 2) for i in range(vocab_size - 3 - len(self._vocab))]
        self.n_regular = len(self._vocab)
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id, self.pad_id = self.n_regular, self.n_regular + 1, self.n_regular + 2

    def token_bytes(self, i):
        return self._vocab[i]

    def id_to_token(self, i):
        return ["<|bos|>", "<|eos|>", "<|pad|>"][i - self.n_regular]


def _model(seed=0, tied=True):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("llama-style", vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             max_seq_len=64, tie_embeddings=tied)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for blk in model.layers:  # non-trivial norm gains, so a misplaced norm would show
            blk.attn_norm.weight.uniform_(0.5, 1.5)
            blk.ffn_norm.weight.uniform_(0.5, 1.5)
    return model


def _field(reader, key):
    f = reader.fields[key]
    if hasattr(f, "contents"):
        return f.contents()
    return f.parts[f.data[0]].tolist()


def _read_tensors(reader) -> dict[str, torch.Tensor]:
    out = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            arr = np.asarray(t.data, dtype=np.float32).reshape(shape)
        else:
            arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        out[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32))
    return out


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_interleaved(x, theta):
    """llama.cpp's "normal" RoPE: dims (2i, 2i+1) rotate together by pos * theta^(-2i/d). x [T, H, d]."""
    t, _, d = x.shape
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * freqs[None]  # [T, d/2]
    cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def reference_llama_forward(tensors, meta, ids):
    """A from-scratch llama forward over GGUF tensors (llama.cpp's layout), for one sequence."""
    n_head, n_kv, eps, theta = meta["heads"], meta["kv_heads"], meta["eps"], meta["theta"]
    x = tensors["token_embd.weight"][ids]
    t = len(ids)
    for i in range(meta["layers"]):
        p = lambda n: tensors[f"blk.{i}.{n}.weight"]  # noqa: E731
        h = _rms(x, p("attn_norm"), eps)
        q = (h @ p("attn_q").t()).view(t, n_head, -1)
        k = (h @ p("attn_k").t()).view(t, n_kv, -1)
        v = (h @ p("attn_v").t()).view(t, n_kv, -1)
        q, k = _rope_interleaved(q, theta), _rope_interleaved(k, theta)
        rep = n_head // n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        att = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(t, -1)
        x = x + att @ p("attn_output").t()
        h = _rms(x, p("ffn_norm"), eps)
        x = x + (torch.nn.functional.silu(h @ p("ffn_gate").t()) * (h @ p("ffn_up").t())) @ p("ffn_down").t()
    x = _rms(x, tensors["output_norm.weight"], eps)
    head = tensors.get("output.weight", tensors["token_embd.weight"])
    return x @ head.t()


@pytest.mark.parametrize("file_type,tol", [("f32", 1e-4), ("f16", 2e-2), ("q8_0", 5e-2), ("q4_0", None)])
@pytest.mark.parametrize("tied", [True, False])
def test_export_reads_back_and_matches_logits(tmp_path, file_type, tol, tied):
    model = _model(tied=tied)
    tok = _ByteTokenizer(300)
    path = export_gguf(model, tok, tmp_path / f"m-{file_type}.gguf", file_type)
    reader = gguf.GGUFReader(str(path))
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == model.config.n_layers
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not tied)
    assert len(names) == 1 + 9 * 2 + 1 + (0 if tied else 1)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    want = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[file_type]
    assert kinds["blk.0.ffn_down.weight"] == want
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    tensors = _read_tensors(reader)
    cfg = model.config
    meta = {"heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads, "eps": cfg.norm_eps, "theta": cfg.rope_theta,
            "layers": cfg.n_layers}
    ids = torch.tensor([tok.bos_id, 5, 104, 101, 108, 33, 7, 200, 256, 257])
    ref = reference_llama_forward(tensors, meta, ids)
    with torch.no_grad():
        ours = model(ids[None]).logits[0]
    if tol is not None:
        assert (ref - ours).abs().max() < tol
    else:  # 4-bit: close in distribution, not elementwise
        kl = (ours.log_softmax(-1).exp() * (ours.log_softmax(-1) - ref.log_softmax(-1))).sum(-1).mean()
        assert kl < 0.05


def test_export_writes_llama_metadata_and_vocab(tmp_path):
    model = _model()
    tok = _ByteTokenizer(300)
    reader = gguf.GGUFReader(str(export_gguf(model, tok, tmp_path / "m.gguf", "q8_0")))
    keys = set(reader.fields)
    for k in ("general.architecture", "llama.block_count", "llama.embedding_length", "llama.attention.head_count_kv",
              "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
              "tokenizer.ggml.bos_token_id"):
        assert k in keys, k
    fields = tokenizer_fields(tok)
    assert fields["tokens"][104] == "h" and fields["tokens"][32] == "Ġ"  # GPT-2 byte map: space is "Ġ"
    assert fields["merges"] == ["h e", "he l"]
    assert fields["types"][tok.bos_id] == 3 and fields["types"][0] == 1


def test_unsupported_models_are_refused(tmp_path):
    cfg = ModelConfig.preset("gpt2-style", vocab_size=300, d_model=64, n_layers=1, n_heads=4, max_seq_len=32)
    with pytest.raises(NotImplementedError, match="llama-style"):
        export_gguf(Transformer(cfg), _ByteTokenizer(300), tmp_path / "x.gguf")


def test_pre_tokenizer_choice():
    from lmstack.export.gguf import llama_cpp_pre_tokenizer

    class T:
        def __init__(self, name, digits):
            self.metadata = {"pattern_name": name, "max_digits": digits}

    assert llama_cpp_pre_tokenizer(T("gpt2", 2)) == ("gpt-2", "")
    assert llama_cpp_pre_tokenizer(T("gpt4", 3)) == ("llama-bpe", "")
    for pattern in ("lmstack", "lmstack_hanchar"):
        name, caveat = llama_cpp_pre_tokenizer(T(pattern, 2))
        assert name == "llama-bpe" and "Han" in caveat and "groups of 3" in caveat and pattern in caveat
