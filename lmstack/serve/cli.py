"""`lmstack serve RUN_OR_CHECKPOINT`: the OpenAI-compatible server with the web chat at /."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from .async_engine import AsyncEngine
from .guardrails import PII_MODES, Guardrails, Reviewer
from .protocol import Limits
from .scheduler import Scheduler, SchedulerConfig

API_KEY_ENV = "LMSTACK_API_KEY"


def capacity_report(sched: Scheduler, typical_tokens: int) -> str:
    """What the pool holds, in words: blocks, memory, and how many typical requests fit at once."""
    pool = sched.pool
    per_request = pool.blocks_for(typical_tokens)
    fits = pool.n_blocks // per_request
    mib = pool.n_blocks * sched.bytes_per_block / 2**20
    return (f"KV cache: {pool.n_blocks} blocks of {pool.block_size} tokens ({mib:.1f} MiB, "
            f"{pool.n_blocks * pool.block_size} token slots). A typical request of {typical_tokens} tokens "
            f"(prompt + answer) needs {per_request} blocks, so about {fits} such requests fit at once; "
            f"the batch is capped at {sched.cfg.max_num_seqs} sequences and {sched.cfg.max_batched_tokens} "
            "tokens per step.")


def build_state(path: str, *, stage: Optional[str] = None, device: str = "cpu", model_name: Optional[str] = None,
                sched_cfg: Optional[SchedulerConfig] = None, limits: Optional[Limits] = None, pii: str = "mask",
                review: bool = True, review_threshold: Optional[float] = None, api_key: Optional[str] = None,
                rag_index: Optional[str] = None, rag_k: Optional[int] = None, rag_mode: str = "auto",
                gate: bool = True):
    """Load a run or checkpoint and build the ServerState the app serves (also used by tests). ``rag_k`` None:
    the passages per prompt the run's apps stage trained with (3 without one); RAG prompts always take the layout
    it trained with."""
    from lmstack.generate.cli import resolve_checkpoint
    from lmstack.model import load_pretrained
    from lmstack.tokenizer import Tokenizer

    from .app import ServerState

    ckpt, tok_path = resolve_checkpoint(path, stage)
    model = load_pretrained(ckpt, device=device).eval()
    tokenizer = Tokenizer.load(tok_path)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"{ckpt}: model vocab {model.config.vocab_size} < tokenizer vocab {tokenizer.vocab_size} "
                         f"({tok_path}); they do not belong together")
    reviewer = None
    run_dir = Path(path)
    if ckpt.parent.name == "checkpoints":  # a checkpoint inside a run: review with that run's reward model
        run_dir = ckpt.parent.parent
    if review and (run_dir / "checkpoints").is_dir():
        reviewer = Reviewer.from_run(run_dir, tokenizer, review_threshold, device=device)
    guard = Guardrails(pii=pii, reviewer=reviewer)
    sched = Scheduler(model, tokenizer, sched_cfg or SchedulerConfig())
    name = model_name or Path(path).resolve().name
    rag = None
    if rag_index:  # ask as the run's apps stage trained: its passages per prompt and its prompt layout
        from lmstack.apps.cli import trained_k, trained_layout, trained_min_score

        rag = rag_pipeline(rag_index, model, tokenizer, trained_k(str(run_dir)) if rag_k is None else rag_k,
                           rag_mode, device, trained_layout(str(run_dir)), trained_min_score(str(run_dir)))
    familiarity = None
    if gate:
        from lmstack.align.familiarity import FamiliarityGate

        found = FamiliarityGate.beside(ckpt)
        familiarity = (found, model) if found else None
    return ServerState(AsyncEngine(sched), tokenizer, name, guard, limits or Limits(), api_key, rag,
                       gate=familiarity), ckpt


def rag_pipeline(index_dir: str, model, tokenizer, k: int = 3, mode: str = "auto", device: str = "cpu",
                 layout: str = "passages_first", min_score: float | None = None):
    """The retrieval half of `lmstack rag ask` over INDEX_DIR, for chat requests to answer from (``layout``:
    ``rag.LAYOUTS``, the one the model was tuned with; ``min_score``: the score cut-off, kept only when the
    index has the dense encoder it needs)."""
    from lmstack.apps.rag import RagPipeline, load_index

    store = load_index(index_dir, tokenizer, device)
    if mode == "auto":
        mode = "hybrid" if store.index is not None else "bm25"
    return RagPipeline(store, model, tokenizer, k=k, mode=mode, layout=layout,
                       min_score=min_score if store.encoder is not None else None)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lmstack serve", description="OpenAI-compatible server with continuous batching "
                                "over a paged KV cache, guardrails and a web chat at /.")
    p.add_argument("path", help="run directory (runs/NAME) or checkpoint directory")
    p.add_argument("--stage", help="which checkpoint of a run (default: the most aligned one present)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients send (default: the directory name)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = p.add_argument_group("KV cache and scheduler")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    g.add_argument("--kv-memory-mb", type=float, default=256.0, help="memory for the KV block pool")
    g.add_argument("--num-blocks", type=int, default=0, help="pool size in blocks (overrides --kv-memory-mb)")
    g.add_argument("--max-batched-tokens", type=int, default=512, help="tokens per model step (prefill chunks + decodes)")
    g.add_argument("--max-num-seqs", type=int, default=64, help="sequences in the running batch")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--typical-tokens", type=int, default=0, help="request length used in the capacity message "
                   "(default: half the model's context)")
    g = p.add_argument_group("guardrails and limits")
    g.add_argument("--pii", choices=PII_MODES, default="mask", help="PII in requests and answers (default: mask)")
    g.add_argument("--no-review", action="store_true", help="do not review answers with the run's reward model")
    g.add_argument("--review-threshold", type=float, help="block answers whose reward is below this "
                   "(default: the 5%% quantile of the preferred answers of the run's held-out preference pairs)")
    g.add_argument("--no-gate", action="store_true", help="do not use the unknown-entity gate saved beside the "
                   "checkpoint (familiarity/: chat answers about names the model never read start \"I don't know.\")")
    g.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    g.add_argument("--max-n", type=int, default=8)
    g.add_argument("--max-concurrent", type=int, default=64, help="requests in flight; more get 429")
    g.add_argument("--max-request-bytes", type=int, default=1 << 20)
    g = p.add_argument_group("retrieval-augmented answers")
    g.add_argument("--rag", metavar="INDEX_DIR", help="answer chat requests from this index (lmstack rag build, or "
                   "RUN/apps/index): passages for the last user turn, cited as [n]; a request sends \"rag\": false "
                   "to opt out")
    g.add_argument("--rag-k", type=int, help="passages per prompt (default: what the run's apps stage trained "
                   "with, else 3)")
    g.add_argument("--rag-mode", choices=["auto", "bm25", "dense", "hybrid"], default="auto",
                   help="auto = hybrid when the index has dense vectors, else bm25")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"lmstack serve: {e}; install the server extra: pip install -e '.[serve]'", file=sys.stderr)
        return 2
    sched_cfg = SchedulerConfig(block_size=args.block_size, num_blocks=args.num_blocks,
                                kv_memory_bytes=int(args.kv_memory_mb * 2**20),
                                max_batched_tokens=args.max_batched_tokens, max_num_seqs=args.max_num_seqs,
                                prefix_caching=not args.no_prefix_caching)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_tokens=args.max_tokens_limit, max_n=args.max_n,
                    max_concurrent=args.max_concurrent)
    try:
        state, ckpt = build_state(args.path, stage=args.stage, device=args.device, model_name=args.model_name,
                                  sched_cfg=sched_cfg, limits=limits, pii=args.pii, review=not args.no_review,
                                  review_threshold=args.review_threshold,
                                  api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                                  rag_index=args.rag, rag_k=args.rag_k, rag_mode=args.rag_mode,
                                  gate=not args.no_gate)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"lmstack serve: {e}", file=sys.stderr)
        return 2
    sched = state.engine.scheduler
    typical = args.typical_tokens or max(1, (sched.max_len or 1024) // 2)
    print(f"lmstack serve: {ckpt} as model {state.model_name!r} on {args.device}", file=sys.stderr)
    print(capacity_report(sched, typical), file=sys.stderr)
    rev = state.guardrails.reviewer
    print(f"guardrails: PII {args.pii}; review "
          + (f"by {Path(args.path) / 'checkpoints' / 'reward'} (block below {rev.threshold:.3f})" if rev else "off"),
          file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and state.api_key is None:
        print(f"warning: listening on {args.host} without an API key; anyone who can reach it may use it "
              f"(--api-key or {API_KEY_ENV})", file=sys.stderr)
    if state.rag is not None:
        print(f"RAG: {args.rag} ({len(state.rag.store.chunks)} chunks, {state.rag.mode}, k={state.rag.k})", file=sys.stderr)
    if state.gate is not None:
        print(f"unknown-entity gate: {ckpt / 'familiarity'} (threshold {state.gate[0].threshold:.1f} nats)",
              file=sys.stderr)
    print(f"web chat: http://{args.host}:{args.port}/   API: http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="info")
    return 0
