"""lmstack.serve: an OpenAI-compatible server over a continuous-batching scheduler and a paged KV cache.

    lmstack serve runs/tiny                    # http://127.0.0.1:8000/ (web chat), /v1 (OpenAI API)

    from lmstack.serve import Scheduler, SchedulerConfig
    sched = Scheduler(model, tokenizer, SchedulerConfig(block_size=16, max_batched_tokens=512))
    seq_id = sched.add(prompt_ids, GenerationConfig(max_new_tokens=64))
    events = sched.run_to_completion()[seq_id]   # TokenEvents: token_id, text, logprob, finish_reason

Pieces: ``kv_pool`` (blocks, block tables, prefix caching), ``paged_model`` (the model step over a ragged
batch), ``scheduler`` (continuous batching, chunked prefill, preemption), ``async_engine`` (the scheduler
on its own thread), ``protocol`` (OpenAI request parsing, tools, errors), ``guardrails`` (PII, review),
``app`` (FastAPI), ``cli``.
"""

from .kv_pool import BlockPool, PoolExhausted, block_keys
from .paged_model import paged_forward
from .scheduler import RequestRejected, Scheduler, SchedulerConfig, TokenEvent

__all__ = ["BlockPool", "PoolExhausted", "block_keys", "paged_forward", "RequestRejected", "Scheduler",
           "SchedulerConfig", "TokenEvent"]
