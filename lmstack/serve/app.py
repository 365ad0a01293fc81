"""The HTTP API (FastAPI): OpenAI-compatible completions and chat, models, health, metrics, web chat.

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with SSE streaming), GET /v1/models,
GET /health, GET /metrics (Prometheus text) and GET / (the web chat page).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmstack.generate import chat_prompt_ids
from lmstack.generate.sequence import encode_prompt

from .async_engine import AsyncEngine, EngineFailure
from .guardrails import Guardrails, PIIRefused
from .protocol import (TOOL_OPEN, APIError, Limits, ParsedRequest,
                       chat_request_schema, completion_request_schema, forced_tool_prefix, openapi_body,
                       parse_request, parse_tool_calls, with_tools)
from .scheduler import RequestRejected, TokenEvent

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerState:
    engine: AsyncEngine
    tokenizer: Any
    model_name: str
    guardrails: Guardrails = field(default_factory=Guardrails)
    limits: Limits = field(default_factory=Limits)
    api_key: Optional[str] = None
    rag: Any = None  # a lmstack.apps.rag.RagPipeline over the --rag index: requests may answer from it
    # (lmstack.align.familiarity.FamiliarityGate, the model it was fitted for): chat answers about names the model
    # never read start with its "I don't know."
    gate: Any = None
    in_flight: int = 0
    started: float = field(default_factory=time.time)


# ---------------------------------------------------------------- one choice's output

class ChoiceOutput:
    """The text of one choice as it streams: PII masking, holding back a tool call or a text under review."""

    def __init__(self, index: int, state: ServerState, req: ParsedRequest, prefix: str):
        self.index = index
        self.state = state
        self.tools = req.tools if req.tool_choice != "none" else []
        self.hold_all = state.guardrails.reviewer is not None
        self.pii = state.guardrails.output_masker()
        self.raw = prefix
        self.streamed = 0
        self.tokens = 0
        self.finish: Optional[str] = None
        self.content: Optional[str] = None
        self.tool_calls: list[dict] = []
        self.logprobs: list[tuple[int, float, Optional[list]]] = []

    def feed(self, ev: TokenEvent) -> tuple[str, list]:
        """New content safe to show, and the (token, logprob, top) entries of this event."""
        text = ev.text
        if self.pii is not None:
            text = self.pii.push(text, final=ev.finish_reason is not None)
        self.raw += text
        entries = []
        if ev.token_id is not None:
            self.tokens += 1
            if ev.logprob is not None:
                entries.append((ev.token_id, ev.logprob, ev.top_logprobs))
                self.logprobs.append(entries[-1])
        if ev.finish_reason is not None:
            self.finish = ev.finish_reason
            return "", entries  # the rest comes from finalize(), after tool parsing and review
        if self.hold_all:
            return "", entries
        end = len(self.raw)
        if self.tools:
            k = self.raw.find(TOOL_OPEN)
            if k >= 0:
                end = k
            else:  # keep back a tail that may be the start of a tool call
                for j in range(min(len(TOOL_OPEN) - 1, len(self.raw)), 0, -1):
                    if self.raw.endswith(TOOL_OPEN[:j]):
                        end -= j
                        break
        delta = self.raw[self.streamed:end] if end > self.streamed else ""
        self.streamed = max(self.streamed, end)
        return delta, entries

    def finalize(self, review_messages: list[dict]) -> str:
        """Decide content, tool calls and finish reason; returns content not streamed yet."""
        if self.pii is not None:
            self.state.guardrails.count_response_pii(self.pii.found)
        content, calls = parse_tool_calls(self.raw, self.tools) if self.tools else (self.raw, [])
        if calls:
            self.finish = "tool_calls"
        if not self.state.guardrails.review(review_messages, self.raw):
            content, calls, self.finish = self.state.guardrails.refusal, [], "content_filter"
            self.streamed = 0  # under review nothing was streamed yet
        self.tool_calls = calls
        self.content = content
        # streamed counts the characters of the visible text the client has already received
        visible = self.raw[:self.raw.find(TOOL_OPEN)] if calls else (content or "")
        return visible[self.streamed:]


# ---------------------------------------------------------------- formatting helpers

def _token_text(tok, token_id: int) -> tuple[str, list[int]]:
    raw = tok.decode_bytes([token_id])
    return raw.decode("utf-8", errors="replace"), list(raw)


def _chat_logprobs(tok, entries) -> list[dict]:
    out = []
    for token_id, lp, top in entries:
        text, raw = _token_text(tok, token_id)
        item = {"token": text, "logprob": lp, "bytes": raw, "top_logprobs": []}
        for t, l in top or []:
            tt, tb = _token_text(tok, t)
            item["top_logprobs"].append({"token": tt, "logprob": l, "bytes": tb})
        out.append(item)
    return out


def _completion_logprobs(tok, entries, offset: int = 0) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    for token_id, lp, top in entries:
        text, _ = _token_text(tok, token_id)
        tokens.append(text)
        lps.append(lp)
        tops.append({_token_text(tok, t)[0]: l for t, l in (top or [])})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------- the app

def create_app(state: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()
        try:
            yield
        finally:
            state.engine.stop()

    app = FastAPI(title="lmstack", description="OpenAI-compatible API over lmstack's paged-KV scheduler",
                  version="0.1.0", lifespan=lifespan)
    app.state.lmstack = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error").body(),
                            status_code=500)

    def authorize(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), state.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key", kind="authentication_error")

    async def read_body(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > state.limits.max_request_bytes:
            raise APIError(413, f"request body of {size} bytes exceeds the limit of {state.limits.max_request_bytes}")
        raw = await request.body()
        if len(raw) > state.limits.max_request_bytes:
            raise APIError(413, f"request body exceeds the limit of {state.limits.max_request_bytes} bytes")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_name}

    def model_card() -> dict:
        return {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "lmstack"}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        authorize(request)
        if model_id != state.model_name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {state.model_name!r}",
                           "model", "model_not_found")
        return model_card()

    @app.get("/metrics")
    async def metrics(request: Request):
        authorize(request)
        return PlainTextResponse(render_metrics(state), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC / "chat.html").read_text(encoding="utf-8"))

    @app.post("/v1/chat/completions", openapi_extra=openapi_body(chat_request_schema(state.limits)))
    async def chat_completions(request: Request):
        return await handle(request, "chat")

    @app.post("/v1/completions", openapi_extra=openapi_body(completion_request_schema(state.limits)))
    async def completions(request: Request):
        return await handle(request, "completion")

    async def handle(request: Request, kind: str):
        endpoint = "chat" if kind == "chat" else "completions"
        try:
            authorize(request)
            if state.in_flight >= state.limits.max_concurrent:
                raise APIError(429, f"the server is at its limit of {state.limits.max_concurrent} concurrent "
                                    "requests; retry shortly", code="rate_limit_exceeded", kind="rate_limit_error")
            req = parse_request(await read_body(request), kind, {state.model_name}, state.limits)
            prompts, review_msgs, prefixes = prepare_prompts(state, req)
            state.in_flight += 1
            try:
                job = await submit(state, req, prompts, prefixes, [r[-1]["content"] for r in review_msgs])
            except BaseException:
                state.in_flight -= 1
                raise
        except APIError as e:
            state.engine.metrics.count_request(endpoint, e.status)
            raise
        state.engine.metrics.count_request(endpoint, 200)
        if req.stream:
            return StreamingResponse(streaming_body(state, req, job, review_msgs, request),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            return await full_response(state, req, job, review_msgs, request)
        finally:
            state.in_flight -= 1

    return app


def prepare_prompts(state: ServerState, req: ParsedRequest) -> tuple[list[list[int]], list[list[dict]], list[str]]:
    """Token ids per prompt (PII guarded), the conversation the reviewer sees, and a forced prefix."""
    tok, guard = state.tokenizer, state.guardrails
    bad = [t for t in req.logit_bias if t >= tok.vocab_size]
    if bad:
        raise APIError(400, f"logit_bias names token ids outside the vocabulary (0..{tok.vocab_size - 1}): {bad[:5]}",
                       "logit_bias", "invalid_value")
    try:
        if req.kind == "chat":
            msgs = [{"role": m["role"], "content": guard.check_request(m["content"], f"messages[{i}].content")}
                    for i, m in enumerate(req.prompts[0])]
            prefix = forced_tool_prefix(req.tool_choice) if req.tools else ""
            if req.rag or (req.rag is None and state.rag is not None):
                msgs, cannot_find = rag_prompt(state, req, msgs)
                prefix = cannot_find or prefix  # below the score cut-off the answer is forced
            elif state.gate is not None and not req.tools:
                gate, model = state.gate
                if gate.check(model, tok, [msgs])[0][0]:
                    prefix = gate.reply(msgs)  # a name the model never read: its answer starts "I don't know."
            ids = chat_prompt_ids(tok, with_tools(msgs, req.tools if req.tool_choice != "none" else []))
            if prefix:
                ids = ids + list(tok.encode(prefix))
            return [ids], [msgs], [prefix]
        out, reviews = [], []
        for i, p in enumerate(req.prompts):
            if isinstance(p, str):
                p = guard.check_request(p, f"prompt[{i}]")
                reviews.append([{"role": "user", "content": p}])
            else:
                if any(t < 0 or t >= tok.vocab_size for t in p):
                    raise APIError(400, f"prompt[{i}] holds token ids outside the vocabulary (0..{tok.vocab_size - 1})",
                                   "prompt", "invalid_value")
                text = tok.decode(p)
                masked = guard.check_request(text, f"prompt[{i}]")  # token ids do not get around the PII guard
                if masked != text:
                    p = masked
                reviews.append([{"role": "user", "content": masked}])
            out.append(encode_prompt(tok, p))
        return out, reviews, [""] * len(out)
    except PIIRefused as e:
        raise APIError(400, str(e), "messages" if req.kind == "chat" else "prompt", "pii_detected") from None


def rag_prompt(state: ServerState, req: ParsedRequest, msgs: list[dict]) -> tuple[list[dict], str]:
    """The `lmstack rag ask` prompt for the last user turn (retrieved passages, numbered for [n] citations);
    the passages it quotes go to ``req.citations``. Earlier turns are left out: the model learned RAG on
    single questions, and its context holds little more than the passages. Also returns the "cannot find"
    answer to force when the pipeline's score cut-off rejects the best passage, else ""."""
    from lmstack.apps.rag import CANNOT_FIND
    from lmstack.data.text import lang_of

    if state.rag is None:
        raise APIError(400, "'rag': true needs a server started with --rag INDEX_DIR", "rag", "invalid_value")
    question = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), None)
    if not question:
        raise APIError(400, "'rag' needs a user message to retrieve for", "messages", "invalid_value")
    max_len = state.engine.scheduler.max_len or 0
    reserve = min(req.cfg.max_new_tokens, max_len // 4) if max_len else req.cfg.max_new_tokens
    rag_msgs, hits = state.rag.prompt(question, reserve=reserve)
    req.citations = [{"index": i, "doc_id": h.doc_id, "text": h.text} for i, h in enumerate(hits, start=1)]
    return rag_msgs, CANNOT_FIND[lang_of(question)] if state.rag.cut_off(question, hits)[1] else ""


@dataclass
class Job:
    id: str
    created: int
    queue: asyncio.Queue
    choices: dict[int, ChoiceOutput]  # seq id -> choice
    prompt_tokens: int
    echo_texts: list[str]


async def submit(state: ServerState, req: ParsedRequest, prompts: list[list[int]], prefixes: list[str],
                 prompt_texts: list[str]) -> Job:
    sched = state.engine.scheduler
    for i, ids in enumerate(prompts):
        try:
            sched.admission_check(len(ids), req.cfg)
        except RequestRejected as e:
            raise APIError(400, f"prompt {i}: {e}", "messages" if req.kind == "chat" else "prompt",
                           "context_length_exceeded") from None
    out: asyncio.Queue = asyncio.Queue()
    choices: dict[int, ChoiceOutput] = {}
    seeded = req.cfg.seed is not None and req.cfg.do_sample
    index = 0
    try:
        for i, ids in enumerate(prompts):
            for j in range(req.n):
                # like generate(): a seeded request's j-th choice draws with seed + j
                cfg = req.cfg.replace(seed=req.cfg.seed + j) if seeded and req.n > 1 else req.cfg
                seq_id = await state.engine.add(ids, cfg, req.top_logprobs, out, req.logit_bias or None)
                choices[seq_id] = ChoiceOutput(index, state, req, prefixes[i])
                index += 1
    except (RequestRejected, ValueError) as e:
        for seq_id in choices:
            state.engine.abort(seq_id)
        raise APIError(400, str(e)) from None
    echo = [text if req.echo else "" for text in prompt_texts]  # the prompt as the model saw it (PII masked)
    prefix = "chatcmpl-" if req.kind == "chat" else "cmpl-"
    return Job(prefix + uuid.uuid4().hex, int(time.time()), out, choices, sum(len(p) for p in prompts), echo)


async def events(job: Job, request: Request) -> AsyncIterator[tuple[ChoiceOutput, TokenEvent]]:
    """Every choice's events until all finished, or until the client goes away."""
    pending = set(job.choices)
    while pending:
        try:
            ev = await asyncio.wait_for(job.queue.get(), timeout=1.0)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                return
            continue
        if isinstance(ev, EngineFailure):
            raise APIError(500, str(ev), kind="server_error")
        if ev.finish_reason is not None:
            pending.discard(ev.seq_id)
        yield job.choices[ev.seq_id], ev


def abort_unfinished(state: ServerState, job: Job) -> None:
    """Cancel what a departed client no longer waits for; its KV blocks go back to the pool."""
    for seq_id, choice in job.choices.items():
        if choice.finish is None:
            state.engine.abort(seq_id)


def usage(job: Job) -> dict:
    completion = sum(c.tokens for c in job.choices.values())
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
            "total_tokens": job.prompt_tokens + completion}


async def finalize(state: ServerState, choice: ChoiceOutput, review_msgs: list[dict]) -> str:
    if state.guardrails.reviewer is None:
        return choice.finalize(review_msgs)
    return await asyncio.to_thread(choice.finalize, review_msgs)


async def full_response(state: ServerState, req: ParsedRequest, job: Job, review: list[list[dict]], request: Request):
    n_per_prompt = req.n
    try:
        async for choice, ev in events(job, request):
            choice.feed(ev)
            if choice.finish is not None:
                await finalize(state, choice, review[choice.index // n_per_prompt])
    finally:
        abort_unfinished(state, job)
    tok = state.tokenizer
    ordered = sorted(job.choices.values(), key=lambda c: c.index)
    if req.kind == "chat":
        out = []
        for c in ordered:
            msg: dict = {"role": "assistant", "content": c.content}
            if c.tool_calls:
                msg["tool_calls"] = c.tool_calls
            out.append({"index": c.index, "message": msg, "finish_reason": c.finish,
                        "logprobs": {"content": _chat_logprobs(tok, c.logprobs)} if req.logprobs else None})
        body = {"id": job.id, "object": "chat.completion", "created": job.created, "model": state.model_name,
                "choices": out, "usage": usage(job)}
        return dict(body, citations=req.citations) if req.citations is not None else body
    out = []
    for c in ordered:
        echo = job.echo_texts[c.index // n_per_prompt]
        out.append({"index": c.index, "text": echo + (c.content or ""), "finish_reason": c.finish,
                    "logprobs": _completion_logprobs(tok, c.logprobs, len(echo)) if req.logprobs else None})
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": state.model_name,
            "choices": out, "usage": usage(job)}


def release_job(state: ServerState, job: Job) -> None:
    abort_unfinished(state, job)
    state.in_flight -= 1


def streaming_body(state: ServerState, req: ParsedRequest, job: Job, review: list[list[dict]],
                   request: Request) -> AsyncIterator[str]:
    """The SSE generator. It releases the job when it ends; if the server never starts it (the client left
    before the first byte), a finalizer releases the job when the generator is collected."""
    once: list = []
    body = stream_response(state, req, job, review, request, lambda: once[0]())
    once.append(weakref.finalize(body, release_job, state, job))
    return body


async def stream_response(state: ServerState, req: ParsedRequest, job: Job, review: list[list[dict]],
                          request: Request, release: Callable[[], None]) -> AsyncIterator[str]:
    tok = state.tokenizer
    chat = req.kind == "chat"
    head = {"id": job.id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": job.created, "model": state.model_name}

    def chunk(index: int, delta: Optional[dict] = None, text: str = "", finish=None, entries=None) -> str:
        if chat:
            c = {"index": index, "delta": delta or {}, "finish_reason": finish,
                 "logprobs": {"content": _chat_logprobs(tok, entries)} if entries else None}
        else:
            c = {"index": index, "text": text, "finish_reason": finish,
                 "logprobs": _completion_logprobs(tok, entries) if entries else None}
        body = dict(head, choices=[c])
        if req.citations is not None and delta and delta.get("role"):
            body["citations"] = req.citations  # the first chunk names the passages the answer cites
        if req.include_usage:
            body["usage"] = None
        return _sse(body)

    try:
        for c in sorted(job.choices.values(), key=lambda c: c.index):
            if chat:
                yield chunk(c.index, {"role": "assistant", "content": ""})
            elif req.echo:
                yield chunk(c.index, text=job.echo_texts[c.index // req.n])
        async for choice, ev in events(job, request):
            delta, entries = choice.feed(ev)
            if delta or entries:
                yield chunk(choice.index, {"content": delta} if delta else {}, delta, entries=entries or None)
            if choice.finish is None:
                continue
            rest = await finalize(state, choice, review[choice.index // req.n])
            if rest:
                yield chunk(choice.index, {"content": rest}, rest)
            if chat and choice.tool_calls:
                calls = [dict(call, index=k) for k, call in enumerate(choice.tool_calls)]
                yield chunk(choice.index, {"tool_calls": calls})
            yield chunk(choice.index, {}, finish=choice.finish)
        if req.include_usage:
            yield _sse(dict(head, choices=[], usage=usage(job)))
        yield "data: [DONE]\n\n"
    except APIError as e:
        yield _sse(e.body())
        yield "data: [DONE]\n\n"
    finally:
        release()


def render_metrics(state: ServerState) -> str:
    sched, eng, guard = state.engine.scheduler, state.engine, state.guardrails
    pool = sched.pool
    now = time.perf_counter()
    gauges = {
        "lmstack_queue_length": ("requests waiting to be scheduled", eng.waiting),
        "lmstack_running_sequences": ("sequences in the running batch", eng.running),
        "lmstack_kv_blocks_total": ("KV cache blocks in the pool", pool.n_blocks),
        "lmstack_kv_blocks_used": ("KV cache blocks referenced by sequences", pool.num_used),
        "lmstack_kv_blocks_free": ("KV cache blocks free or evictable", pool.num_free),
        "lmstack_kv_block_size_tokens": ("tokens per KV block", pool.block_size),
        "lmstack_tokens_per_second": ("generated tokens per second over the last 10 s", eng.metrics.tokens_per_second(now)),
        "lmstack_requests_in_flight": ("HTTP requests being answered", state.in_flight),
    }
    counters = {
        "lmstack_generated_tokens_total": ("tokens generated", sched.tokens_generated),
        "lmstack_prompt_tokens_computed_total": ("prompt tokens run through the model", sched.prompt_tokens_computed),
        "lmstack_prefix_cache_hit_blocks_total": ("KV blocks reused from the prefix cache", pool.hits),
        "lmstack_kv_evictions_total": ("cached KV blocks evicted", pool.evictions),
        "lmstack_preemptions_total": ("sequences preempted (recomputed later) because the pool was full",
                                      sched.preemptions),
        "lmstack_scheduler_steps_total": ("scheduler steps", sched.steps),
        "lmstack_guardrail_blocked_total": ("answers replaced by a refusal after review", guard.blocked),
        "lmstack_guardrail_reviewed_total": ("answers reviewed by the policy model", guard.reviewed),
        "lmstack_guardrail_pii_request_total": ("PII items found in requests", sum(guard.request_pii.values())),
        "lmstack_guardrail_pii_response_total": ("PII items masked in responses", sum(guard.response_pii.values())),
    }
    return state.engine.metrics.render(gauges, counters)
