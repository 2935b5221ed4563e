"""The model's layers called in their functional forms, on rows of activations (N, C).

Decoding one token on a CPU is dominated not by arithmetic but by what surrounds each
operation: on a 2-core CPU a third of a one-position forward pass once went to reshaping
and per-call overhead. So the model calls `F.linear` and `F.layer_norm` on its layers'
weights rather than the layers themselves (hooks registered on submodules therefore never
run; hooks on the model itself do), and folds each residual add into its product
(`linear_residual`). The same calls serve training (a CPU training step measured the same,
within 2%).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import cpuinfo


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return onednn_linear(layer, x) if on_onednn(x) else F.linear(x, layer.weight, layer.bias)
    # a layer with no float weight (gpt.quantize.Int8Linear, gpt.lora.LoRALinear) computes
    # its own product: dispatching here keeps quantization and adapters out of the model
    return layer.forward(x)


def linear_residual(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """residual + dropout(layer(x)), x (N, C_in) and residual (N, C): a linear layer without
    bias adds the residual inside its product (one kernel, not two, per sub-layer and token).
    Only where x has the residual's dtype: under autocast x is a bf16 product while the
    residual stream is fp32, which addmm would cast down; the plain sum keeps it fp32."""
    if dropout:
        return residual + F.dropout(linear(layer, x), dropout)
    if isinstance(layer, nn.Linear):
        if on_onednn(x):  # decided once here, not again in linear()
            return residual + onednn_linear(layer, x)
        if layer.bias is None and x.dtype == residual.dtype:
            return torch.addmm(residual, x, layer.weight.t())
    return residual + linear(layer, x)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def rms_norm(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` with the gain in x's dtype: under autocast x is bf16 while the gain stays
    fp32, and torch would then fall back from its fused kernel, with a warning."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): |logits| < cap, nearly unchanged well below it. In fp32,
    since bf16 has few bits left where tanh flattens out."""
    return cap * torch.tanh(logits.float() / cap)


# On a CPU not made by Intel, an fp32 product with nothing to differentiate goes through
# oneDNN rather than MKL (torch's fp32 matrix library), which on such a CPU multiplies a row by
# a matrix at about 11 GB/s whatever its threads or instruction settings. On a 2-core AMD
# EPYC (2026-12-05), the baby model's 25 products took 3.7 ms a token through MKL and 2.0 ms
# through oneDNN (1.2-2.5x for 1 to 32 rows, 1.2-1.5x for the 64 to 256 rows of a prompt or a
# moved window), and eager fp32 sampling went from 166-182 to 222-252 tokens/s with the same
# text. On an Intel Xeon, MKL's was the faster (29 against 19-24 GB/s for one row).
def on_onednn(x: torch.Tensor) -> bool:
    """Whether the product of `x`'s rows goes through oneDNN (see above): not traced by
    torch.compile (whose own kernels replace both), a CPU on which it pays, oneDNN not switched
    off (`torch.backends.mkldnn.enabled`), fp32 on a CPU, nothing to differentiate, and no
    autocast (which would make it a bf16 product)."""
    # torch.compile's check first: traced, the rest is never looked at (a cached function
    # would break the trace); then the machine's, so that an Intel CPU answers at once
    return (not torch.compiler.is_compiling() and onednn_products() and torch.backends.mkldnn.enabled
            and x.is_cpu and x.dtype == torch.float32 and x.dim() == 2
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))


def onednn_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # oneDNN reads a bias as if contiguous, whatever its strides
    bias = None if layer.bias is None else layer.bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, bias, "none", [], "")


@functools.cache
def onednn_products() -> bool:
    """A CPU whose vendor is not Intel (read from /proc/cpuinfo, so Linux only), in a torch
    build whose oneDNN runs the product and agrees with F.linear."""
    if cpu_vendor() in ("", "GenuineIntel") or not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values, not random ones: drawing here would move the seeded generator. On the
        # CPU in fp32 whatever the defaults of the moment (a planner's meta device, say)
        cpu = dict(device="cpu", dtype=torch.float32)
        x, w = torch.linspace(-1, 1, 16, **cpu).view(1, 16), torch.linspace(-2, 2, 128, **cpu).cos().view(8, 16)
        b = torch.ones(8, **cpu)
        with torch.no_grad():
            y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            return torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):  # an op this build lacks or refuses
        return False


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor as Linux names it (GenuineIntel, AuthenticAMD...), or "" elsewhere."""
    return cpuinfo("vendor_id")
