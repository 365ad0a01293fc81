"""The scheduler on a background thread, fed by the asyncio API.

The engine thread owns the scheduler: requests and cancellations reach it through a command queue,
and every step's token events go back to the waiting handlers' asyncio queues. HTTP handling never
blocks on a model step, and a model step never waits on a slow client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Optional

from .metrics import Metrics
from .scheduler import Scheduler, TokenEvent

log = logging.getLogger("lmstack.serve")


class EngineFailure(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, scheduler: Scheduler, metrics: Optional[Metrics] = None):
        self.scheduler = scheduler
        self.metrics = metrics or Metrics()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._subscribers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue, float, bool]] = {}
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.waiting = 0
        self.running = 0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lmstack-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # ------------------------------------------------------------ called from the event loop
    async def add(self, prompt_ids: list[int], cfg, top_logprobs: int, out: asyncio.Queue,
                  logit_bias: Optional[dict[int, float]] = None) -> int:
        """Queue a sequence whose TokenEvents will be put on ``out``; returns its id."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("add", (prompt_ids, cfg, top_logprobs, logit_bias, asyncio.get_running_loop(), out),
                            done))
        self._wake.set()
        return await asyncio.wrap_future(done)

    def abort(self, seq_id: int) -> None:
        self._commands.put(("abort", seq_id, None))
        self._wake.set()

    # ------------------------------------------------------------ engine thread
    def _drain_commands(self) -> None:
        while True:
            try:
                kind, arg, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                prompt_ids, cfg, top, bias, loop, out = arg
                try:
                    seq_id = self.scheduler.add(prompt_ids, cfg, top, bias)
                except Exception as e:  # handed back to the request handler
                    done.set_exception(e)
                    continue
                self._subscribers[seq_id] = (loop, out, time.perf_counter(), False)
                done.set_result(seq_id)
            else:
                self.scheduler.abort(arg)
                self._subscribers.pop(arg, None)

    def _loop(self) -> None:
        sched = self.scheduler
        while not self._stopping:
            self._drain_commands()
            self.waiting, self.running = len(sched.waiting), len(sched.running)
            if not sched.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            t0 = time.perf_counter()
            try:
                events = sched.step()
            except Exception as e:  # keep serving: fail the requests in flight, free their blocks
                log.exception("engine step failed")
                self._fail_all(f"the engine failed while generating: {e}")
                continue
            now = time.perf_counter()
            self.metrics.record_step(now, now - t0, sum(ev.token_id is not None for ev in events))
            for ev in events:
                self._deliver(ev, now)

    def _deliver(self, ev: TokenEvent, now: float) -> None:
        sub = self._subscribers.get(ev.seq_id)
        if sub is None:
            return
        loop, out, arrival, got_first = sub
        if ev.token_id is not None and not got_first:
            self.metrics.ttft.observe(now - arrival)
            self._subscribers[ev.seq_id] = (loop, out, arrival, True)
        if ev.finish_reason is not None:
            self.metrics.latency.observe(now - arrival)
            del self._subscribers[ev.seq_id]
        try:
            loop.call_soon_threadsafe(out.put_nowait, ev)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.scheduler.abort(ev.seq_id)

    def _fail_all(self, message: str) -> None:
        for seq_id, (loop, out, _, _) in list(self._subscribers.items()):
            self.scheduler.abort(seq_id)
            try:
                loop.call_soon_threadsafe(out.put_nowait, EngineFailure(message))
            except RuntimeError:
                pass
        self._subscribers.clear()
