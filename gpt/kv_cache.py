"""Key/value cache for incremental decoding: one preallocated buffer for all layers.

It holds the keys and values of the current context window, at window positions
0..length-1. When the window moves (see `gpt.sample.sampling.ContextWindow`), every position's
representation changes, in every layer, so the cache is reset and refilled from the new
window; between moves each new token costs one position's work.

For serving (`gpt.serve`), each sequence of the batch is its own request, at its own
position: the fixed-shape step then takes a position per sequence, and `row(b)` is a cache
over sequence b alone, through which a new request's prompt is filled while the others
decode.

Keys and values share one buffer, (layer, key or value, batch, head, position, channel), so
a new position's key and value go in with one copy: on a GPU every kernel of a decode step
counts, since each costs more than the little arithmetic it does.
"""
from __future__ import annotations

import copy

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, head_size: int, block_size: int, device, dtype):
        self.kv = torch.zeros((n_layer, 2, batch, n_head, block_size, head_size), device=device, dtype=dtype)
        # each layer's part, (2, B, nh, block, hs), as views made once: indexing the buffer
        # with slices on every call cost a decoded token tens of microseconds on a CPU
        self.layers = self.kv.unbind(0)
        self.block_size = block_size
        self.length = 0  # positions filled
        self.positions = torch.arange(block_size, device=device)  # for the static step's mask
        self.open = torch.zeros((), dtype=dtype, device=device)
        self.shut = torch.full((), -torch.inf, dtype=dtype, device=device)

    @classmethod
    def for_model(cls, model, batch: int, device, dtype) -> "KVCache":
        c = model.config
        return cls(c.n_layer, batch, c.n_head, c.head_size, c.block_size, device, dtype)

    def row(self, b: int) -> "KVCache":
        """A cache over sequence b alone that shares this one's memory, empty to begin with."""
        view = copy.copy(self)
        view.kv = self.kv.narrow(2, b, 1)
        view.layers = view.kv.unbind(0)
        view.length = 0
        return view

    def prefix(self, length: int) -> "KVCache":
        """The first `length` positions of every sequence, sharing this cache's memory: a
        fixed-shape step given positions below `length` attends over these only."""
        if length == self.block_size:
            return self
        view = copy.copy(self)
        view.kv = self.kv.narrow(4, 0, length)
        view.layers = view.kv.unbind(0)
        view.positions = self.positions[:length]
        view.block_size = length
        return view

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep sequence rows[i] as sequence i (beam search: each beam follows its parent)."""
        self.kv = self.kv.index_select(2, rows)
        self.layers = self.kv.unbind(0)

    def reset(self) -> None:
        self.length = 0

    def update(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values, kv (2, B, nh, T, hs), for `layer` after the positions
        filled; return the whole window's keys and values, each (B, nh, S, hs)."""
        window = self.layers[layer].narrow(3, 0, self.length + kv.size(3))  # (2, B, nh, S, hs)
        window.narrow(3, self.length, kv.size(3)).copy_(kv)
        return window.unbind(0)

    def write(self, layer: int, pos: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one position's keys and values, kv (2, B, nh, 1, hs), for `layer` at `pos` (a
        0-dim tensor, or (B,): one per sequence); return the whole buffers, whose shapes never
        change (the static step)."""
        buffer = self.layers[layer]  # (2, B, nh, block, hs)
        if pos.dim() == 0:
            buffer.index_copy_(3, pos.view(1), kv)
        else:
            buffer.scatter_(3, pos.view(1, -1, 1, 1, 1).expand_as(kv), kv)
        return buffer.unbind(0)

    def attention_bias(self, pos: torch.Tensor) -> torch.Tensor:
        """(1 or B, 1, 1, block) added to attention scores: 0 up to window position `pos` (a
        0-dim tensor, or one per sequence), -inf after it. Made once per token for every layer,
        in the cache's dtype, so no layer converts a boolean mask itself (three kernels a
        layer on a GPU)."""
        open_ = self.positions <= pos.unsqueeze(-1)  # (block,) or (B, block)
        return torch.where(open_, self.open, self.shut).view(-1, 1, 1, self.block_size)

    def advance(self, n_new: int) -> None:
        self.length += n_new
