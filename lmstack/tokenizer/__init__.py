"""BPE tokenizers: byte-level and character-level (with byte fallback) BPE, regex
pre-tokenization, special tokens, the chat template, and HF / tiktoken interop."""

from lmstack.tokenizer.core import (ASSISTANT, BOS, END, EOS, PAD, ROLE_TOKENS, SPECIAL_TOKENS, SYSTEM, USER,
                                    StreamDecoder, Tokenizer)
from lmstack.tokenizer.pretokenize import DEFAULT_MAX_DIGITS, DEFAULT_PATTERN_NAME, PATTERN_NAMES, build_pattern
from lmstack.tokenizer.train import count_chunks, learn_merges, train_bpe, train_tokenizer

__all__ = [
    "Tokenizer", "StreamDecoder", "SPECIAL_TOKENS", "ROLE_TOKENS", "BOS", "EOS", "PAD", "SYSTEM", "USER", "ASSISTANT",
    "END", "build_pattern", "PATTERN_NAMES", "DEFAULT_PATTERN_NAME", "DEFAULT_MAX_DIGITS", "count_chunks",
    "learn_merges", "train_bpe", "train_tokenizer",
]

from lmstack.tokenizer.interop import add_bos_post_processor, export_hf, export_tiktoken, load_tiktoken, to_hf_dict  # noqa: E402

__all__ += ["add_bos_post_processor", "export_hf", "export_tiktoken", "load_tiktoken", "to_hf_dict"]
