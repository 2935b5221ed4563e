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

import torch
import torch.nn as nn
import torch.nn.functional as F


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight, layer.bias)
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
    if isinstance(layer, nn.Linear) and layer.bias is None and x.dtype == residual.dtype:
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
