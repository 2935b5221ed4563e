"""Several LoRA adapters of one base model, served at once: each sequence picks its own.

`gpt-serve BASE --lora NAME=RUN ...` loads each LoRA run's adapters without merging them (a
merge makes one whole model per adapter). Every linear layer that some adapter targets
becomes an `AdapterBank`: the base layer plus every adapter's matrices stacked, number 0
being no adapter (zeros). A sequence of adapter k gets, in each such layer, the base's
product plus its own low-rank update (x A_k^T) B_k^T, the adapter's scale folded into A_k.
Requests for different adapters share one decode step: the bank gathers each row's
matrices and multiplies row by row (`torch.bmm`), so the step keeps its fixed shape and a
row's numbers do not depend on which adapters its neighbours use.

Which adapter each batch row uses is set around each model call (`using`), in a variable of
the calling thread rather than an argument of the model's forward: the engine's steps and a
beam search run on different threads at the same time, each with its own rows. Adapters of
different ranks are padded with zeros to the largest rank, and a layer an adapter does not
target gets zeros for it: an exact zero added changes nothing.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from plumbing.errors import UserError

from ..layers import linear
from ..store.checkpoint import CheckpointError, load_checkpoint
from ..store.load import file_sha256
from ..store.runs import resolve_checkpoint

_chosen = threading.local()


class AdapterError(UserError):
    pass


@contextmanager
def using(adapters: int | torch.Tensor | None):
    """Model calls in this block (on this thread) use adapter `adapters` for every row (an
    int), adapter adapters[b] for batch row b (a (B,) tensor), or none (None, or 0)."""
    previous = getattr(_chosen, "adapters", None)
    _chosen.adapters = adapters
    try:
        yield
    finally:
        _chosen.adapters = previous


class AdapterBank(nn.Module):
    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor):
        """a: (K, r, in), each adapter's A times its scale; b: (K, out, r); adapter 0 all zeros."""
        super().__init__()
        self.base = base
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(self.base, x)
        chosen = getattr(_chosen, "adapters", None)
        if chosen is None or (isinstance(chosen, int) and chosen == 0):
            return out
        shape = out.shape
        x, out = x.reshape(-1, x.shape[-1]), out.reshape(-1, shape[-1])  # rows (N, C), batch-major
        if isinstance(chosen, int):  # one adapter for all rows: two plain products
            low = x @ self.a[chosen].t()
            return torch.addmm(out, low, self.b[chosen].t()).view(shape)
        rows = chosen.repeat_interleave(x.shape[0] // chosen.numel())  # each row's adapter (N,)
        low = torch.bmm(x.unsqueeze(1), self.a[rows].transpose(1, 2))  # (N, 1, r)
        return torch.baddbmm(out.unsqueeze(1), low, self.b[rows].transpose(1, 2)).view(shape)


def install(model: nn.Module, adapters: list[tuple[dict, dict[str, torch.Tensor]]], dtype: torch.dtype,
            device: torch.device) -> None:
    """Put adapters 1..K into `model` (in place), in the model's compute dtype: each is (its
    LoRA spec, its weights by name, as a LoRA run's checkpoint holds them)."""
    rank = max(spec["rank"] for spec, _ in adapters)
    layers = sorted({name.rsplit(".", 1)[0] for _, weights in adapters for name in weights})
    modules = dict(model.named_modules())
    for path in layers:
        base = modules.get(path)
        if base is None or not hasattr(base, "in_features"):
            raise AdapterError(f"the adapters name a layer the served model does not have: {path}")
        a = torch.zeros(len(adapters) + 1, rank, base.in_features, dtype=dtype, device=device)
        b = torch.zeros(len(adapters) + 1, base.out_features, rank, dtype=dtype, device=device)
        for k, (spec, weights) in enumerate(adapters, start=1):
            if f"{path}.lora_a" in weights:
                r = spec["rank"]
                a[k, :r] = weights[f"{path}.lora_a"].to(device, dtype) * (spec["alpha"] / r)
                b[k, :, :r] = weights[f"{path}.lora_b"].to(device, dtype)
        parent, _, attr = path.rpartition(".")
        setattr(modules[parent] if parent else model, attr, AdapterBank(base, a, b))


def load_adapters(model: nn.Module, served: Path, runs: list[tuple[str, str]], dtype: torch.dtype,
                  device: torch.device) -> list[str]:
    """Install the LoRA runs `runs` ([(name, run)]) into the model read from the file
    `served`: each must have been trained on exactly that file (by SHA-256). Their names, in
    order (adapter k is names[k - 1])."""
    digest = file_sha256(served)
    adapters = []
    for name, run in runs:
        try:
            ckpt = resolve_checkpoint(run)
            state = load_checkpoint(ckpt)
        except CheckpointError as e:
            raise AdapterError(f"--lora {name}={run}: {e}") from None
        spec = state.get("lora")
        if not spec:
            raise AdapterError(f"--lora {name}={run}: {ckpt} holds a whole model, not LoRA adapters")
        if spec["base"]["sha256"] != digest:
            raise AdapterError(f"--lora {name}={run}: its adapters were trained on {spec['base']['path']}, "
                               f"not on the model served ({served})")
        adapters.append((spec, state["model"]))
    install(model, adapters, dtype, device)
    return [name for name, _ in runs]
