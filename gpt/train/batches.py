"""Batches: random windows of token ids drawn across a split's memory-mapped shards.

The whole corpus is never loaded: each batch reads `batch_size` windows of
`block_size + 1` tokens straight from the shards. The sampler has its own random
generator, whose state goes into checkpoints so a resumed run draws the same batches.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from data_prep.prepared.shards import check_in_vocabulary


class BlockSizeError(ValueError):
    pass


class WindowIndex:
    """Maps a flat window number to (shard, offset) over shards long enough for a window."""

    def __init__(self, shards: list[np.ndarray], block_size: int, vocab_size: int | None = None, split: str = "train"):
        self.vocab_size = vocab_size
        self.shards = [s for s in shards if len(s) > block_size]
        if not self.shards:
            longest = max((len(s) for s in shards), default=0)
            more = "; or prepare the data with a larger --val-fraction" if split == "val" else ""
            raise BlockSizeError(f"--block-size {block_size} is larger than the data: the {split} split's "
                                 f"longest shard holds {longest} tokens (need block size + 1){more}")
        self.block_size = block_size
        self.starts = np.cumsum([0] + [len(s) - block_size for s in self.shards])  # windows per shard

    @property
    def num_windows(self) -> int:
        return int(self.starts[-1])

    def gather(self, flat: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets (B, block_size) for window numbers `flat`."""
        which = np.searchsorted(self.starts, flat, "right") - 1
        n = self.block_size + 1
        rows = np.empty((len(flat), n), dtype=np.int64)
        for i, (s, w) in enumerate(zip(which.tolist(), flat.tolist())):
            off = w - int(self.starts[s])
            rows[i] = self.shards[s][off : off + n]
        if self.vocab_size is not None:
            check_in_vocabulary(rows, self.vocab_size, "a shard")
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]


class BatchSampler:
    """Uniformly random windows; reproducible from (seed, rank) and resumable from state."""

    def __init__(self, shards: list[np.ndarray], block_size: int, batch_size: int, seed: int, rank: int = 0,
                 vocab_size: int | None = None):
        self.index = WindowIndex(shards, block_size, vocab_size)
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, rank])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.index.gather(self.rng.integers(0, self.index.num_windows, self.batch_size))

    def batch_bytes(self) -> int:
        """Host memory a batch's windows take as drawn (int64, inputs and targets sharing them)."""
        return self.batch_size * (self.index.block_size + 1) * 8

    def state(self) -> str:
        return json.dumps(self.rng.bit_generator.state)  # big ints: JSON keeps them exact

    def load_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)


def fixed_windows(shards: list[np.ndarray], block_size: int, count: int, seed: int = 1234,
                  vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same `count` windows of the val split every time (every window where there are no
    more than `count`, else `count` drawn with a fixed seed), so evaluations during a run, and
    across runs on the same data, are comparable."""
    index = WindowIndex(shards, block_size, vocab_size, split="val")
    if index.num_windows <= count:
        flat = np.arange(index.num_windows)
    else:
        flat = np.sort(np.random.default_rng(seed).choice(index.num_windows, count, replace=False))
    return index.gather(flat)
