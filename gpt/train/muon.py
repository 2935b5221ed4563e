"""Muon with its Newton-Schulz iteration in a precision this device runs fast.

torch.optim.Muon orthogonalises every update in bf16. On a GPU that is the fast choice, and
for a run training in bf16 on a CPU with native bf16 products (AVX512-BF16 or AMX) too (a
`--dtype fp32` run stays in fp32 throughout): for the cpu-small model's 16
matrices the iteration takes 8.8 ms there against 14.9 ms in fp32, which made its whole
training step 8% faster (a 2-core AMD EPYC with AVX512-BF16, steps of each taking turns). On
a CPU without them (AVX2-only machines) bf16 products are emulated at a few GFLOP/s: the
iteration then cost 467 ms a step (the same EPYC with bf16 turned off,
ONEDNN_MAX_CPU_ISA=AVX2), more than ten training steps, against 17 ms in fp32, so there this
class runs it in fp32. Everything else, the parameter groups, the state (one momentum
buffer per matrix, as torch names it) and so the checkpoints, is torch's own.

Matrices of one shape are orthogonalised together, as one batch of products: a model's
layers repeat the same few shapes, and torch's loop over single matrices launched about 400
small kernels a step for a 6-layer model, which on a GPU took more time than its training
step (about 40 ms a step on an H200, where the step itself takes 10).
"""
from __future__ import annotations

import math

import torch

from ..device import native_bf16


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
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            if decay:
                torch._foreach_mul_(params, 1 - lr * decay)
            for shape, same in by_shape(params).items():
                ortho = orthogonalise(torch.stack([updates[i] for i in same]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], self.ns_dtype)
                # "original": a tall matrix's rate grows with sqrt(rows / columns)
                scale = -lr * math.sqrt(max(1.0, shape[0] / shape[1]))
                torch._foreach_add_([params[i] for i in same], list(ortho.to(params[same[0]].dtype).unbind(0)),
                                    alpha=scale)


def by_shape(params: list[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of the parameters of each shape, in order."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(tuple(p.shape), []).append(i)
    return groups


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration torch's Muon uses, on a batch of matrices
    (n, rows, columns): each made a matrix whose singular values are all near one (roughly),
    with its singular vectors."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # each spectral norm is then at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def newton_schulz_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The iteration's precision for a run training in `dtype`: bf16 on GPUs, as torch's,
    and on a CPU training in bf16 where bf16 is native; else fp32, so `--dtype fp32` keeps
    a CPU run in fp32."""
    if device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16 and native_bf16()):
        return torch.bfloat16
    return torch.float32
