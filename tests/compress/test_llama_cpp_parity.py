"""llama.cpp itself as the oracle for ``lmstack export gguf``: llama-cpp-python (the `llamacpp` extra, built from
source by `make test` on a best-effort basis) loads our GGUF files, tokenizes like lmstack, and computes the same
next-token logits (F32 within 1e-3; Q8_0 and Q4_0 close to lmstack run on the same dequantized weights)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmstack import DATA_DIR
from lmstack.export.gguf import dequantize_q4_0, dequantize_q8_0, export_gguf, quantize_q4_0, quantize_q8_0
from lmstack.model import ModelConfig, Transformer

pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install gguf")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (it builds llama.cpp from source, 10+ min): "
                        "pip install -c constraints.txt -e '.[llamacpp]' to run the llama.cpp parity tests")

TEXTS = ("ROMEO: But, soft! what light through yonder window breaks? 1234567 apples.",
         "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
         "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A tokenizer with lmstack's gpt4 split rule and 3-digit groups (exactly llama.cpp's "llama-bpe"), and a
    random llama-style model whose logits are far from flat (scaled-up embeddings), so differences show."""
    from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer

    en = (DATA_DIR / "en" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:40000]
    zh = [json.loads(line)["text"]
          for line in (DATA_DIR / "zh" / "poetry.jsonl").read_text(encoding="utf-8").splitlines()[:100]]
    code = Path(json.__file__).read_text(encoding="utf-8")
    tok = train_tokenizer([en, *zh, code], 1024, pattern="gpt4", max_digits=3, special_tokens=list(SPECIAL_TOKENS),
                          progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("llama-style", vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4,
                             n_kv_heads=2, max_seq_len=128)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.embed.weight.mul_(10.0)
        for blk in model.layers:
            blk.attn_norm.weight.uniform_(0.5, 1.5)
            blk.ffn_norm.weight.uniform_(0.5, 1.5)
    return model, tok


def _llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)


def _llama_logits(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)


def _ids(tok) -> list[int]:
    return [tok.bos_id] + tok.encode("ROMEO: But, soft! 床前明月光 def f(x): return 42")


def test_f32_tokenizes_identically_and_logits_within_1e_3(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    llm = _llama(export_gguf(model, tok, tmp_path / "m-f32.gguf", "f32"))
    assert llm.n_vocab() == tok.vocab_size
    for text in TEXTS:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tok.encode(text), text
        assert llm.detokenize(tok.encode(text)).decode("utf-8") == text
    ids = _ids(tok)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    theirs = _llama_logits(llm, ids)
    assert ours.std() > 0.5  # the comparison is not between two nearly flat distributions
    assert (theirs - ours).abs().max() < 1e-3


def _dequantized_copy(model, file_type: str):
    """lmstack with every weight llama.cpp would quantize replaced by its Q8_0 / Q4_0 round trip."""
    import copy

    quant, dequant = {"q8_0": (quantize_q8_0, dequantize_q8_0), "q4_0": (quantize_q4_0, dequantize_q4_0)}[file_type]
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if p.dim() == 2 and p.shape[-1] % 32 == 0:
                p.copy_(dequant(quant(p.detach()), tuple(p.shape)))
    return clone


# Measured with llama-cpp-python 0.3.36: max |diff| / std = 0.027 (Q8_0) and 0.026 (Q4_0), mean 0.004; the Q4_0
# rounding itself moves the logits by 0.50 x std, Q8_0's by 0.037.
@pytest.mark.parametrize("file_type,tol", [("q8_0", 0.05), ("q4_0", 0.05)])
def test_quantized_files_load_and_match_dequantized_lmstack(model_and_tokenizer, tmp_path, file_type, tol):
    """llama.cpp also quantizes the activations (to Q8 blocks) inside its matmuls, so the match is close, not exact:
    the tolerance is relative to the logits' spread, and the quantization's own effect must be larger."""
    model, tok = model_and_tokenizer
    llm = _llama(export_gguf(model, tok, tmp_path / f"m-{file_type}.gguf", file_type))
    ids = _ids(tok)
    theirs = _llama_logits(llm, ids)
    with torch.no_grad():
        fp32 = model(torch.tensor([ids])).logits[0]
        same_weights = _dequantized_copy(model, file_type)(torch.tensor([ids])).logits[0]
    spread = fp32.std()
    err = (theirs - same_weights).abs().max() / spread
    assert err < tol, f"{file_type}: max |llama.cpp - lmstack(dequantized)| = {err:.4f} x logit std"
    assert (theirs - same_weights).abs().mean() / spread < 0.01
    assert torch.equal(theirs.argmax(-1), same_weights.argmax(-1))
    if file_type == "q4_0":  # 4 bits move the logits visibly; llama.cpp must follow the dequantized model
        assert (theirs - fp32).abs().max() / spread > 5 * err
