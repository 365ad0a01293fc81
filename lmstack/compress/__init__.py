"""lmstack.compress: quantization (RTN, GPTQ, AWQ, SmoothQuant W8A8, NF4), pruning (magnitude, Wanda,
SparseGPT, N:M) and their checkpoints.

    from lmstack.compress import CompressConfig, compress_model, save_compressed, load_compressed
    details = compress_model(model, CompressConfig(quantize="gptq", bits=4, group_size=32), calib=ids)
    save_compressed(model, "out/")            # packed codes + fp16 scales, safetensors + JSON
    model = load_compressed("out/")
"""

from .api import (PRUNE_METHODS, QUANT_METHODS, CompressConfig, compress, compress_model, dequantize_model, linear_bits_per_weight,
                  load_compressed, quantized_modules, save_compressed, target_linears)
from .awq import awq_search, smoothquant_linear
from .calibrate import calibration_batch
from .gptq import HessianAccumulator, gptq_quantize, sparsegpt_prune
from .prune import magnitude_score, make_mask, n_m_mask, parse_n_m, unstructured_mask, wanda_score
from .quant import QuantLinear, QuantSpec, pack_codes, rtn_quantize, unpack_codes
from .structured import structured_prune

__all__ = [
    "CompressConfig", "compress", "compress_model", "save_compressed", "load_compressed", "dequantize_model",
    "linear_bits_per_weight", "quantized_modules", "target_linears", "QUANT_METHODS", "PRUNE_METHODS",
    "awq_search", "smoothquant_linear", "calibration_batch", "HessianAccumulator", "gptq_quantize",
    "sparsegpt_prune", "magnitude_score", "make_mask", "n_m_mask", "parse_n_m", "unstructured_mask", "wanda_score",
    "QuantLinear", "QuantSpec", "pack_codes", "rtn_quantize", "unpack_codes", "structured_prune",
]
