"""The models: a bigram baseline and a decoder-only transformer (GPT), written from scratch.

GPT = token embedding (+ learned position embedding, or rotary embeddings applied to
queries and keys) -> n_layer x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> head.
Both models map token ids (B, T) to next-token logits (B, T, vocab) and, given targets,
the mean cross-entropy. The GPT has one forward pass for training, evaluation and
sampling: given a `KVCache` it reads and extends the cache, and given a position tensor
as well it runs the fixed-shape step a CUDA graph replays (see `GPT.forward`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import CausalSelfAttention, Positions, Rotary, row
from .config import ModelConfig
from .kv_cache import KVCache
from .layers import layer_norm, linear, linear_residual, softcap


class LanguageModel(nn.Module):
    """What both models share: token ids (B, T) in, next-token logits (B, T, V) out, and a config."""

    supports_kv_cache = False  # whether forward() takes a KVCache (and a position tensor)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg


class Bigram(LanguageModel):
    """Next-token logits read straight from a table indexed by the current token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, idx, targets=None, cache=None, last_only=False):
        if last_only:
            idx = idx[:, -1:]
        logits = self.table(idx)  # (B, T, V)
        if self.config.logit_softcap:
            logits = softcap(logits, self.config.logit_softcap)
        return logits, lm_loss(logits, targets)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    if targets is None:
        return None
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


# -- transformer ---------------------------------------------------------------------------------
# The residual stream is rows, (N, C) with N = B*T, one per token: every layer but attention
# treats tokens alike, and as rows each residual add folds into its product (linear_residual).
# The blocks and their sub-layers are called by `.forward`, not through nn.Module.__call__,
# which costs about a microsecond a call, three a layer for every decoded token (3% of a
# token's time for a narrow 6-layer model on a 2-core CPU). Hooks registered on them
# therefore never run (nor on the layers, see gpt.layers); hooks on the model itself do.
class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_out = True
        self.dropout = cfg.dropout
        # exact (erf) GELU by default: on CPU its backward pass is about 4x faster than the
        # tanh approximation's, which alone cost a fifth of a small model's training step
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        # relu(x)^2 (Primer; the speed-run records use it): as cheap as a ReLU, and smooth at 0
        self.relu2 = cfg.activation == "relu2"

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + mlp(x), both (N, C)."""
        h = linear(self.fc, x)  # (N, 4C, or what gpt-prune left)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate=self.approximate)
        return linear_residual(self.proj, h, residual, self.dropout if self.training else 0.0)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, at: Positions) -> torch.Tensor:
        x = self.attn.forward(layer_norm(self.ln1, x), x, at)  # (N, C)
        return self.mlp.forward(layer_norm(self.ln2, x), x)


class GPT(LanguageModel):
    """The decoder-only transformer: embeddings -> blocks -> final norm -> output head
    (tied to the token embedding unless tie_weights is off) -> optional logit soft-cap."""

    supports_kv_cache = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            # the input and output embeddings share one matrix: fewer parameters, and a
            # rare token's output row learns from its every occurrence as input too
            self.head.weight = self.wte.weight
        self.apply(self._init_weights)
        if not cfg.tie_weights:
            # an untied head starts at zero, as in the speed-run records: every token starts
            # equally likely (the loss starts at exactly ln V) and no random projection of the
            # untrained residual stream adds noise to the first steps' gradients
            nn.init.zeros_(self.head.weight)
        self.rotary = Rotary(cfg.head_size, cfg.block_size, cfg.rope_base) if cfg.pos == "rope" else None
        # activation checkpointing (gpt-train --activation-checkpointing): a way to train, not
        # part of the model, so it is set on the model by the trainer and saved nowhere
        self.checkpoint_blocks = False
        # under FSDP (gpt-train --fsdp) each block's weights are gathered by hooks on its call;
        # elsewhere the blocks' forward is called directly, which skips a call's per-token cost
        self.sharded_blocks = False

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            # residual outputs are scaled down with depth so the residual stream's variance
            # does not grow with the number of layers
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(m, "is_residual_out", False) else 0.02
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, pos: torch.Tensor | None = None):
        """Logits (B, T, V) for tokens idx (B, T) at window positions start..start+T-1, where
        start is 0, or the cache's length when decoding incrementally; (B, 1, V) for the last
        position only with `last_only`. Training, a cache's fill and each decoded token all
        run this one path.

        With `pos`, a 0-dim position tensor on the model's device (or (B,), a position per
        sequence: a server's requests each at their own), and one token per sequence, every
        shape is fixed: the new keys and values are written at `pos` and
        attention runs over the whole cache buffer, the positions after `pos` masked out.
        Nothing then depends on a Python number, so the step can be captured once as a CUDA
        graph and replayed for every token; the caller keeps `cache.length` (it is not
        advanced here)."""
        B, T = idx.shape
        C = self.config.n_embd
        if pos is None:
            start = cache.length if cache is not None else 0
            if start + T > self.config.block_size:
                raise ValueError(f"{start + T} tokens do not fit the context of {self.config.block_size}")
        elif cache is None or T != 1:
            raise ValueError("a position tensor is for one token per sequence decoded against a cache")
        else:
            start = pos
        x = F.embedding(idx, self.wte.weight)  # (B, T, C)
        if self.wpe is not None:  # + (T, C); a position tensor is read on the device (see `row`)
            x = x + (self.wpe.weight[start : start + T] if pos is None else row(self.wpe.weight, pos).view(-1, 1, C))
        x = x.view(B * T, -1)  # (N, C)
        if self.training and self.config.dropout:
            x = F.dropout(x, self.config.dropout)
        rope = self.rotary.at(start, T) if self.rotary is not None else None
        bias = cache.attention_bias(pos) if pos is not None else None  # (1 or B, 1, 1, block): the window so far
        at = Positions(B, T, rope, cache, pos, bias)
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        sharded = self.sharded_blocks
        for block in self.blocks:
            run = block if sharded else block.forward
            # non-reentrant checkpointing replays the block with the random state it first
            # ran with, so dropout draws the same masks and the gradients are the same
            x = checkpoint(run, x, at, use_reentrant=False) if recompute else run(x, at)
        if cache is not None and pos is None:
            cache.advance(T)
        if last_only and T > 1:
            x, T = x.view(B, T, -1)[:, -1], 1  # (B, C)
        logits = linear(self.head, layer_norm(self.ln_f, x)).view(B, T, -1)  # (B, T, V)
        if self.config.logit_softcap:
            logits = softcap(logits, self.config.logit_softcap)
        return logits, lm_loss(logits, targets)


def build_model(cfg: ModelConfig) -> nn.Module:
    cfg.validate()
    return GPT(cfg) if cfg.kind == "gpt" else Bigram(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward of each matmul)
    plus attention's score and weighted-sum products over the context."""
    if cfg.kind == "bigram":
        return 6.0 * cfg.vocab_size  # one row read per token; the cost is the softmax
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.attn_width * cfg.block_size
