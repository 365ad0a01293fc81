"""lmstack.generate: logits processors, search strategies and the batched KV-cache engine.

One API for the chat CLI, the evals, the alignment rollouts and the server::

    from lmstack.generate import GenerationConfig as G, generate, chat, stream
    generate(model, tok, ["Once upon a time"], G())                                  # greedy
    generate(model, tok, prompts, G(strategy="sample", temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, seed=0))
    generate(model, tok, prompts, G(repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.3,
                                     no_repeat_ngram_size=3, bad_words=["Voldemort"], stop=["\n\n"]))
    generate(model, tok, prompts, G(strategy="beam", num_beams=4, length_penalty=1.0, early_stopping=True,
                                     num_return_sequences=2))                          # .extra["beams"] = n-best
    generate(model, tok, prompts, G(strategy="contrastive_search", penalty_alpha=0.6, contrastive_k=4))
    generate(model, tok, prompts, G(strategy="contrastive_decoding", cd_alpha=0.1), amateur_model=small)
    generate(model, tok, prompts, G(strategy="best_of_n", n=8, seed=0), scorer=lambda prompt, text: rm(prompt, text))
    generate(model, tok, prompts, G(strategy="self_consistency", n=8, seed=0))          # .extra["votes"]
    generate(model, tok, prompts, G(strategy="speculative", num_draft_tokens=4, temperature=0), draft_model=small)
    chat(model, tok, [[{"role": "user", "content": "Who is Mila Dubois?"}]], G(max_new_tokens=64))
    for chunk in stream(model, tok, "ROMEO:", G(strategy="sample", seed=1)):
        print(chunk.text, end="", flush=True)

Each returns ``Generation(text, token_ids, finish_reason, logprobs, score, prompt_tokens, extra)``.
``cfg`` may also be a list with one GenerationConfig per prompt (per-request parameters).
Processor order and defaults: see ``lmstack.generate.processors``.

Modules, each importing only those above it: ``config`` (GenerationConfig), ``processors``,
``text`` (incremental detokenizing, stop strings), ``fast`` (lean decode step) -> ``sequence``
(result types, one output in progress, token budget, model helpers) -> ``batched`` (the batched
greedy/sampling loop) -> ``search``, ``speculative``, ``rerank`` (strategies) -> ``engine`` (the
public API and the dispatch) -> ``cli``.
"""

from .config import STRATEGIES, GenerationConfig
from .engine import Engine, chat, generate, stream
from .processors import (BadWords, MinNewTokens, MinP, NoRepeatNGram, PresenceFrequencyPenalty, ProcessorList,
                         RepetitionPenalty, Temperature, TopK, TopP, build_processors)
from .rerank import best_of_n, extract_answer, self_consistency
from .search import beam_search, contrastive_decoding, contrastive_search
from .sequence import Generation, StreamChunk, chat_prompt_ids
from .speculative import accept_drafts, speculative_generate

__all__ = [
    "STRATEGIES", "GenerationConfig", "Engine", "Generation", "StreamChunk", "generate", "chat", "stream",
    "chat_prompt_ids", "build_processors", "ProcessorList", "RepetitionPenalty", "PresenceFrequencyPenalty",
    "NoRepeatNGram", "BadWords", "MinNewTokens", "Temperature", "TopK", "TopP", "MinP", "beam_search",
    "contrastive_search", "contrastive_decoding", "speculative_generate", "accept_drafts", "best_of_n",
    "self_consistency", "extract_answer",
]
