"""The decode loop: B samples' tokens after a prompt, one step at a time, on one device.

Every token so far lives in one ids buffer on the device; each step appends a column. A step
is one of three kinds, all sampling with the same pre-drawn noise (`NoiseSource`):
- fill: the model reads the whole window (the prompt, a moved window, or every step
  without a KV cache) and the sample is drawn eagerly;
- plain: one token through `GPT.decode`, eagerly (a CPU's fastest path);
- sampled: one token through `SampledStep`, model and sampling in fixed shapes, replayed
  as a CUDA graph on a GPU.

Tokens come back to the host in groups. On a GPU the loop stays one group ahead: it queues
group j+1 before it waits for group j, whose copy to pinned memory was queued behind it,
so the GPU never waits for Python, yet a streaming reader sees each group as soon as it
is done.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator, Sequence

import torch

from ..kv_cache import KVCache
from .sampling import ContextWindow, GenerationError, NoiseSource, SamplingOptions, sample_next
from .static_decode import SampledStep

NOT_FINITE = ("the model's next-token scores are not finite numbers (inf or nan): "
              "its weights are broken, or it was trained into overflow; sample from an earlier checkpoint")


class DecodeLoop:
    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, prompt_ids: Sequence[int],
                 options: SamplingOptions, batch: int, static: bool, compile: bool = False):
        B, P, steps = batch, len(prompt_ids), options.max_new_tokens
        self.model, self.device, self.options, self.P, self.steps = model, device, options, P, steps
        self.ids = torch.empty(B, P + steps, dtype=torch.long, device=device)
        self.ids[:, :P] = torch.tensor(prompt_ids, dtype=torch.long, device=device)
        self.window = ContextWindow(model.config.block_size, options.window_slide(model.config.block_size))
        greedy = options.temperature == 0
        self.noise = None if greedy else NoiseSource(B, model.config.vocab_size, device, options.seed)
        self.sampling = (options.temperature, options.top_k, options.top_p)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # any step's logits not finite
        self.cache = self.step = None
        if options.use_kv_cache and getattr(model, "supports_kv_cache", False):
            self.cache = KVCache.for_model(model, B, device, dtype)
            if static:
                buffer = None if self.noise is None else self.noise.buffer
                self.step = SampledStep(model, self.cache, self.ids, buffer, self.sampling, self.bad,
                                        use_graph=device.type == "cuda", compile=compile)
        self.period = 1 if self.noise is None else self.noise.period

    def tokens(self, group: int) -> Iterator[list[int]]:
        """Each step's B new tokens, read back `group` steps at a time (the first step alone,
        for a prompt first token)."""
        reader = Reader(self.ids, self.bad, group) if self.device.type == "cuda" else None
        done = self.P
        for n in range(self.P, self.P + self.steps):
            self._advance(n)
            end = n + 1
            if end - done < group and end != self.P + self.steps and n != self.P:
                continue
            if reader is None:
                if bool(self.bad):
                    raise GenerationError(NOT_FINITE)
                yield from self.ids[:, done:end].t().tolist()
            else:
                yield from reader.queue(done, end, wait_for_all=n == self.P or end == self.P + self.steps)
            done = end

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
                self.step()
                return
            x = self.ids[:, n - 1 : n]  # the cache holds the rest of the window
        else:
            if self.cache is not None:
                self.cache.reset()
            x = self.ids[:, start:n]
        logits = self.model(x, cache=self.cache, last_only=True)[0][:, -1]
        noise = None if self.noise is None else self.noise.buffer[slot]
        self.bad.logical_or_(~logits.isfinite().all())
        self.ids[:, n : n + 1] = sample_next(logits, *self.sampling, noise)
        if self.step is not None:
            self.step.sync(n + 1, n - start, (slot + 1) % self.period)


class Reader:
    """Groups of tokens copied to pinned host memory behind the steps that make them, and
    handed out one group late, so that the device always has the next group queued."""

    def __init__(self, ids: torch.Tensor, bad: torch.Tensor, group: int):
        self.ids, self.bad = ids, bad
        self.pending: deque = deque()
        self.spare = [self._buffers(ids.size(0), group) for _ in range(2)]

    @staticmethod
    def _buffers(batch: int, group: int):
        return (torch.empty(group, batch, dtype=torch.long, pin_memory=True),
                torch.empty((), dtype=torch.bool, pin_memory=True))

    def queue(self, start: int, end: int, wait_for_all: bool) -> Iterator[list[int]]:
        tokens, bad = self.spare.pop() if self.spare else self._buffers(self.ids.size(0), end - start)
        tokens[: end - start].copy_(self.ids[:, start:end].t(), non_blocking=True)
        bad.copy_(self.bad, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((event, tokens, bad, end - start))
        while len(self.pending) > (0 if wait_for_all else 1):
            event, tokens, bad, count = self.pending.popleft()
            event.synchronize()
            if bool(bad):
                raise GenerationError(NOT_FINITE)
            rows = tokens[:count].tolist()
            self.spare.append((tokens, bad))
            yield from rows
