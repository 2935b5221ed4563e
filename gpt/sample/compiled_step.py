"""The fixed-shape decode step (`SampledStep`) compiled, and on a CPU called without Dynamo.

On a CPU, Inductor compiles the whole token (model, sampling, counters) into one C++ graph,
with the weights frozen in as constants and packed for the CPU's matrix kernels
(`CPU_COMPILE_OPTIONS`). Called through `torch.compile`, every token then also passes
Dynamo's guard checks and its wrappers: on a 2-core Intel Xeon (2026-12-05) that was 0.19 ms
of the baby model's 0.82 ms int8 token, and of its 1.38 ms fp32 token. The step's inputs
never change between tokens (the same few buffers, moved in place), which is what the guards
check; so the graph Inductor compiled is kept, with where each of its inputs sits among the
step's buffers (`state_tensors`), and each later token calls it with those buffers directly.
A later decode loop of the same model whose buffers and sampling match what a kept graph
was compiled for (`signature`), its weights unchanged since (`Weights`), calls that graph
directly from its first token.

Freezing needs Inductor's `freezing` flag while Dynamo traces, not only while Inductor
compiles (Dynamo then hands the weights over as constants), and the step's changing buffers
as arguments rather than as its attributes: as attributes, torch 2.13 paired the frozen
weights with the wrong inputs and the compile failed.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import warnings
import weakref
from typing import Callable

import torch
from torch import nn

from plumbing.errors import first_line

# How a CPU's step is compiled. freezing: the weights become constants, packed once for the
# CPU's matrix kernels; cpp_wrapper: the kernels are called from C++, not from Python, so a
# token pays no interpreter time between them; max_autotune: each product is timed against
# Inductor's own generated kernels (weight-only int8 among them) and the fastest kept. On a
# 2-core Intel Xeon (AVX-512, 2026-12-05), called directly, the baby model's step took 1.17
# ms in fp32 and 0.67 ms in int8 with max_autotune, 1.24 and 0.74 ms without, which
# compiled in a third of the time (11 and 20 s against 38 and 51 s, Inductor's cache cold).
# No autotuning tables are printed to the user's terminal
CPU_COMPILE_OPTIONS = {"freezing": True, "cpp_wrapper": True, "max_autotune": True,
                       "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}

# a model's compiled steps: the weights they froze in (`Weights`), and by what each step was
# compiled for (`signature`), its Inductor graph and for each of the graph's inputs its index
# in `state_tensors`. Kept while the model lives, and until its weights change
COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple["Weights", dict]] = weakref.WeakKeyDictionary()


def state_tensors(state: tuple) -> list[torch.Tensor]:
    """The tensors a step reads and moves: its `forward`'s arguments, the cache's unpacked."""
    counters, ids, scores, noise, cache = state
    candidates = (counters, ids, scores, noise, cache.kv, *cache.layers, cache.positions, cache.open, cache.shut)
    return [t for t in candidates if t is not None]


def signature(step: nn.Module, tensors: list[torch.Tensor]) -> tuple:
    """What a compiled graph holds fixed besides the weights, as Dynamo's guards would check
    it: the sampling settings, the buffers' layouts (views of one cache keep their offsets
    into it), each module's training flag, and the global state the kernels were compiled
    under (threads, autocast, grad and inference modes, the default dtype). Other plain
    Python attributes of the model are taken as fixed once it samples."""
    cpu_autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    return (step.sampling, step.period, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            torch.get_num_threads(), cpu_autocast, torch.get_default_dtype(),
            tuple(m.training for m in step.model.modules()),
            tuple((t.shape, t.stride(), t.storage_offset(), t.dtype, t.device) for t in tensors))


class Weights:
    """Which weights a graph froze in: each of the model's tensors (held weakly), and how often
    it had been changed in place (its version: a copy into it, an optimizer's step), so that
    a model changed after its step compiled (trained on, loaded into, quantized) compiles
    again. A change through `.data` moves no version and is not seen."""

    def __init__(self, model: nn.Module):
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        self.refs = [weakref.ref(t) for t in tensors]
        self.versions = [t._version for t in tensors]

    def match(self, model: nn.Module) -> bool:
        tensors = list(itertools.chain(model.parameters(), model.buffers()))
        return len(tensors) == len(self.refs) and all(
            ref() is t and t._version == v for ref, t, v in zip(self.refs, tensors, self.versions))


class Inductor:
    """Inductor with `CPU_COMPILE_OPTIONS`, as a `torch.compile` backend that keeps the graphs
    it compiled, with their inputs, until `CompiledStep.keep` takes them. Dynamo keeps the
    backend as long as its compiled frame: it holds no step, so it keeps no model alive."""

    def __init__(self):
        self.graphs: list[tuple[Callable, list[torch.Tensor]]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        graph = compile_fx(gm, example_inputs, config_patches=CPU_COMPILE_OPTIONS)
        self.graphs.append((graph, list(example_inputs)))
        return graph


class CompiledStep:
    """`step` compiled on its first call, then called as described in the module docstring;
    on a GPU through `torch.compile` alone (its CUDA graph replays the whole token anyway).
    Where compiling fails (no C++ compiler for a CPU, an operation the compiler does not
    take), a warning and `step` as it is, as training does. A failed compile runs nothing,
    so the step's counters have not moved."""

    def __init__(self, step: nn.Module, device: torch.device):
        self.step, self.cpu = step, device.type == "cpu"
        self.inductor = Inductor()
        self.compiled = (torch.compile(step, dynamic=False, fullgraph=True, backend=self.inductor) if self.cpu
                         else torch.compile(step, dynamic=False))
        self.direct: Callable[[], object] | None = None
        self.ran_compiled = False

    def __call__(self, *state) -> None:
        if self.direct is not None:
            return self.direct()
        if self.compiled is None:
            return self.step(*state)
        if self.ran_compiled:  # nothing was kept (a GPU, or a graph keep() refused): torch.compile's way
            return self.compiled(*state)
        tensors = state_tensors(state) if self.cpu else []
        if self.cpu and self.bind(tensors):
            return self.direct()
        import torch._inductor.config as inductor_config

        try:
            with quiet_compiling(), inductor_config.patch(freezing=True) if self.cpu else contextlib.nullcontext():
                self.compiled(*state)
        except Exception as e:
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); sampling without it")
            self.compiled = None
            return self.step(*state)
        self.ran_compiled = True
        if self.cpu:
            self.keep(tensors)

    def keep(self, tensors: list[torch.Tensor]) -> None:
        """Keep the graph Inductor compiled for `tensors`, if it was one graph whose inputs
        are all among them (else later tokens go on through `torch.compile`). Dynamo's own
        cache of the step's frame is then cleared: each decode loop that compiles adds an
        entry to it (its backend is new), and past Dynamo's limit of 8 entries compiling
        would fail. (Dynamo's other records of the trace still hold its graph, and with it
        the weights it froze, until `torch._dynamo.reset()`: a process that compiles many
        models keeps a copy of each one's weights.)"""
        compiled, self.inductor.graphs = self.inductor.graphs, []
        if len(compiled) != 1:
            return
        graph, inputs = compiled[0]
        where = {id(t): i for i, t in enumerate(tensors)}
        if not all(id(t) in where for t in inputs):
            return
        model = self.step.model
        frozen, kept = COMPILED.get(model, (None, {}))
        if frozen is None or not frozen.match(model):
            frozen, kept = Weights(model), {}  # the graphs of older weights are dropped
        kept[signature(self.step, tensors)] = (graph, [where[id(t)] for t in inputs])
        COMPILED[model] = (frozen, kept)
        import torch._dynamo

        torch._dynamo.reset_code(type(self.step).forward.__code__)
        self.bind(tensors)

    def bind(self, tensors: list[torch.Tensor]) -> bool:
        """Whether a graph was kept for this model, as its weights are now, and these buffers:
        then `direct` calls it."""
        model = self.step.model
        frozen, kept = COMPILED.get(model, (None, {}))
        found = kept.get(signature(self.step, tensors)) if frozen is not None and frozen.match(model) else None
        if found is None:
            return False
        graph, picks = found
        inputs = [tensors[i] for i in picks]
        self.direct = lambda: graph(*inputs)
        return True


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
