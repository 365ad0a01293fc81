"""lmstack.generate: logits processors, search strategies and the batched KV-cache engine.

    from lmstack.generate import GenerationConfig, generate, chat, stream
    outs = generate(model, tokenizer, ["Once upon a time"], GenerationConfig(strategy="sample", top_p=0.9, seed=0))
    print(outs[0].text, outs[0].finish_reason)
"""

from .config import STRATEGIES, GenerationConfig
from .engine import Engine, Generation, StreamChunk, chat, chat_prompt_ids, generate, stream
from .processors import (BadWords, MinNewTokens, MinP, NoRepeatNGram, PresenceFrequencyPenalty, ProcessorList,
                         RepetitionPenalty, Temperature, TopK, TopP, build_processors)
from .rerank import best_of_n, extract_answer, self_consistency
from .search import beam_search, contrastive_decoding, contrastive_search
from .speculative import accept_drafts, speculative_generate

__all__ = [
    "STRATEGIES", "GenerationConfig", "Engine", "Generation", "StreamChunk", "generate", "chat", "stream",
    "chat_prompt_ids", "build_processors", "ProcessorList", "RepetitionPenalty", "PresenceFrequencyPenalty",
    "NoRepeatNGram", "BadWords", "MinNewTokens", "Temperature", "TopK", "TopP", "MinP", "beam_search",
    "contrastive_search", "contrastive_decoding", "speculative_generate", "accept_drafts", "best_of_n",
    "self_consistency", "extract_answer",
]
