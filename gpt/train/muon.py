"""Muon with its Newton-Schulz iteration in a precision this device runs fast.

torch.optim.Muon orthogonalises every update in bf16. On a GPU that is the fast choice; on a
CPU without native bf16 matrix products (AVX2-only machines) bf16 products run at a few
GFLOP/s, and the iteration then cost 467 ms a step for the cpu-small model's 16 matrices on
a 2-core AMD EPYC with bf16 turned off (ONEDNN_MAX_CPU_ISA=AVX2), more than ten training
steps. In fp32 it costs 17 ms there (13.5 ms in bf16 where bf16 is native), on every CPU, so
on CPUs this class runs it in fp32. Everything else, the parameter groups, the state (one
momentum buffer per matrix, as torch names it) and so the checkpoints, is torch's own.
"""
from __future__ import annotations

import math

import torch


class Muon(torch.optim.Muon):
    def __init__(self, params, ns_dtype: torch.dtype, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["adjust_lr_fn"] not in (None, "original"):
                raise ValueError(f"this Muon scales the rate the original way only, not {group['adjust_lr_fn']!r}")
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * decay)
                # "original": a tall matrix's rate grows with sqrt(rows / columns)
                p.add_(update.to(p.dtype), alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration torch's Muon uses: a matrix whose singular values
    are all near one (roughly), with g's singular vectors."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # the spectral norm is then at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32
