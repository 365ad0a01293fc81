"""lmstack.model: one configurable decoder-only Transformer (GPT-2 style, Llama style, MoE, ...).

    from lmstack.model import ModelConfig, Transformer
    cfg = ModelConfig.preset("llama-style", vocab_size=8192)
    model = Transformer(cfg)
    out = model(input_ids, targets=next_ids)          # out.logits, out.loss, out.aux_loss
    cache = model.new_kv_cache(batch_size, max_len)    # incremental decoding

Presets (vocab 4096, tied embeddings): gpt2-style 7,432,704 parameters (d=256, 8 layers, MHA, learned
positions, GELU, LayerNorm, biases); llama-style 6,951,168 (d=256, 8 layers, GQA 8/4, RoPE, SwiGLU,
RMSNorm); moe 8,923,392 (d=256, 4 layers, 8 experts top-2 + shared expert). ``cfg.num_params()``
gives the count for any override. ``targets`` are the next tokens (not shifted inside); add
``out.aux_loss`` to the loss when training MoE models.
"""

from .config import PRESETS, ModelConfig, count_params
from .factory import build_model
from .families import RecurrentState
from .flops import flops_per_token, matmul_params
from .io import load_config, load_pretrained, save_pretrained
from .kv_cache import KVCache
from .positions import PositionalEncoding, RotaryEmbedding, alibi_slopes, rope_inverse_frequencies
from .transformer import MLP, Attention, Block, ModelOutput, MoE, RMSNorm, Transformer, document_ids

__all__ = [
    "PRESETS", "ModelConfig", "count_params", "Transformer", "ModelOutput", "KVCache",
    "save_pretrained", "load_pretrained", "load_config", "PositionalEncoding", "RotaryEmbedding",
    "alibi_slopes", "rope_inverse_frequencies", "RMSNorm", "MLP", "MoE", "Attention", "Block",
    "flops_per_token", "matmul_params", "build_model", "RecurrentState", "document_ids",
]
