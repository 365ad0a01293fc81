"""Shared fixtures for the server tests: a tiny model that has learned one tool call, and a live server."""

import socket
import threading
import time

import torch

from lmstack.generate import chat_prompt_ids
from lmstack.serve.app import ServerState, create_app
from lmstack.serve.async_engine import AsyncEngine
from lmstack.serve.guardrails import Guardrails
from lmstack.serve.protocol import Limits, with_tools
from lmstack.serve.scheduler import Scheduler, SchedulerConfig
from test_generate_common import small_tokenizer, tiny_model  # noqa: F401 (small_tokenizer is re-exported)

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
TOOL_ANSWER = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


PII_QUESTION = [{"role": "user", "content": "What is your phone number?"}]
PII_ANSWER = "Call 138 1234 5678 now."


def tool_calling_model(tok):
    """A tiny llama-style model trained (a few seconds) to answer TOOL_QUESTION with a call to get_weather
    and PII_QUESTION with a phone number."""
    pairs = [(chat_prompt_ids(tok, with_tools(TOOL_QUESTION, [WEATHER_TOOL])), tok.encode(TOOL_ANSWER)),
             (chat_prompt_ids(tok, PII_QUESTION), tok.encode(PII_ANSWER))]
    model = tiny_model(tok.vocab_size, max_seq_len=512)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = []
    for prompt, answer in pairs:
        target = answer + [tok.end_id]
        seq = torch.tensor([prompt + target])
        labels = torch.full_like(seq, -100)
        labels[0, len(prompt) - 1:-1] = torch.tensor(target)
        batches.append((seq, labels))
    for _ in range(400):
        losses = [model(seq, targets=labels).loss for seq, labels in batches]
        loss = sum(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if max(x.item() for x in losses) < 0.005:
            break
    return model.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn on a thread, on a free localhost port."""

    def __init__(self, state: ServerState):
        import uvicorn

        self.state = state
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_state(model, tok, **sched) -> ServerState:
    sched.setdefault("num_blocks", 512)
    return ServerState(AsyncEngine(Scheduler(model, tok, SchedulerConfig(**sched))), tok, "tiny",
                       Guardrails(pii="mask"), Limits(max_tokens=256))
