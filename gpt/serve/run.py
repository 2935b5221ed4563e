"""One request's sequences as the event loop sees them: the events the engine posts (through
a `Mailbox`), gathered into one response or streamed as server-sent events, with the
request's times and tokens counted as they arrive."""
from __future__ import annotations

import asyncio
import json
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from . import api
from .api import ApiError, CompletionRequest
from .engine import Engine
from .metrics import Metrics
from .sequence import Event, Sequence, State


class Mailbox:
    """Events from the engine's thread to the event loop, with one wake-up of the loop for
    all the events posted before it runs, not one per token: a step of 16 sequences would
    otherwise wake it 16 times, and each wake-up takes the interpreter's lock from the
    engine, which then waits to get it back for its next operation."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.pending: list[tuple[asyncio.Queue, tuple[int, Event]]] = []

    def sink(self, events: asyncio.Queue, index: int):
        """An engine-side sink for choice `index` of a request (it never blocks the engine)."""
        return lambda event: self.post(events, (index, event))

    def post(self, events: asyncio.Queue, item: tuple[int, Event]) -> None:
        with self.lock:
            self.pending.append((events, item))
            if len(self.pending) > 1:  # a delivery is already on its way
                return
        try:
            self.loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    def deliver(self) -> None:
        with self.lock:
            ready, self.pending = self.pending, []
        for events, item in ready:
            events.put_nowait(item)


class Run:
    """One request's completions as their events arrive: gathered whole, or streamed."""

    def __init__(self, engine: Engine, metrics: Metrics, model: str, seqs: list[Sequence], events: asyncio.Queue,
                 arrived: float, prompt_tokens: int, echoes: list[str], body: CompletionRequest):
        self.engine, self.metrics, self.seqs, self.events, self.arrived = engine, metrics, seqs, events, arrived
        self.prompt_tokens, self.echoes, self.body = prompt_tokens, echoes, body
        self.id, self.created, self.name = api.completion_id(), api.now(), model
        self.first: list[float | None] = [None] * len(seqs)
        self.tokens = [0] * len(seqs)
        self.open = len(seqs)

    def take(self, index: int, event: Event) -> None:
        """Account for one event: times, tokens, metrics."""
        t = time.perf_counter()
        m = self.metrics
        if event.tokens and self.first[index] is None:
            self.first[index] = t
            if all(f is None or f == t for f in self.first):  # the request's first token
                m.first_token.observe(t - self.arrived)
        self.tokens[index] = event.tokens
        if event.done:
            self.open -= 1
            m.completions.labels(event.finish_reason).inc()
            if event.tokens > 1 and self.first[index] is not None:
                m.per_token.observe((t - self.first[index]) / (event.tokens - 1))
            if self.open == 0:
                m.latency.observe(t - self.arrived)

    def usage(self) -> dict:
        return api.usage(self.prompt_tokens, sum(self.tokens))

    def let_go(self) -> None:
        """The request is over (answered, failed, or its client went away): sequences still
        running leave the batch, and those whose end was not seen count as cancelled."""
        self.engine.cancel(s for s in self.seqs if s.state is not State.ENDED)
        if self.open:
            self.metrics.completions.labels("cancelled").inc(self.open)
            self.open = 0

    async def whole(self, request: Request) -> JSONResponse:
        texts = [[e] if self.body.echo else [] for e in self.echoes]
        reasons: list[str | None] = [None] * len(self.seqs)
        gone = asyncio.ensure_future(disconnected(request))
        try:
            while self.open:
                got = asyncio.ensure_future(self.events.get())
                done, _ = await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
                if got not in done:  # the client went away: its slots go to others now
                    got.cancel()
                    return JSONResponse(api.error_body("the client disconnected"), 499)
                index, event = got.result()
                self.take(index, event)
                if event.finish_reason == "error":
                    raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
                if event.finish_reason == "cancelled":
                    raise ApiError(503, "the server is shutting down", kind="server_error")
                texts[index].append(event.text)
                reasons[index] = event.finish_reason or reasons[index]
        finally:
            gone.cancel()
            self.let_go()
        choices = [api.choice(i, "".join(t), r) for i, (t, r) in enumerate(zip(texts, reasons))]
        return JSONResponse(api.completion(self.id, self.name, self.created, choices, self.usage()))

    async def stream(self):
        """Server-sent events, OpenAI's chunks: everything ready when the client can take it
        goes in one chunk per choice, so a slow reader costs fewer, larger chunks."""
        include_usage = self.body.stream_options is not None and self.body.stream_options.include_usage
        try:
            if self.body.echo:
                for i, text in enumerate(self.echoes):
                    yield self.chunk([api.choice(i, text, None)])
            while self.open:
                ready = [await self.events.get()]
                while not self.events.empty():
                    ready.append(self.events.get_nowait())
                merged: dict[int, list] = {}
                for index, event in ready:
                    self.take(index, event)
                    if event.finish_reason in ("error", "cancelled"):
                        message = (f"generation failed: {event.error}" if event.finish_reason == "error"
                                   else "the server is shutting down")
                        yield sse(api.error_body(message, "server_error"))
                        return
                    text, _ = merged.get(index, ("", None))
                    merged[index] = [text + event.text, event.finish_reason]
                for index, (text, reason) in sorted(merged.items()):
                    if text or reason:
                        yield self.chunk([api.choice(index, text, reason)])
            if include_usage:
                yield self.chunk([], self.usage())
            yield "data: [DONE]\n\n"
        finally:
            self.let_go()

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        return sse(api.completion(self.id, self.name, self.created, choices, usage))


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
