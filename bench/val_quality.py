"""The cost in quality of a faster precision: loss and bits per character on held-out text.

The same validation windows (consecutive, non-overlapping, each block_size + 1 tokens from
the start of the val split) go through every precision, so their differences are the
precision's alone, not the sample's. `gpt-eval --quantize int8` measures int8's cost on any
text, in its own sliding windows; this keeps the benchmark's precisions side by side in one
process and one JSON.
"""
from __future__ import annotations

import math

import numpy as np
import torch

import data_prep


def val_windows(data_dir: str, block_size: int, max_windows: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Inputs and targets (N, block_size), and the val split's tokens per character."""
    data = data_prep.load(data_dir)
    tokens = np.concatenate([np.asarray(a, dtype=np.int64) for a in data.split("val")])
    n = min(max_windows, (len(tokens) - 1) // block_size)
    if n < 1:
        raise SystemExit(f"the val split of {data_dir} is shorter than one window of {block_size + 1} tokens")
    x = torch.from_numpy(tokens[: n * block_size].reshape(n, block_size))
    y = torch.from_numpy(tokens[1 : n * block_size + 1].reshape(n, block_size))
    return x, y, data.tokens_per_character("val")


@torch.inference_mode()
def val_loss(model, x: torch.Tensor, y: torch.Tensor, batch: int = 8) -> float:
    """Mean cross-entropy in nats over all windows (every window has the same length)."""
    total = 0.0
    for i in range(0, len(x), batch):
        _, loss = model(x[i : i + batch], y[i : i + batch])
        total += float(loss) * len(x[i : i + batch])
    return total / len(x)


def quality(model, windows: tuple[torch.Tensor, torch.Tensor, float]) -> dict:
    x, y, tokens_per_char = windows
    loss = val_loss(model, x, y)
    # six decimals: int8's cost on a small model can be under 1e-4 nats, below four decimals
    return {"val_loss": round(loss, 6), "val_bpc": round(loss / math.log(2) * tokens_per_char, 6),
            "val_tokens": x.numel()}
