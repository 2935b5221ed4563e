"""Key/value cache for incremental decoding: one preallocated buffer for all layers.

It holds the keys and values of the current context window, at window positions
0..length-1. When the window moves (see `gpt.sample.sampling.ContextWindow`), every position's
representation changes, in every layer, so the cache is reset and refilled from the new
window; between moves each new token costs one position's work.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, head_size: int, block_size: int, device, dtype):
        shape = (n_layer, batch, n_head, block_size, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = block_size
        self.length = 0  # positions filled
        self.positions = torch.arange(block_size, device=device)  # for the static step's mask

    @classmethod
    def for_model(cls, model, batch: int, device, dtype) -> "KVCache":
        c = model.config
        return cls(c.n_layer, batch, c.n_head, c.head_size, c.block_size, device, dtype)

    def reset(self) -> None:
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, nh, T, hs) for `layer`; return the whole window's."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def write(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one position's keys/values (B, nh, 1, hs) for `layer` at `pos` (a 0-dim
        tensor); return the whole buffers, whose shapes never change (the static step)."""
        at = pos.view(1)
        self.k[layer].index_copy_(2, at, k)
        self.v[layer].index_copy_(2, at, v)
        return self.k[layer], self.v[layer]

    def advance(self, n_new: int) -> None:
        self.length += n_new
