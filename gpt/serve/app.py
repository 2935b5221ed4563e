"""The HTTP side of gpt-serve (FastAPI on uvicorn): routes, the API key, limits, errors.

    GET  /                the page to try the model in a browser (page.html: no outside resource)
    GET  /health          {"status": "ok"}: open to all, for load balancers
    GET  /metrics         Prometheus' text format
    GET  /v1/models       the model served
    POST /v1/completions  OpenAI's completions, streamed as server-sent events with "stream": true

Every error is OpenAI's error object with the right status: 400 for a bad request (malformed
JSON, a wrong type, an unknown field, a value out of range), 401 without the API key, 404
for an unknown model or route, 413 for a body over the limit, 429 with Retry-After when the
queue is full, 503 while shutting down.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..sample.generate import Generator
from ..sample.sampling import GenerationError
from . import api
from .api import ApiError, CompletionRequest, Limits
from .engine import Engine, EngineFull, EngineStopped
from .metrics import CONTENT_TYPE, Metrics
from .sequence import Event, Sequence, State

OPEN_PATHS = ("/health", "/")  # the page holds no data; the calls it makes carry the key
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions")
RETRY_AFTER_S = 1


@dataclass
class Settings:
    name: str  # the model's id in the API
    max_batch: int = 16
    max_waiting: int = 256  # sequences queued beyond the batch; past it, 429
    limits: Limits = None
    api_key: str | None = None
    max_body: int = 1 << 20  # bytes of a request body
    cors_origins: tuple[str, ...] = ()


class Served:
    """A model behind the API: its generator (model, tokenizer, device), engine and metrics."""

    def __init__(self, generator: Generator, settings: Settings):
        self.generator, self.settings = generator, settings
        self.limits = settings.limits or Limits()
        self.metrics = Metrics(settings.max_batch)
        self.engine = Engine(generator.model, generator.device, generator.dtype, settings.max_batch,
                             settings.max_waiting, on_step=self.metrics.on_step)
        self._mailbox: Mailbox | None = None
        self._beam_lock: asyncio.Lock | None = None

    def mailbox(self, loop: asyncio.AbstractEventLoop) -> "Mailbox":
        """The mailbox to `loop`, one per loop (a server runs one)."""
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = Mailbox(loop)
        return self._mailbox

    def beam_lock(self) -> asyncio.Lock:
        """One beam search at a time (made on the loop that first asks)."""
        if self._beam_lock is None:
            self._beam_lock = asyncio.Lock()
        return self._beam_lock

    def encode(self, prompt: str, param: str) -> list[int]:
        try:
            ids = self.generator.encode_prompt(prompt)
        except GenerationError as e:
            raise ApiError(400, str(e), param) from None
        if len(ids) > self.generator.block_size:
            raise ApiError(400, f"the prompt is {len(ids)} tokens, longer than the model's context of "
                           f"{self.generator.block_size} tokens", param, "context_length_exceeded")
        return ids


def create_app(served: Served) -> FastAPI:
    s = served.settings
    app = FastAPI(title="gpt-serve", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return JSONResponse(api.error_body(*validation_message(e.errors())), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(api.error_body(f"{request.method} {request.url.path}: {e.detail}", kind), e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(served.metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(served)]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != s.name:
            raise unknown_model(name, s.name)
        return model_card(served)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await complete(served, body, request)

    if s.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(s.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=s.max_body)
    if s.api_key:
        app.add_middleware(BearerAuth, key=s.api_key)
    app.add_middleware(Counted, metrics=served.metrics)  # the last added is the outermost: it counts every answer
    return app


def model_card(served: Served) -> dict:
    return {"id": served.settings.name, "object": "model", "created": 0, "owned_by": "gpt-serve",
            "context_length": served.generator.block_size}


def unknown_model(asked: str, name: str) -> ApiError:
    return ApiError(404, f"the model {asked!r} does not exist; this server serves {name!r}", "model",
                    "model_not_found", kind="not_found_error")


def validation_message(errors: list[dict]) -> tuple[str, str, str | None]:
    """(message, type, param) for the first of pydantic's errors, in words a client reads."""
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", \
            "invalid_request_error", None
    if e.get("type") == "extra_forbidden":
        return f"unknown field {param!r}", "invalid_request_error", param
    if e.get("type") == "missing" and not loc:
        return "the request needs a JSON body", "invalid_request_error", None
    return f"{param or 'body'}: {e.get('msg')}", "invalid_request_error", param


# -- a completion request ----------------------------------------------------------------------
async def complete(served: Served, body: CompletionRequest, request: Request) -> Response:
    arrived = time.perf_counter()
    s = served.settings
    body.check(served.limits)
    if body.model is not None and body.model != s.name:
        raise unknown_model(body.model, s.name)
    prompts = body.prompts()
    ids = [served.encode(p, "prompt") for p in prompts]
    if body.beams:
        return await beam_completion(served, body, prompts, ids)
    mailbox = served.mailbox(asyncio.get_running_loop())
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    gen = served.generator
    seqs = [Sequence(prompt_ids, body.options(j), gen.tokenizer, gen.block_size, mailbox.sink(events, i * body.n + j))
            for i, prompt_ids in enumerate(ids) for j in range(body.n)]
    try:
        served.engine.submit(seqs)
    except EngineFull:
        raise ApiError(429, "the server is busy: every slot is taken and the queue is full; retry shortly",
                       code="server_busy", kind="rate_limit_error",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except EngineStopped:
        raise ApiError(503, "the server is shutting down", kind="server_error") from None
    prompt_tokens = sum(len(p) for p in ids)
    served.metrics.prompt_tokens.inc(prompt_tokens)
    run = Run(served, seqs, events, arrived, prompt_tokens, [p for p in prompts for _ in range(body.n)], body)
    if body.stream:
        return StreamingResponse(run.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await run.whole(request)


async def beam_completion(served: Served, body: CompletionRequest, prompts: list[str],
                          ids: list[list[int]]) -> JSONResponse:
    """best_of > 1: the n best of best_of beams for each prompt, by beam search, on a worker
    thread, one search at a time (the engine's batch goes on meanwhile)."""
    choices, generated = [], 0
    for i, prompt in enumerate(prompts):
        async with served.beam_lock():
            found = await asyncio.to_thread(served.generator.beam, prompt, body.options(0), body.beams, body.n)
        for j, (text, tokens, stopped) in enumerate(found):
            choices.append(api.choice(i * body.n + j, (prompt if body.echo else "") + text,
                                      "stop" if stopped else "length"))
            generated += tokens
    served.metrics.prompt_tokens.inc(sum(len(p) for p in ids))
    served.metrics.generated_tokens.inc(generated)
    usage = api.usage(sum(len(p) for p in ids), generated)
    return JSONResponse(api.completion(api.completion_id(), served.settings.name, api.now(), choices, usage))


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

    def __init__(self, served: Served, seqs: list[Sequence], events: asyncio.Queue, arrived: float,
                 prompt_tokens: int, echoes: list[str], body: CompletionRequest):
        self.served, self.seqs, self.events, self.arrived = served, seqs, events, arrived
        self.prompt_tokens, self.echoes, self.body = prompt_tokens, echoes, body
        self.id, self.created, self.name = api.completion_id(), api.now(), served.settings.name
        self.first: list[float | None] = [None] * len(seqs)
        self.tokens = [0] * len(seqs)
        self.open = len(seqs)

    def take(self, index: int, event: Event) -> None:
        """Account for one event: times, tokens, metrics."""
        t = time.perf_counter()
        m = self.served.metrics
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
        self.served.engine.cancel(s for s in self.seqs if s.state is not State.ENDED)
        if self.open:
            self.served.metrics.completions.labels("cancelled").inc(self.open)
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


# -- middleware (plain ASGI: they see every request, the unknown routes' included) ----------------
async def send_error(send, status: int, message: str, kind: str, headers: list | None = None) -> None:
    body = json.dumps(api.error_body(message, kind)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Every route but /health and the page needs `Authorization: Bearer KEY`."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.key):
            return await send_error(send, 401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                    "authentication_error", [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Request bodies of at most `limit` bytes: 413 beyond, told by Content-Length or counted."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await send_error(send, 413, f"the request body is over this server's limit of {self.limit} bytes",
                                    "invalid_request_error")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await send_error(send, 413, f"the request body is over this server's limit of {self.limit} bytes",
                             "invalid_request_error")


class Counted:
    """gpt_serve_requests{route, status}: unknown paths are counted as one route, "other"."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counting(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting)
