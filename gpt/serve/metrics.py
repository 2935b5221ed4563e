"""The server's Prometheus metrics (prometheus-client, served at /metrics in its text format).

Each server has its own registry, not the library's global one: two servers in one process
(the tests) keep their own counts, and no process-wide metric is exposed by accident."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# a character model's tokens come fast: per-token buckets reach down to a tenth of a millisecond
TOKEN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, max_batch: int):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.max_batch = max_batch
        self.requests = Counter("gpt_serve_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.prompt_tokens = Counter("gpt_serve_prompt_tokens", "prompt tokens read", registry=r)
        self.generated_tokens = Counter("gpt_serve_generated_tokens", "tokens generated", registry=r)
        self.completions = Counter("gpt_serve_completions", "completions ended, by finish reason", ["reason"],
                                   registry=r)
        self.queue_depth = Gauge("gpt_serve_queue_depth", "sequences waiting for a slot", registry=r)
        self.active = Gauge("gpt_serve_active_sequences", "sequences in the batch", registry=r)
        self.occupancy = Gauge("gpt_serve_batch_occupancy", "share of the batch's slots in use (0 to 1)",
                               registry=r)
        self.steps = Counter("gpt_serve_engine_steps", "engine steps run", registry=r)
        self.first_token = Histogram("gpt_serve_time_to_first_token_seconds",
                                     "from a request's arrival to its first token", buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.per_token = Histogram("gpt_serve_time_per_output_token_seconds",
                                   "a completion's time per token after its first", buckets=TOKEN_BUCKETS,
                                   registry=r)
        self.latency = Histogram("gpt_serve_request_duration_seconds", "a completion request's whole time",
                                 buckets=LATENCY_BUCKETS, registry=r)

    def on_step(self, active: int, waiting: int, new_tokens: int) -> None:
        """Called by the engine after each step, on its thread (prometheus-client is thread-safe)."""
        self.steps.inc()
        self.active.set(active)
        self.queue_depth.set(waiting)
        self.occupancy.set(active / self.max_batch)
        if new_tokens:
            self.generated_tokens.inc(new_tokens)

    def text(self) -> bytes:
        return generate_latest(self.registry)
