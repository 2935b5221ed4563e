"""The HTTP side of gpt-serve (FastAPI on uvicorn): routes, the API key, limits, errors.

    GET  /                the page to try the model in a browser (page.html: no outside resource)
    GET  /health          {"status": "ok"}: open to all, for load balancers
    GET  /metrics         Prometheus' text format
    GET  /v1/models       the models served: the model, and its LoRA adapters (--lora)
    POST /v1/completions  OpenAI's completions, streamed as server-sent events with "stream": true

Every error is OpenAI's error object with the right status: 400 for a bad request (malformed
JSON, a wrong type, an unknown field, a value out of range), 401 without the API key, 404
for an unknown model or route, 413 for a body over the limit, 429 with Retry-After when the
queue is full, 503 while shutting down.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..sample.beam import SearchCancelled
from ..sample.generate import Generator
from ..sample.sampling import GenerationError
from . import api
from .adapters import using
from .api import ApiError, CompletionRequest, Limits
from .engine import Engine, EngineFull, EngineStopped
from .metrics import CONTENT_TYPE, Metrics
from .middleware import BearerAuth, BodyLimit, Counted
from .run import Mailbox, Run, disconnected
from .sequence import Event, Sequence

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
    adapters: tuple[str, ...] = ()  # the LoRA adapters' ids, adapter k being adapters[k - 1]


class Served:
    """A model behind the API: its generator (model, tokenizer, device), engine and metrics."""

    def __init__(self, generator: Generator, settings: Settings):
        self.generator, self.settings = generator, settings
        self.limits = settings.limits or Limits()
        self.metrics = Metrics(settings.max_batch)
        self.engine = Engine(generator.model, generator.device, generator.dtype, settings.max_batch,
                             settings.max_waiting, on_step=self.metrics.on_step)
        self.models = [settings.name, *settings.adapters]  # a request's `model` picks one; index = adapter
        self._mailbox: Mailbox | None = None
        self._beam_lock: asyncio.Lock | None = None
        self.beam_requests = 0  # beam searches running or waiting for the lock

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

    def adapter(self, model: str | None) -> int:
        """The adapter a request's `model` names (0: the model itself, also when none is named)."""
        if model is None:
            return 0
        if model not in self.models:
            raise unknown_model(model, self.models)
        return self.models.index(model)

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
    # no redirects for a trailing slash: an empty 307 that clients built on httpx do not
    # follow; "/v1/completions/" is an unknown route, a 404 with the JSON error
    app = FastAPI(title="gpt-serve", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        given = request.headers.get("content-type")
        # a body sent as anything but JSON is read as no JSON at all: the body as a whole is
        # what fails (FastAPI before 0.132 took a body without a Content-Type as JSON, and
        # then a field's own error is the one to say)
        unread = all(tuple(err.get("loc", ())) == ("body",) for err in e.errors())
        if unread and (given is None or given.split(";")[0].strip().lower() != "application/json"):
            sent = "without a Content-Type" if given is None else f"as {given!r}"
            return JSONResponse(api.error_body(f"the request body must be JSON, sent with Content-Type: "
                                               f"application/json (this one was sent {sent})",
                                               "invalid_request_error", None), 400)
        return JSONResponse(api.error_body(*validation_message(e.errors())), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(api.error_body(f"{request.method} {request.url.path}: {e.detail}", kind), e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: what some load balancers probe with
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(served.metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(served, name) for name in served.models]}

    @app.get("/v1/models/{name:path}")  # an id may hold a slash, as "org/model" ids do
    async def model(name: str):
        served.adapter(name)  # 404 for a model not served
        return model_card(served, name)

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


def model_card(served: Served, name: str) -> dict:
    card = {"id": name, "object": "model", "created": 0, "owned_by": "gpt-serve",
            "context_length": served.generator.block_size, "max_tokens": served.limits.max_tokens}
    if name != served.settings.name:  # a LoRA adapter: its base, as vLLM names it
        card.update(root=served.settings.name, parent=served.settings.name)
    return card


def unknown_model(asked: str, names: list[str]) -> ApiError:
    return ApiError(404, f"the model {asked!r} does not exist; this server serves "
                    f"{', '.join(repr(n) for n in names)}", "model", "model_not_found", kind="not_found_error")


# how pydantic names the types of a field that takes several, in a client's words
TYPE_WORDS = {"str": "a string", "list[str]": "a list of strings", "int": "an integer",
              "list[int]": "a list of integers"}


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
    # a field of several types (prompt: str | list[str]) that fits none: an error for each,
    # its type the second part of where
    where = [[str(p) for p in err.get("loc", ()) if p != "body"] for err in errors]
    members = list(dict.fromkeys(w[1] for w in where if len(w) > 1 and loc and w[0] == loc[0]))
    if len(members) > 1:
        kinds = " or ".join(TYPE_WORDS.get(str(m), str(m)) for m in members)
        return f"{loc[0]} must be {kinds}", "invalid_request_error", loc[0]
    return f"{param or 'body'}: {e.get('msg')}", "invalid_request_error", param


# -- a completion request ----------------------------------------------------------------------
async def complete(served: Served, body: CompletionRequest, request: Request) -> Response:
    arrived = time.perf_counter()
    body.check(served.limits)
    adapter = served.adapter(body.model)
    prompts = body.prompts()
    ids = [served.encode(p, "prompt") for p in prompts]
    if body.beams:
        return await beam_completion(served, body, prompts, ids, adapter, request)
    mailbox = served.mailbox(asyncio.get_running_loop())
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    gen = served.generator
    seqs = [Sequence(prompt_ids, body.options(j), gen.tokenizer, gen.block_size, mailbox.sink(events, i * body.n + j),
                     adapter) for i, prompt_ids in enumerate(ids) for j in range(body.n)]
    try:
        served.engine.submit(seqs)
    except EngineFull:
        raise server_busy() from None
    except EngineStopped:
        raise shutting_down() from None
    prompt_tokens = sum(len(p) for p in ids)
    served.metrics.prompt_tokens.inc(prompt_tokens)
    echoes = [p for p in prompts for _ in range(body.n)]
    run = Run(served.engine, served.metrics, served.models[adapter], seqs, events, arrived, prompt_tokens, echoes,
              body)
    if body.stream:
        return StreamingResponse(run.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await run.whole(request)


def server_busy() -> ApiError:
    return ApiError(429, "the server is busy: every slot is taken and the queue is full; retry shortly",
                    code="server_busy", kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)})


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", kind="server_error")


async def beam_completion(served: Served, body: CompletionRequest, prompts: list[str],
                          ids: list[list[int]], adapter: int, request: Request) -> Response:
    """best_of > 1: the n best of best_of beams for each prompt, by beam search, on a worker
    thread, one search at a time (the engine's batch goes on meanwhile). Searches count
    against the queue (one running and --max-queue waiting; past that a 429), and a search
    ends within a step when its client goes away (499) or the server stops (503)."""
    if served.beam_requests > served.settings.max_waiting:
        raise server_busy()
    served.beam_requests += 1
    stop = threading.Event()

    def search(prompt: str) -> list[tuple[str, int, bool]]:
        with using(adapter):
            return served.generator.beam(prompt, body.options(0), body.beams, body.n,
                                         cancelled=lambda: stop.is_set() or served.engine.stopping)

    choices, generated = [], 0
    gone = asyncio.ensure_future(disconnected(request))
    try:
        for i, prompt in enumerate(prompts):
            async with served.beam_lock():
                if gone.done():  # went away while it waited: no search for nobody
                    return JSONResponse(api.error_body("the client disconnected"), 499)
                if served.engine.stopping:
                    raise shutting_down()
                searching = asyncio.ensure_future(asyncio.to_thread(search, prompt))
                await asyncio.wait({searching, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not searching.done():
                    stop.set()
                    await asyncio.wait({searching})  # the thread ends at its next step, then the lock is free
                    return JSONResponse(api.error_body("the client disconnected"), 499)
                try:
                    found = searching.result()
                except SearchCancelled:
                    raise shutting_down() from None
                except GenerationError as e:  # e.g. more beams than the search allows
                    raise ApiError(400, str(e), "best_of") from None
            for j, (text, tokens, stopped) in enumerate(found):
                choices.append(api.choice(i * body.n + j, (prompt if body.echo else "") + text,
                                          "stop" if stopped else "length"))
                served.metrics.completions.labels("stop" if stopped else "length").inc()
                generated += tokens
    except asyncio.CancelledError:  # the web server gave up on the request: so does its search
        stop.set()
        raise
    finally:
        gone.cancel()
        served.beam_requests -= 1
    served.metrics.prompt_tokens.inc(sum(len(p) for p in ids))
    served.metrics.generated_tokens.inc(generated)
    usage = api.usage(sum(len(p) for p in ids), generated)
    return JSONResponse(api.completion(api.completion_id(), served.models[adapter], api.now(), choices, usage))
