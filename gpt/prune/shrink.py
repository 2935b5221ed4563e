"""The smaller model: which layers, heads and channels stay, and their weights copied into
a model of the smaller shape.

Every layer keeps the same number of heads and of MLP channels, the ones that score highest
in it, so the model keeps one shape for all its layers (two numbers in its config:
`head_dim` and `mlp_width`), which every command, the KV cache, the CUDA-graph decode step,
int8 and export handle as they handle any model. A global ranking could keep more heads in
one layer than in another, for a config and a cache that differ layer by layer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..config import ModelConfig
from ..model import GPT, build_model


@dataclass(frozen=True)
class Kept:
    """What stays, in the original numbering: layers, and per kept layer its heads and MLP
    channels (in their original order)."""

    layers: list[int]
    heads: list[list[int]]
    channels: list[list[int]]

    def config(self, cfg: ModelConfig) -> ModelConfig:
        """The smaller shape; a width left as it was is written as the usual shape (0)."""
        heads, channels = len(self.heads[0]), len(self.channels[0])
        return replace(cfg, n_layer=len(self.layers), n_head=heads,
                       head_dim=0 if heads * cfg.head_size == cfg.n_embd else cfg.head_size,
                       mlp_width=0 if channels == 4 * cfg.n_embd else channels)


def how_many_removed(fraction: float, total: int) -> int:
    """round(fraction x total), halves rounded up: --heads 0.5 of 3 heads removes 2."""
    return int(fraction * total + 0.5)


def top(scores: torch.Tensor, keep: int) -> list[int]:
    """The indices of the `keep` highest scores, in their original order (ties: the earlier)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def shrink(model: GPT, kept: Kept) -> GPT:
    """A new model of the smaller shape holding the kept weights, exactly as they were."""
    cfg = model.config
    hs = cfg.head_size
    old = model.state_dict()
    new = {k: v for k, v in old.items() if not k.startswith("blocks.")}
    for j, (i, heads, channels) in enumerate(zip(kept.layers, kept.heads, kept.channels)):
        h, c = torch.tensor(heads), torch.tensor(channels)
        prefix = f"blocks.{i}."
        for key, value in old.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name.startswith("attn.qkv."):  # rows: q, k and v of every head, (3, nh, hs, ...)
                value = value.view(3, cfg.n_head, hs, *value.shape[1:])[:, h].reshape(-1, *value.shape[1:])
            elif name == "attn.proj.weight":  # columns: each head's output channels
                value = value.view(value.size(0), cfg.n_head, hs)[:, h].reshape(value.size(0), -1)
            elif name.startswith("mlp.fc."):  # rows: the MLP's channels
                value = value[c]
            elif name == "mlp.proj.weight":  # columns: the MLP's channels
                value = value[:, c]
            new[f"blocks.{j}.{name}"] = value.clone()
    smaller = build_model(kept.config(cfg))
    smaller.load_state_dict(new)
    return smaller.to(next(model.parameters()).device).eval()
