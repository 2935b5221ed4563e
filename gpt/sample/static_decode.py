"""The decode step with fixed shapes: replayed as a CUDA graph on GPUs, compiled on CPUs.

Decoding one token of a small model is about ninety tiny kernels; on a GPU each launch costs
more CPU time (7-18 us) than the kernel takes, so the GPU idles while Python launches.
The model's forward pass given a position *tensor* (`model(idx, cache=cache, pos=pos)`,
one token per sequence) has no shape or Python value that changes from token to token (the
KV cache is a fixed buffer, attention is masked to the positions filled so far), so its
kernels can be recorded once into a CUDA graph and replayed with one launch per token. On
a CPU the same shapes let Inductor compile the whole token (model, sampling, counters) once,
with the weights frozen in and the kernels called from C++ (`compiled_step`); run
eagerly, the step is what the tests compare against the uncached path, and the graph
replays exactly these operations.

`SampledStep` records more than the model: the step reads its input token from the ids
buffer, samples the next one from pre-drawn noise and writes it back, and moves its own
counters, so a whole token costs the host one replay and no read back. The cache write at
the position is idempotent (the same key and value at the same place), so the warm-up runs
before capture, whose counters are put back, change nothing. `prepare()` records the graph
ahead of the first token it is needed for, so that one-time work never stalls the stream.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..kv_cache import KVCache
from .compiled_step import CompiledStep
from .sampling import sample_next

WARMUP_STEPS = 2  # eager runs on a side stream before capture (lazy initialisations happen there)
# the attention kernels a recorded step may use (None: torch's own choice). Its shapes never
# change, so even cuDNN's, which plans each new shape once (about a second), plans only once
STEP_ATTENTION: list[SDPBackend] | None = None


def attention_backends(backends: list[SDPBackend] | None):
    return contextlib.nullcontext() if backends is None else sdpa_kernel(backends)


class Replay:
    """`fn()` run eagerly, or with `use_graph` recorded as a CUDA graph on its first call and
    replayed after. `restore()` is called after each warm-up run, so that a step with side
    effects (counters it moves) is recorded from the state it was called in."""

    def __init__(self, fn: Callable[[], torch.Tensor | None], use_graph: bool,
                 restore: Callable[[], None] = lambda: None):
        self.fn, self.use_graph, self.restore = fn, use_graph, restore
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor | None:
        if not self.use_graph:
            return self.fn()
        self.record()
        self.graph.replay()
        return self.out

    def record(self) -> None:
        if self.graph is not None:
            return
        with attention_backends(STEP_ATTENTION):  # chosen while tracing and capturing: the graph keeps the choice
            self._record()

    def _record(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.fn()
                self.restore()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records, runs nothing
            self.out = self.fn()


class SampledStep(nn.Module):
    """One whole token on the device: the input is ids[:, n-1] at window position `pos`, the
    sample is drawn with noise[slot] and written to ids[:, n], then n, pos and slot move on.
    The host keeps the same counters; `sync(n, pos, slot)` sets the device's after a step
    the host ran itself (a prompt or a moved window, filled eagerly). `scores` (see
    DecodeLoop) gathers every step's logits, to say afterwards whether any was not finite.

    It is a module that owns the model so that, compiled on a CPU, Inductor's freezing sees
    the weights as the step's own parameters: it folds them in as constants and packs them
    once for the CPU's matrix kernels. The buffers it moves are `forward`'s arguments, not
    its attributes (see `compiled_step`)."""

    def __init__(self, model: torch.nn.Module, cache: KVCache, ids: torch.Tensor, noise: torch.Tensor | None,
                 sampling: tuple, scores: torch.Tensor, use_graph: bool, compile: bool = False):
        super().__init__()
        self.model, self.cache, self.ids, self.noise = model, cache, ids, noise
        self.sampling, self.scores = sampling, scores
        # the counters in one tensor, so that one kernel moves them all: n - 1, n, pos, slot
        self.counters = torch.zeros(4, dtype=torch.long, device=ids.device)
        self.period = 1 if noise is None else noise.size(0)
        self._saved: list[torch.Tensor] = []
        # compiled, the step's element-wise kernels (norms, the activation, the sampling
        # arithmetic) fuse, after tens of seconds of compiling; with this step, already
        # written for few kernels, an H200 ran the compiled one no faster (99 kernels against
        # 91), so there it is an option, not the default (on a CPU see Generator)
        step = CompiledStep(self, ids.device) if compile else self.forward
        state = (self.counters, self.ids, self.scores, self.noise, self.cache)
        self.replay = Replay(lambda: step(*state), use_graph and ids.device.type == "cuda", self._restore)

    def sync(self, n: int, pos: int, slot: int) -> None:
        self.counters.copy_(torch.tensor([n - 1, n, pos, slot]), non_blocking=True)

    def prepare(self) -> None:
        """Record the graph now (a GPU's one-time work: warm-up runs, kernel loading, the
        capture), with the state as it is and put back after, so no token waits for it."""
        if self.replay.use_graph and self.replay.graph is None:
            self._saved = [t.clone() for t in (self.counters, self.scores)]
            self.replay.record()

    def advance(self) -> None:
        """Decode one token."""
        self.prepare()
        self.replay()
        self.cache.length += 1  # the host's mirror of pos + 1

    def _restore(self) -> None:
        for t, saved in zip((self.counters, self.scores), self._saved):
            t.copy_(saved)

    def forward(self, counters: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor, noise: torch.Tensor | None,
                cache: KVCache) -> None:
        last, n, pos, slot = counters[0:1], counters[1:2], counters[2], counters[3:4]
        tokens = ids.index_select(1, last)  # (B, 1)
        logits = self.model(tokens, cache=cache, pos=pos)[0][:, 0]  # (B, V)
        drawn = None if noise is None else noise.index_select(0, slot)[0]
        scores.add_(logits.sum(dtype=torch.float32))
        ids.index_copy_(1, n, sample_next(logits, *self.sampling, drawn))
        counters.add_(1)
        slot.remainder_(self.period)
