"""Weight-only int8 quantization of a GPT's linear layers, for sampling.

Decoding one token reads every weight once, so on a CPU its time is mostly the time to
stream the weights from memory: 42.5 MB in fp32 for the baby model (6 x 384), about 11 MB
in int8. Each linear layer's weight W (out, in) becomes int8 values q and one scale per
output row, s = max|W_row| / 127, with W ~= q * s (symmetric, per channel: a row's scale
follows its own largest weight, so small rows keep their resolution).

The product is PyTorch's own weight-only int8 kernel, `torch._weight_int8pack_mm`, fed
bf16 activations: on a 2-core AMD EPYC it computes the baby model's 25 matrix-vector
products in about a tenth of fp32's time (0.41 against 4.10 ms), where the same kernel with fp32 or fp16
activations, dynamic quantization (`torch.ao.quantization.quantize_dynamic`, which also
quantizes activations per call) and bf16 weights were all slower (README, "Small and
fast"). Activations are cast to bf16 only for the product; everything else (layer norms,
attention, the residual stream, the KV cache) keeps the model's dtype.

The token embedding (`wte`) keeps its float weights: the output head that shares them is
quantized separately, as a copy, so lookups stay exact.
"""
from __future__ import annotations

import functools
import platform

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing.errors import UserError, first_line

from .device import native_bf16

QUANTIZE_MODES = ("int8",)
COMPUTE_DTYPE = torch.bfloat16  # the activations' dtype inside the product (see the docstring)


# rows from which a CPU with native bf16 multiplies by the int8 values as bf16 (see forward):
# at 16 rows the kernel was still faster, at 64 the product
WIDE_ROWS = 32
# the int8 kernel's rows are read KERNEL_K values at a time: with another input width (a
# model whose heads gpt-prune cut to 24 channels) torch 2.13's CPU kernel returned wrong
# sums for one row and crashed the process for more (2-core Intel Xeon, 2026-12-05)
KERNEL_K = 16


@functools.cache
def bf16_products(device: torch.device) -> bool:
    """Whether wide products go through bf16 on `device`: a CPU's that computes bf16 natively
    (elsewhere bf16 products are emulated, far slower than the int8 kernel)."""
    return device.type == "cpu" and native_bf16()


class QuantizeError(UserError):
    """A quantization mode this machine or this torch build cannot run."""


def int8_kernel():
    """torch's weight-only int8 product, or None in a build without it."""
    return getattr(torch, "_weight_int8pack_mm", None)


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and one scale per output channel.

    It has no float `.weight`: the model calls `forward` (see `gpt.layers.linear`)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())  # (out, in) int8
        self.register_buffer("scales", scales.to(COMPUTE_DTYPE).contiguous())  # (out,)
        self.register_buffer("bias", bias)  # (out,) in the model's dtype, or None
        self.fits_kernel = self.in_features % KERNEL_K == 0

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Int8Linear":
        qweight, scales = quantize_rows(layer.weight.detach())
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(qweight, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:  # forward()'s (B, T, C): the kernel takes rows of activations
            return self.forward(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)
        if not self.fits_kernel or (x.size(0) >= WIDE_ROWS and bf16_products(x.device)):
            # the kernel passes over the weights once per row, about 8 us a row for the baby
            # model's MLP on a 2-core Intel Xeon, so a prompt or a moved window (192 rows) took
            # 1.6 ms a layer; the int8 values as bf16 (exact) in one product, scaled after,
            # took 0.3-0.4 ms. A CPU without native bf16 takes this way in fp32
            dtype = COMPUTE_DTYPE if x.device.type != "cpu" or bf16_products(x.device) else torch.float32
            y = F.linear(x.to(dtype), self.qweight.to(dtype)).mul_(self.scales).to(x.dtype)
        else:
            # decoding calls this 25 times per token with one row: as few operations as possible
            y = torch._weight_int8pack_mm(x.to(COMPUTE_DTYPE).contiguous(), self.qweight, self.scales).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _apply(self, fn, recurse=True):
        # model.to(dtype) casts every float buffer; the kernel needs its scales in bf16
        super()._apply(fn, recurse)
        self.scales = self.scales.to(COMPUTE_DTYPE)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, "
                f"bias={self.bias is not None}")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values (out, in) and per-row bf16 scales with weight ~= q * scale. The scales are
    rounded to bf16 first and q computed against the rounded scale, so the kernel's bf16
    scales add no error of their own (a row's largest value may then clamp at 127, an error
    of at most 0.4% of that one value)."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(COMPUTE_DTYPE)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def check_supported(mode: str, device: torch.device) -> None:
    """Raise QuantizeError, naming what is missing, unless `mode` runs on `device` here."""
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"unknown quantization {mode!r} (use {', '.join(QUANTIZE_MODES)}, "
                            "or leave it out to sample in fp32)")
    kernel = int8_kernel()
    if kernel is None:
        raise QuantizeError(f"--quantize {mode} needs torch._weight_int8pack_mm, which torch {torch.__version__} lacks "
                            "(upgrade torch, or leave out --quantize: fp32 works)")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if device.type == "cpu" and x86 and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        # without AVX2 torch runs the kernel's scalar fallback, several times slower than fp32
        raise QuantizeError(f"--quantize {mode} needs a CPU with AVX2 or AVX-512, and torch finds neither here "
                            "(leave out --quantize: fp32 works)")
    try:
        x = torch.ones(1, 32, dtype=COMPUTE_DTYPE, device=device)
        kernel(x, torch.ones(8, 32, dtype=torch.int8, device=device), torch.ones(8, dtype=COMPUTE_DTYPE, device=device))
    except (RuntimeError, NotImplementedError) as e:
        raise QuantizeError(f"--quantize {mode} does not run on {device} with torch {torch.__version__} "
                            f"({first_line(e)}); leave out --quantize: fp32 works") from None


def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Replace every nn.Linear of `model` by its int8 form, in place; returns the model.
    Quantize after casting the model to its sampling dtype (`Generator` does)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        kind = getattr(model.config, 'kind', 'model')
        raise QuantizeError(f"this {kind} model has no linear layers to quantize (leave out --quantize)")
    for name, layer in linears:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, Int8Linear.from_linear(layer))
    return model

