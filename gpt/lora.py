"""Low-rank adapters (LoRA): fine-tune a few small matrices while the base model stays frozen.

A chosen linear layer W (out x in) becomes W x + (alpha / r) * B (A x), with A (r x in)
random and B (out x r) zero at the start, so training begins exactly at the base model.
Only A and B are trained and saved: a checkpoint of the adapters is a few hundred KB where
the model is tens of MB, and names its base checkpoint by path and SHA-256.

Written here rather than taken from the `peft` library: peft pulls in `transformers` and
`accelerate` (hundreds of MB) for what is, on this model, one small module and three
functions, and its wrappers would not reach the decode path, which calls the functional
form of each layer (`F.linear(x, layer.weight)`). For sampling, evaluation and export the
adapters are merged into the weights once (`merge`), so every inference path runs unchanged
and at full speed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing.errors import UserError

from .store.checkpoint import plain_name

TARGETS = ("qkv", "proj", "fc")  # attention's fused projection, the two output projections, the MLP's input


class LoRAError(UserError):
    pass


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        low = F.linear(x, self.lora_a) * self.scale  # (..., rank): the scale is applied on the small side
        # out + low B^T as one product writing one full-size tensor: the update and the sum as
        # separate tensors left the CPU allocator holding several per layer, and a LoRA run
        # peaked above a full fine-tuning run in memory
        return torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]),
                           self.lora_b.t()).view(out.shape)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def parse_targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if not names:
        raise LoRAError(f"--lora-targets {text!r} names no layer (choose from {', '.join(TARGETS)})")
    if unknown:
        raise LoRAError(f"--lora-targets {text!r}: {', '.join(unknown)} matches no layer "
                        f"(choose from {', '.join(TARGETS)})")
    return names


def apply(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...], new: bool = False) -> int:
    """Freeze the model and wrap every linear layer whose attribute name is in `targets`;
    returns the number of trainable parameters. `new`: a run that starts, whose rank is
    checked against the matrices (a saved run loads with the rank it has)."""
    if rank < 1:
        raise LoRAError(f"--lora must be a rank of at least 1, got {rank}")
    found = [(module, name, child) for module in model.modules() for name, child in module.named_children()
             if name in targets and isinstance(child, nn.Linear)]
    if not found:
        raise LoRAError(f"--lora-targets {','.join(targets)} matches no linear layer of this model")
    full = max(min(child.in_features, child.out_features) for _, _, child in found)
    if new and rank > full:  # adapters past a matrix's own rank only add weights
        raise LoRAError(f"--lora {rank} is more than the rank of any matrix it adapts ({full} at most here, which "
                        f"is already a full update); give at most {full}")
    for p in model.parameters():
        p.requires_grad_(False)
    for module, name, child in found:
        setattr(module, name, LoRALinear(child, rank, alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only (what a LoRA checkpoint holds)."""
    return {plain_name(k): v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = {k for k in model.state_dict() if ".lora_" in k}
    if set(state) != own:
        raise LoRAError(f"the checkpoint's adapters do not fit this model ({len(set(state) ^ own)} names differ)")
    model.load_state_dict(state, strict=False)


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight and unwrap it: a plain model again."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model
