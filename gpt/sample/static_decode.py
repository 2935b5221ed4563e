"""The decode step with fixed shapes, replayed as a CUDA graph on GPUs.

Decoding one token of a small model is about a hundred tiny kernels; on a GPU each launch
costs more CPU time (about 18 us) than the kernel takes, so the GPU idles while Python
launches. `GPT.decode(idx, cache, pos)` with a position *tensor* has no shape or Python value
that changes from token to token (the KV cache is a fixed buffer, attention is masked to the
positions filled so far), so its kernels can be recorded once into a CUDA graph and
replayed with one launch per token. On a CPU the same step runs eagerly: it is what the
tests compare against the uncached path, and the graph replays exactly these operations.
"""
from __future__ import annotations

import torch

from ..kv_cache import KVCache

WARMUP_STEPS = 3  # eager runs on a side stream before capture (lazy initialisations happen there)


class StaticDecoder:
    """Next-token logits (B, V) for tokens (B,) at window position `pos`, through fixed
    input buffers; `use_graph` records the step as a CUDA graph on its first call."""

    def __init__(self, model: torch.nn.Module, cache: KVCache, batch: int, device: torch.device, use_graph: bool):
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.use_graph = use_graph and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _step(self) -> torch.Tensor:
        return self.model.decode(self.tokens, self.cache, pos=self.pos)

    def __call__(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.pos.fill_(pos)
        if not self.use_graph:
            out = self._step()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            out = self.logits
        self.cache.length = pos + 1
        return out

    def _capture(self) -> None:
        # Capture replays the step once more on the same inputs; the cache write at `pos` is
        # idempotent (same key and value at the same place), so capturing mid-sequence is safe.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
