"""gpt-serve's middleware, plain ASGI so they see every request, the unknown routes' included:
the API key, the body size limit, and the request counter."""
from __future__ import annotations

import json
import secrets

from . import api
from .metrics import Metrics

OPEN_PATHS = ("/health", "/")  # the page holds no data; the calls it makes carry the key
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions")


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


class BodyLimit:
    """Request bodies of at most `limit` bytes: 413 beyond. A body with a Content-Length is
    judged by it (the server holds the client to it); one without (chunked) is read here, up
    to the limit, and handed on whole: refused while it is read, its 413 comes from here,
    not from inside the route's own reading, which would answer it as a malformed body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self.refuse(send)
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before its body ended
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.refuse(send)
            more = message.get("more_body", False)
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replayed():
            nonlocal whole
            if whole is None:
                return await receive()  # after the body: a streaming response waits here for a disconnect
            message, whole = whole, None
            return message

        await self.app(scope, replayed, send)

    async def refuse(self, send) -> None:
        await send_error(send, 413, f"the request body is over this server's limit of {self.limit} bytes",
                         "invalid_request_error")


def route_of(path: str) -> str:
    """A request's route in the metrics: a known path, one model's, or "other" (each unknown
    path its own label would grow the metrics without bound)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/") and "/" not in path.removeprefix("/v1/models/"):
        return "/v1/models/{id}"
    return "other"


class Counted:
    """gpt_serve_requests{route, status}: unknown paths are counted as one route, "other"."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_of(scope["path"])

        async def counting(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting)
