"""The decode step with fixed shapes: replayed as a CUDA graph on GPUs, compiled on CPUs.

Decoding one token of a small model is about ninety tiny kernels; on a GPU each launch costs
more CPU time (7-18 us) than the kernel takes, so the GPU idles while Python launches.
The model's forward pass given a position *tensor* (`model(idx, cache=cache, pos=pos)`,
one token per sequence) has no shape or Python value that changes from token to token (the
KV cache is a fixed buffer, attention is masked to the positions filled so far), so its
kernels can be recorded once into a CUDA graph and replayed with one launch per token. On
a CPU the same shapes let Inductor compile the whole token (model, sampling, counters) once,
with the weights frozen in and the kernels called from C++ (`CPU_COMPILE_OPTIONS`); run
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
import logging
import warnings
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from plumbing.errors import first_line

from ..kv_cache import KVCache
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
    once for the CPU's matrix kernels (see `compiled_or_eager`)."""

    def __init__(self, model: torch.nn.Module, cache: KVCache, ids: torch.Tensor, noise: torch.Tensor | None,
                 sampling: tuple, scores: torch.Tensor, use_graph: bool, compile: bool = False):
        super().__init__()
        self.model, self.cache, self.ids, self.noise = model, cache, ids, noise
        self.sampling, self.scores = sampling, scores
        # the counters in one tensor, so that one kernel moves them all: n - 1, n, pos, slot
        self.counters = torch.zeros(4, dtype=torch.long, device=ids.device)
        self.last, self.n = self.counters[0:1], self.counters[1:2]
        self.pos, self.slot = self.counters[2], self.counters[3:4]
        self.period = 1 if noise is None else noise.size(0)
        self._saved: list[torch.Tensor] = []
        # compiled, the step's element-wise kernels (norms, the activation, the sampling
        # arithmetic) fuse, after tens of seconds of compiling; with this step, already
        # written for few kernels, an H200 ran the compiled one no faster (99 kernels against
        # 91), so there it is an option, not the default (on a CPU see Generator)
        step = compiled_or_eager(self, ids.device) if compile else self.forward
        self.replay = Replay(step, use_graph and ids.device.type == "cuda", self._restore)

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

    def forward(self) -> None:
        tokens = self.ids.index_select(1, self.last)  # (B, 1)
        logits = self.model(tokens, cache=self.cache, pos=self.pos)[0][:, 0]  # (B, V)
        noise = None if self.noise is None else self.noise.index_select(0, self.slot)[0]
        self.scores.add_(logits.sum(dtype=torch.float32))
        self.ids.index_copy_(1, self.n, sample_next(logits, *self.sampling, noise))
        self.counters.add_(1)
        self.slot.remainder_(self.period)


# How a CPU's step is compiled. freezing: the weights become constants, packed once for the
# CPU's matrix kernels; cpp_wrapper: the kernels are called from C++, not from Python, so a
# token pays no interpreter time between them; max_autotune: each product is timed against
# Inductor's own generated kernels (weight-only int8 among them) and the fastest kept. On a
# 2-core Intel Xeon (AVX-512, 2026-12-04) the baby model's step then took 1.73 ms in fp32
# and 1.02 ms in int8, against 3.55 and 2.67 ms eagerly; without max_autotune 1.22 ms in
# int8, with half the compile time. No autotuning tables are printed to the user's terminal
CPU_COMPILE_OPTIONS = {"freezing": True, "cpp_wrapper": True, "max_autotune": True,
                       "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def compiled_or_eager(step: nn.Module, device: torch.device) -> Callable[[], None]:
    """`step` compiled on its first call; where compiling fails (no C++ compiler for a CPU, an
    operation the compiler does not take), a warning and `step` as it is, as training does.
    A failed compile runs nothing, so the step's counters have not moved."""
    options = CPU_COMPILE_OPTIONS if device.type == "cpu" else None
    chosen = [torch.compile(step, dynamic=False, options=options)]
    compiled = [False]

    def run():
        try:
            if compiled[0]:
                return chosen[0]()
            with quiet_compiling():
                out = chosen[0]()
            compiled[0] = True
            return out
        except Exception as e:
            if chosen[0] is step.forward:
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); sampling without it")
            chosen[0] = step.forward
            return step.forward()

    return run


# torch's loggers that speak while a step compiles: a CPU-only machine with torch's CUDA
# build is told, at every compile, that no CUDA runtime was found
COMPILE_LOGGERS = ("torch.utils.cpp_extension",)


@contextlib.contextmanager
def quiet_compiling():
    """Compiling raises torch's own deprecation warnings and log lines, which nobody sampling
    can act on: neither reaches the user's terminal while it runs."""
    loggers = [logging.getLogger(name) for name in COMPILE_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
