"""The completions API's shapes, as OpenAI's clients send and read them: the request, its
checks (each a 400 naming the field), the response and the stream's chunks, and errors.

Only `/v1/completions`: a character model continues text, and a chat format would be a
convention the model was never trained on (no roles, no turn tokens), so chat completions
would promise what the model cannot do. Fields OpenAI defines that this server does not
implement (`logprobs`, penalties, `logit_bias`, `suffix`) are refused with
a 400 naming them when set to anything but their neutral value; unknown fields are refused
too, so a misspelt option is never silently ignored. `best_of` > 1 is beam search: the n
most likely completions of best_of beams, length-normalised, deterministic.
"""
from __future__ import annotations

import math
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..sample.sampling import SamplingOptions


class ApiError(Exception):
    """An error for the client: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def nulls_dropped(body: Any) -> Any:
    """OpenAI's API takes null for any optional field, as leaving it out: a client that
    writes every field of its request object sends them."""
    return {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else body


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False

    @model_validator(mode="before")
    @classmethod
    def nulls_are_defaults(cls, body: Any) -> Any:
        return nulls_dropped(body)


class CompletionRequest(BaseModel):
    # strict: "5" is not 5 and 1 is not true; a wrong type is the client's mistake to hear of
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # an extension: sample from the k most likely tokens
    ignore_eos: bool = False  # an extension (vLLM's name): go on past the end-of-text token
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    user: str | None = None
    # OpenAI's, accepted at their neutral values only (but best_of)
    best_of: int | None = None  # > 1: beam search with this many beams, returning the n best
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, Any] | None = None
    suffix: str | None = None

    @model_validator(mode="before")
    @classmethod
    def nulls_are_defaults(cls, body: Any) -> Any:
        return nulls_dropped(body)

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def check(self, limits: "Limits") -> None:
        """400 for a value out of range or a feature not offered, naming the field."""
        unsupported = {"logprobs": self.logprobs is not None, "suffix": self.suffix is not None,
                       "presence_penalty": self.presence_penalty != 0, "frequency_penalty": self.frequency_penalty != 0,
                       "logit_bias": bool(self.logit_bias)}
        for field, asked in unsupported.items():
            if asked:
                raise ApiError(400, f"{field} is not supported by this server", field, "unsupported_parameter")
        if not self.prompts():
            raise ApiError(400, "prompt is an empty list: give at least one prompt", "prompt")
        for field, texts in (("prompt", self.prompts()), ("stop", self.stops())):
            if any(not is_unicode_text(t) for t in texts):  # JSON can carry one; no answer in UTF-8 could echo it
                raise ApiError(400, f"{field} holds a lone surrogate (a \\ud800-\\udfff escape not in a pair), "
                               "which is no character", field)
        if "max_tokens" not in self.model_fields_set:  # the default fits under the operator's limit
            self.max_tokens = min(self.max_tokens, limits.max_tokens)
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", "stream_options")
        if not 0 <= self.max_tokens <= limits.max_tokens:
            raise ApiError(400, f"max_tokens must be between 0 and {limits.max_tokens} (this server's limit), "
                           f"got {self.max_tokens}", "max_tokens")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ApiError(400, f"temperature must be a finite number >= 0, got {self.temperature}", "temperature")
        if not 0 < self.top_p <= 1:
            raise ApiError(400, f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k is not None and self.top_k < 1:
            raise ApiError(400, f"top_k must be at least 1, got {self.top_k}", "top_k")
        if not 1 <= self.n <= limits.max_n:
            raise ApiError(400, f"n must be between 1 and {limits.max_n}, got {self.n}", "n")
        if len(self.prompts()) * self.n > limits.max_n:
            raise ApiError(400, f"{len(self.prompts())} prompts x n={self.n} completions is more than this server's "
                           f"{limits.max_n} per request", "n")
        if self.best_of is not None and not self.n <= self.best_of <= limits.max_n:
            raise ApiError(400, f"best_of must be between n ({self.n}) and {limits.max_n}, got {self.best_of}",
                           "best_of")
        if self.beams and self.stream:
            raise ApiError(400, "best_of cannot be streamed: the best completions are known only at the end",
                           "stream")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ApiError(400, f"seed must be in [0, 2^63), got {self.seed}", "seed")
        stops = self.stops()
        if len(stops) > 4 or any(s == "" for s in stops):
            raise ApiError(400, "stop must be up to 4 non-empty strings", "stop")

    @property
    def beams(self) -> int:
        """Beams for beam search (best_of > 1: the n best of best_of beams), else 0."""
        return self.best_of if self.best_of is not None and self.best_of > 1 else 0

    def options(self, choice: int) -> SamplingOptions:
        """The sampling options of completion number `choice` of this request: with a seed,
        choice i draws with seed + i, so the n completions differ and each is reproducible."""
        seed = None if self.seed is None else (self.seed + choice) % 2**63
        return SamplingOptions(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                               top_p=None if self.top_p == 1 else self.top_p, stop=self.stops(), seed=seed,
                               stop_at_eot=not self.ignore_eos)


def is_unicode_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Limits(BaseModel):
    """What the operator allows one request."""

    max_tokens: int = Field(default=4096, ge=1)
    max_n: int = Field(default=64, ge=1)


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def completion(cid: str, model: str, created: int, choices: list[dict], usage: dict | None) -> dict:
    body = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def now() -> int:
    return int(time.time())
