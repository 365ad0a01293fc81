"""Continuous (iteration-level) batching over the paged KV cache.

The scheduler decides, before every model step, which sequences run and how many of their tokens
(Orca, Yu et al. 2022; vLLM, Kwon et al. 2023):

- sequences join and leave the running batch at every step; a finished one frees its blocks at once;
- running sequences go first (one token each when decoding), then waiting ones are admitted in
  arrival order while the token budget (``max_batched_tokens``), ``max_num_seqs`` and the pool allow;
- a prompt longer than what is left of the budget is prefilled in chunks over several steps, so a long
  prompt never stalls the decodes running beside it;
- when the pool cannot hold the next token of a running sequence, the most recently admitted one is
  preempted by *recompute*: its blocks are released and it goes back to the front of the queue with its
  prompt and the tokens generated so far, to be prefilled again later. Nothing is dropped, and a
  request is accepted only if it fits in the pool on its own, so the oldest request always progresses.

Token choice reuses lmstack.generate's pieces (logits processors, stop tokens, incremental text with
stop strings), so a request's greedy output is the one ``lmstack.generate.generate`` gives.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch

from lmstack.generate import GenerationConfig, build_processors
from lmstack.generate.sequence import bad_words_to_ids, finish_reason_after, model_max_len, stop_token_ids_for
from lmstack.generate.processors import sample_from_scores
from lmstack.generate.text import TextTracker

from .kv_pool import BlockPool, block_keys
from .paged_model import SeqSlice, check_paged_support, paged_forward


class RequestRejected(ValueError):
    """A request that can never run (too long for the model or the pool); the API answers 400."""


@dataclass
class SchedulerConfig:
    block_size: int = 16
    num_blocks: int = 0  # 0 = derive from kv_memory_bytes
    kv_memory_bytes: int = 256 * 2**20
    max_batched_tokens: int = 512  # tokens (prefill chunks + decodes) per model step
    max_num_seqs: int = 64  # sequences in the running batch
    prefix_caching: bool = True

    def validate(self) -> None:
        for name in ("block_size", "max_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TokenEvent:
    """What one step produced for one sequence."""
    seq_id: int
    token_id: Optional[int]
    text: str
    logprob: Optional[float] = None
    top_logprobs: Optional[list[tuple[int, float]]] = None
    finish_reason: Optional[str] = None


class Sequence:
    """One output being generated: its tokens, its block table and its decoding state."""

    def __init__(self, seq_id: int, prompt_ids: list[int], cfg: GenerationConfig, tokenizer, budget: int,
                 top_logprobs: int = 0, logit_bias: Optional[dict[int, float]] = None):
        self.seq_id = seq_id
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.cfg = cfg
        self.budget = budget
        self.top_logprobs = top_logprobs
        self.logit_bias = None
        if logit_bias:
            self.logit_bias = (torch.tensor(list(logit_bias), dtype=torch.long),
                               torch.tensor(list(logit_bias.values()), dtype=torch.float32))
        self.stop_ids = set(stop_token_ids_for(tokenizer, cfg))
        bad = bad_words_to_ids(tokenizer, cfg.bad_words) if cfg.bad_words else []
        self.processors = build_processors(cfg, stop_token_ids=sorted(self.stop_ids), bad_words_ids=bad,
                                           warpers=cfg.do_sample)
        self.generator = None
        if cfg.do_sample and cfg.seed is not None:
            self.generator = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
        self.tracker = TextTracker(tokenizer, cfg.stop)
        self.block_table: list[int] = []
        self.keys: list[int] = []  # prefix-cache keys of the full blocks registered so far
        self.prefill_keys: list[int] = []  # keys of the full blocks its current prefill will fill
        self.num_computed = 0  # leading tokens whose keys/values are in the pool
        self.finish_reason: Optional[str] = None
        self.arrival = time.perf_counter()
        self.first_token_at: Optional[float] = None
        self.cached_tokens = 0  # prompt tokens served from the prefix cache (last admission)
        self.preemptions = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def reset_cache_state(self) -> None:
        """Forget everything about the sequence's place in the pool (after its blocks were released)."""
        self.keys.clear()
        self.prefill_keys = []
        self.num_computed = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Scheduler:
    """Owns the pool and the queues; ``step()`` runs one model pass and returns the tokens it produced."""

    def __init__(self, model, tokenizer, cfg: Optional[SchedulerConfig] = None):
        check_paged_support(model)
        self.cfg = cfg or SchedulerConfig()
        self.cfg.validate()
        self.model = model.eval()
        self.tokenizer = tokenizer
        mc = model.config
        param = next(model.parameters())
        self.device = param.device
        per_block = BlockPool.bytes_per_block(mc.n_layers, self.cfg.block_size, mc.n_kv_heads, mc.head_dim, param.dtype)
        n_blocks = self.cfg.num_blocks or max(1, self.cfg.kv_memory_bytes // per_block)
        self.bytes_per_block = per_block
        self.pool = BlockPool(mc.n_layers, n_blocks, self.cfg.block_size, mc.n_kv_heads, mc.head_dim,
                              device=self.device, dtype=param.dtype, prefix_caching=self.cfg.prefix_caching)
        self.max_len = model_max_len(model)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.seqs: dict[int, Sequence] = {}
        self._ids = itertools.count()
        self.steps = 0
        self.preemptions = 0
        self.tokens_generated = 0
        self.prompt_tokens_computed = 0
        self.last_step_tokens = 0
        self.max_running_seen = 0

    # ------------------------------------------------------------ requests
    def admission_check(self, prompt_len: int, cfg: GenerationConfig) -> int:
        """The token budget of a sequence; raises RequestRejected if it could never run. Reads only
        fixed settings, so the API may call it from another thread before queueing a request."""
        if cfg.strategy not in ("greedy", "sample"):
            raise RequestRejected(f"the server decodes with strategy 'greedy' or 'sample', not {cfg.strategy!r}")
        if prompt_len == 0:
            raise RequestRejected("the prompt is empty")
        budget = cfg.max_new_tokens
        if self.max_len is not None:
            if prompt_len >= self.max_len:
                raise RequestRejected(f"the prompt has {prompt_len} tokens but the model's context is "
                                      f"{self.max_len}; shorten the prompt")
            budget = min(budget, self.max_len - prompt_len)
        need = self.pool.blocks_for(prompt_len + budget)
        if need > self.pool.n_blocks:
            raise RequestRejected(f"prompt ({prompt_len} tokens) + max_tokens ({budget}) needs {need} KV blocks "
                                  f"but the pool has {self.pool.n_blocks}; lower max_tokens or start the server "
                                  "with more KV memory")
        return budget

    def add(self, prompt_ids: list[int], cfg: GenerationConfig, top_logprobs: int = 0,
            logit_bias: Optional[dict[int, float]] = None) -> int:
        """Queue one sequence; returns its id. Raises RequestRejected if it can never run."""
        budget = self.admission_check(len(prompt_ids), cfg)
        seq = Sequence(next(self._ids), prompt_ids, cfg, self.tokenizer, budget, top_logprobs, logit_bias)
        if budget <= 0:
            seq.finish_reason = "length"
        self.seqs[seq.seq_id] = seq
        self.waiting.append(seq)
        return seq.seq_id

    def abort(self, seq_id: int) -> None:
        """Forget a sequence (a client went away); its blocks go back to the pool."""
        seq = self.seqs.pop(seq_id, None)
        if seq is None:
            return
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.free_table(seq.block_table)
        if seq.finish_reason is None:
            seq.finish_reason = "abort"

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------ scheduling
    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free_table(seq.block_table)
        seq.reset_cache_state()
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def _admit_prefix(self, seq: Sequence) -> bool:
        """Map the cached blocks of the sequence's prefix; False when a running sequence is computing the
        next block of the same prefix right now (then waiting one step turns a prefill into a cache hit:
        the n choices of one request, or a burst of requests with one system prompt)."""
        # at least the last token must be computed to get the logits of the next one
        tokens = seq.tokens
        usable = (len(tokens) - 1) // self.pool.block_size
        keys = block_keys(tokens, self.pool.block_size, n_blocks=usable)
        seq.reset_cache_state()
        seq.block_table = self.pool.match_prefix(keys)
        seq.keys = keys[:len(seq.block_table)]
        seq.prefill_keys = keys
        seq.num_computed = len(seq.block_table) * self.pool.block_size
        seq.cached_tokens = seq.num_computed
        if self.pool.prefix_caching and len(seq.keys) < len(keys):
            nxt = keys[len(seq.keys)]
            return not any(nxt in other.prefill_keys[len(other.keys):] for other in self.running)
        return True

    def schedule(self) -> list[tuple[Sequence, int]]:
        """(sequence, number of its tokens to compute) for the next step."""
        budget = self.cfg.max_batched_tokens
        plan: list[tuple[Sequence, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self.pool.ensure(seq.block_table, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq not in self.running:
                break
            plan.append((seq, n))
            budget -= n
            i += 1
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            seq = self.waiting[0]
            if seq.done:  # max_tokens 0: nothing to compute
                self.waiting.popleft()
                plan.append((seq, 0))
                continue
            share_later = not self._admit_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed, budget)
            if share_later or not self.pool.ensure(seq.block_table, seq.num_computed + n):
                self.pool.hits -= len(seq.block_table)  # not admitted now: its prefix hits do not count
                self.pool.free_table(seq.block_table)
                seq.reset_cache_state()
                break
            self.waiting.popleft()
            self.running.append(seq)
            plan.append((seq, n))
            budget -= n
        return plan

    # ------------------------------------------------------------ one step
    def step(self) -> list[TokenEvent]:
        plan = self.schedule()
        self.last_step_tokens = sum(n for _, n in plan)
        self.max_running_seen = max(self.max_running_seen, len(self.running))
        if not plan:
            return []
        events: list[TokenEvent] = []
        work = [(s, n) for s, n in plan if n > 0]
        logits = self._forward(work) if work else None
        ready = []  # sequences whose chunk reached their last token: they get a new token now
        for seq, n in plan:
            if n == 0:
                events.append(TokenEvent(seq.seq_id, None, "", finish_reason=seq.finish_reason))
                self._finish(seq)
                continue
            seq.num_computed += n
            self._register_full_blocks(seq)
            if seq.num_computed == seq.num_tokens:
                ready.append(seq)
        if ready:
            # whole-batch argmax and log-softmax are row-wise: each row's numbers are its own
            greedy = logits.argmax(dim=-1).tolist()
            need_logp = any(seq.cfg.logprobs or seq.top_logprobs for seq in ready)
            logp = torch.log_softmax(logits.float(), dim=-1) if need_logp else None
            for row, seq in enumerate(ready):
                events.append(self._choose(seq, logits[row], greedy[row], None if logp is None else logp[row]))
                if seq.done:
                    self._finish(seq)
        self.steps += 1
        return events

    def _forward(self, work: list[tuple[Sequence, int]]) -> torch.Tensor:
        bs = self.pool.block_size
        tokens, positions, slots, slices, logit_rows = [], [], [], [], []
        start = 0
        for seq, n in work:
            lo, hi = seq.num_computed, seq.num_computed + n
            tokens.extend(seq.tokens[lo:hi])
            positions.extend(range(lo, hi))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(lo, hi))
            slices.append(SeqSlice(start, n, hi, table))
            if hi == seq.num_tokens:
                logit_rows.append(start + n - 1)
            start += n
            if lo < len(seq.prompt_ids):
                self.prompt_tokens_computed += min(hi, len(seq.prompt_ids)) - lo
        dev = self.device

        def as_tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        return paged_forward(self.model, self.pool, as_tensor(tokens), as_tensor(positions), as_tensor(slots),
                             slices, as_tensor(logit_rows))

    def _register_full_blocks(self, seq: Sequence) -> None:
        full = seq.num_computed // self.pool.block_size
        if full > len(seq.keys):
            parent = seq.keys[-1] if seq.keys else None
            new = block_keys(seq.tokens, self.pool.block_size, parent, len(seq.keys), full)
            for i, key in enumerate(new, start=len(seq.keys)):
                self.pool.register(seq.block_table[i], key)
            seq.keys.extend(new)

    def _choose(self, seq: Sequence, logits: torch.Tensor, argmax: int, logp: Optional[torch.Tensor]) -> TokenEvent:
        """The next token of ``seq`` from its logits row (``argmax`` and the raw ``logp`` precomputed)."""
        if seq.processors or seq.cfg.do_sample or seq.logit_bias is not None:
            scores = logits[None].float()
            if seq.logit_bias is not None:  # OpenAI's logit_bias: added to the logits before anything else
                ids, bias = seq.logit_bias
                scores = scores.index_add(1, ids.to(scores.device), bias.to(scores.device)[None])
            if seq.processors:
                history = torch.tensor([seq.tokens], dtype=torch.long, device=scores.device)
                scores = seq.processors(history, scores, gen_start=len(seq.prompt_ids))
            if seq.cfg.do_sample:
                if seq.generator is not None:
                    scores = scores.cpu()  # the seeded generator lives on the CPU (as in lmstack.generate)
                tok = int(sample_from_scores(scores, [seq.generator])[0])
            else:
                tok = int(scores.argmax(dim=-1)[0])
        else:
            tok = argmax
        logprob, top = None, None
        if logp is not None and (seq.cfg.logprobs or seq.top_logprobs):
            logprob = float(logp[tok])
            if seq.top_logprobs:
                vals, idx = logp.topk(min(seq.top_logprobs, logp.shape[-1]))
                top = list(zip(idx.tolist(), vals.tolist()))
        seq.output_ids.append(tok)
        self.tokens_generated += 1
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        seq.finish_reason = finish_reason_after(tok, seq.stop_ids, seq.tracker, len(seq.output_ids), seq.budget)
        return TokenEvent(seq.seq_id, tok, seq.tracker.take_new(seq.done), logprob, top, seq.finish_reason)

    def _finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.pool.free_table(seq.block_table)
        self.seqs.pop(seq.seq_id, None)

    # ------------------------------------------------------------ convenience
    def run_to_completion(self, max_steps: int = 1_000_000) -> dict[int, list[TokenEvent]]:
        """Step until every queued sequence finished; events grouped per sequence (tests, benchmarks)."""
        out: dict[int, list[TokenEvent]] = {}
        for _ in range(max_steps):
            if not self.has_work():
                return out
            for ev in self.step():
                out.setdefault(ev.seq_id, []).append(ev)
        raise RuntimeError(f"scheduler still busy after {max_steps} steps")
