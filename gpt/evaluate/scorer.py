"""The model's side of evaluation: windows of token ids in, the loss at each scored position out.

Windows are scored in batches of `batch_size` rows, one forward pass each, under the same
autocast as training's evaluation; the cross-entropy is taken in fp32. Only the losses'
sum comes back to the host, once per batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device import autocast
from .windows import Windows


class TokenScorer:
    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int):
        self.model, self.device, self.dtype, self.batch_size = model.eval(), device, dtype, batch_size

    @torch.inference_mode()
    def losses(self, windows: Windows) -> torch.Tensor:
        """Nats at each scored position of `windows` (at most a batch of them), in stream
        order, as a float32 tensor on the device."""
        rows = torch.from_numpy(windows.rows).to(self.device, non_blocking=True)
        x, y = rows[:, :-1], rows[:, 1:]
        with autocast(self.device, self.dtype):
            logits, _ = self.model(x)  # (B, T, V)
        nats = F.cross_entropy(logits.flatten(0, 1).float(), y.reshape(-1), reduction="none").view_as(y)
        # scored targets are the last `scored` of the first `valid` in each row; padding after
        # a short stream cannot reach the real positions, since attention is causal
        col = torch.arange(y.size(1), device=self.device)
        valid = torch.from_numpy(windows.valid).to(self.device)[:, None]
        first = valid - torch.from_numpy(windows.scored).to(self.device)[:, None]
        return nats[(col >= first) & (col < valid)]  # row by row: stream order

    def total(self, windows: Windows) -> float:
        """Nats summed over every scored position of `windows`, batch by batch."""
        total = 0.0
        while len(windows):
            batch, windows = windows.split(self.batch_size)
            total += float(self.losses(batch).sum())
        return total
