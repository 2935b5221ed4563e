"""The decode loop: B samples' tokens after a prompt, one step at a time, on one device.

Every token so far lives in one ids buffer on the device; each step appends a column. A step
is one of three kinds, all sampling with the same pre-drawn noise (`NoiseSource`):
- fill: the model reads the whole window (the prompt, a moved window, or every step
  without a KV cache) and the sample is drawn eagerly;
- plain: one token through the model against the cache, eagerly (a CPU's fastest path);
- sampled: one token through `SampledStep`, model and sampling in fixed shapes, replayed
  as a CUDA graph on a GPU.

On a GPU the fills keep off cuDNN's attention, which plans each new shape anew (about a
second each, measured on an H200), and the one-time work (the step's graph, the first run of
a moved window's fill) is done before the first token, so no token waits for it.

Tokens come back to the host in groups. On a GPU the loop stays one group ahead: it queues
group j+1 before it waits for group j, whose copy to pinned memory was queued behind it,
so the GPU never waits for Python, yet a streaming reader sees each group as soon as it
is done.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Iterator, Sequence

import torch
from torch.nn.attention import SDPBackend

from ..kv_cache import KVCache
from .sampling import NOT_FINITE, ContextWindow, GenerationError, NoiseSource, SamplingOptions, sample_next
from .static_decode import SampledStep, attention_backends

FILL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class DecodeLoop:
    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, prompt_ids: Sequence[int],
                 options: SamplingOptions, batch: int, static: bool, compile: bool = False):
        B, P, steps = batch, len(prompt_ids), options.max_new_tokens
        self.model, self.device, self.options, self.P, self.steps = model, device, options, P, steps
        too_many = GenerationError(f"{B} x {P + steps:,} tokens do not fit in memory on {device}; "
                                   "ask for fewer --max-new-tokens (or --num-samples)")
        if B * (P + steps) * 8 >= 2**63:  # more bytes than a size can say: torch would fail on the number itself
            raise too_many
        try:
            self.ids = torch.empty(B, P + steps, dtype=torch.long, device=device)
        except (RuntimeError, MemoryError):  # torch's "can't allocate memory" is a RuntimeError
            raise too_many from None
        self.ids[:, :P] = torch.tensor(prompt_ids, dtype=torch.long, device=device)
        self.window = ContextWindow(model.config.block_size, options.window_slide(model.config.block_size))
        greedy = options.temperature == 0
        self.noise = None if greedy else NoiseSource(B, model.config.vocab_size, device, options.seed)
        self.sampling = (options.temperature, options.top_k, options.top_p)
        # the sum of every step's logits: a score that is inf or nan anywhere makes it so too,
        # and adding costs a step two small kernels, where a flag would cost four
        self.scores = torch.zeros((), dtype=torch.float32, device=device)
        self.cache = self.step = None
        if options.use_kv_cache and getattr(model, "supports_kv_cache", False):
            self.cache = KVCache.for_model(model, B, device, dtype)
            if static:
                buffer = None if self.noise is None else self.noise.buffer
                self.step = SampledStep(model, self.cache, self.ids, buffer, self.sampling, self.scores,
                                        use_graph=device.type == "cuda", compile=compile)
        self.period = 1 if self.noise is None else self.noise.period
        self.fill_attention = FILL_ATTENTION if device.type == "cuda" else None

    def tokens(self, group: int) -> Iterator[list[int]]:
        """Each step's B new tokens, read back `group` steps at a time (the first step alone,
        for a prompt first token)."""
        reader = Reader(self.ids, self.scores, group) if self.device.type == "cuda" else None
        if reader is not None:
            self._warm_up_moved_window()
        done = self.P
        for n in range(self.P, self.P + self.steps):
            self._advance(n)
            if n == self.P and self.step is not None and self.steps > 1 and self.cache.length < self.window.block_size:
                self.step.prepare()  # the next token is the step's (a full window would move first)
            end = n + 1
            if end - done < group and end != self.P + self.steps and n != self.P:
                continue
            if reader is None:
                if not math.isfinite(self.scores):
                    raise GenerationError(NOT_FINITE)
                yield from self.ids[:, done:end].t().tolist()
            else:
                yield from reader.queue(done, end, wait_for_all=n == self.P or end == self.P + self.steps)
            done = end

    def _warm_up_moved_window(self) -> None:
        """Run a moved window's fill once before the prompt's, when the window will move: its
        first run loads kernels and plans products for its shape, tens of milliseconds that
        would otherwise stall the stream at the first move."""
        if self.cache is None or self.P + self.steps <= self.window.block_size:
            return
        length = self.window.block_size - self.window.slide + 1
        with attention_backends(self.fill_attention):
            idx = torch.zeros(self.ids.size(0), length, dtype=torch.long, device=self.device)
            self.model(idx, cache=self.cache, last_only=True)
        self.cache.reset()

    def _advance(self, n: int) -> None:
        """Sample token n from tokens [0, n)."""
        t = n - self.P
        slot = t % self.period
        if self.noise is not None and slot == 0:
            self.noise.refill()
        moved = self.window.update(n)
        start = self.window.start
        if self.cache is not None and not moved and self.cache.length > 0:
            if self.step is not None:
                self.step.advance()
                return
            x = self.ids[:, n - 1 : n]  # the cache holds the rest of the window
        else:
            if self.cache is not None:
                self.cache.reset()
            x = self.ids[:, start:n]
        with attention_backends(self.fill_attention):
            logits = self.model(x, cache=self.cache, last_only=True)[0][:, -1]
        noise = None if self.noise is None else self.noise.buffer[slot]
        self.scores.add_(logits.sum(dtype=torch.float32))
        self.ids[:, n : n + 1] = sample_next(logits, *self.sampling, noise)
        if self.step is not None:
            self.step.sync(n + 1, n - start, (slot + 1) % self.period)


class Reader:
    """Groups of tokens copied to pinned host memory behind the steps that make them, and
    handed out one group late, so that the device always has the next group queued."""

    def __init__(self, ids: torch.Tensor, scores: torch.Tensor, group: int):
        self.ids, self.scores = ids, scores
        self.pending: deque = deque()
        self.spare = [self._buffers(ids.size(0), group) for _ in range(2)]

    @staticmethod
    def _buffers(batch: int, group: int):
        return (torch.empty(group, batch, dtype=torch.long, pin_memory=True),
                torch.empty((), dtype=torch.float32, pin_memory=True))

    def queue(self, start: int, end: int, wait_for_all: bool) -> Iterator[list[int]]:
        tokens, scores = self.spare.pop() if self.spare else self._buffers(self.ids.size(0), end - start)
        tokens[: end - start].copy_(self.ids[:, start:end].t(), non_blocking=True)
        scores.copy_(self.scores, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((event, tokens, scores, end - start))
        while len(self.pending) > (0 if wait_for_all else 1):
            event, tokens, scores, count = self.pending.popleft()
            event.synchronize()
            if not math.isfinite(scores):
                raise GenerationError(NOT_FINITE)
            rows = tokens[:count].tolist()
            self.spare.append((tokens, scores))
            yield from rows
