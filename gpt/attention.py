"""Causal self-attention and rotary position embeddings: the one place where tokens meet.

One code path serves every caller. Training, evaluation and the uncached sampler give it
T tokens per sequence; cached decoding gives it new tokens whose earlier keys and values
wait in a `KVCache`; the fixed-shape step a CUDA graph replays gives it one token at a
position *tensor* (`Positions.pos`), so that no shape or Python number changes from token
to token. The few branches inside are about cost, not about what is computed: one position
shared by the batch is rotated by one matrix product rather than by pairs of channels, and
the cache's state chooses the attention kernel and its mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .kv_cache import KVCache
from .layers import linear, linear_residual, rms_norm

# a call's rotary angles (see Rotary.at): cos and sin tables, one position's matrices, or none
Rope = tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None


# -- rotary position embeddings ------------------------------------------------------------------
def rope_tables(positions: torch.Tensor, head_size: int, base: float,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (T, head_size/2), for integer positions (angles computed in float64)."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device=positions.device) / head_size)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+h/2}) pair of x (..., T, hs) by its position's angle, in x's
    dtype: under autocast x is a bf16 product, and fp32 tables would promote the rotation to
    fp32, whose every operation then casts its gradient back (a CPU training step 2% slower),
    for queries and keys that attention takes in bf16 anyway."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-ops where Rotary.at cast them already
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_basis(head_size: int) -> torch.Tensor:
    """(3, 3, hs, hs): the fixed matrices `rope_rotation` scales by a position's cos and sin."""
    h = head_size // 2
    eye = torch.eye(head_size)
    swap = torch.zeros(head_size, head_size)
    swap[:h, h:], swap[h:, :h] = torch.eye(h), -torch.eye(h)
    zero = torch.zeros(head_size, head_size)
    return torch.stack((torch.stack((zero, zero, eye)), torch.stack((eye, eye, zero)), torch.stack((swap, swap, zero))))


def rope_rotation(basis: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(3, hs, hs) = (R, R, I) for one position, from its (hs,) rows [cos, cos] and [sin, sin]
    (columns of the basis scaled by them): x @ R == apply_rope(x) for queries and keys, the
    identity for values, so one position's three projections turn in one batched product,
    with the matrices built in two kernels."""
    return torch.addcmul(torch.addcmul(basis[0], basis[1], cos), basis[2], sin)


class Rotary(nn.Module):
    """The rotary tables for every window position: buffers, not parameters, and not saved
    (rotary embeddings are a fixed function of the position)."""

    def __init__(self, head_size: int, block_size: int, base: float):
        super().__init__()
        cos, sin = rope_tables(torch.arange(block_size), head_size, base, torch.float32)  # (block, hs/2)
        # for T positions: angles for queries, keys and values, (3, 1, 1, block, hs/2); the
        # values' (cos 1, sin 0) leave them exactly as they are, so one pass turns all three
        # and they stay in one tensor, as the cache stores them
        self.register_buffer("cos", torch.stack((cos, cos, torch.ones_like(cos)))[:, None, None], persistent=False)
        self.register_buffer("sin", torch.stack((sin, sin, torch.zeros_like(sin)))[:, None, None], persistent=False)
        # for one position: its [cos, cos] and [sin, sin] rows, (block, 2, hs), and the basis
        # that makes them the rotation matrices (rope_rotation)
        self.register_buffer("rows", torch.stack((cos.repeat(1, 2), sin.repeat(1, 2)), dim=1), persistent=False)
        self.register_buffer("basis", rope_basis(head_size), persistent=False)

    def at(self, start: int | torch.Tensor, T: int) -> Rope:
        """What `rotate` needs for window positions start..start+T-1: for one position, its
        (3, hs, hs) matrices (start may then be a 0-dim tensor); for (B,) positions, one token
        at each, their cos and sin; else the cos and sin tables,
        (3, 1, 1, T, hs/2), in autocast's dtype, which float projections give queries and
        keys: cast once here rather than in every layer (on a GPU each cast is a kernel)."""
        dtype = products_dtype(self.cos.device, self.cos.dtype)
        if isinstance(start, torch.Tensor) and start.dim() == 1:
            # a position per sequence (a server's batch): each sequence's angles, (3, B, 1, 1,
            # hs/2), applied by pairs of channels; for 16 sequences this is cheaper than
            # building and applying 16 sets of rotation matrices
            cos, sin = (t[:, 0, 0].index_select(1, start).view(3, -1, 1, 1, t.size(-1)).to(dtype)
                        for t in (self.cos, self.sin))
            return cos, sin
        if T == 1:
            return rope_rotation(self.basis, *row(self.rows, start).unbind(-2))
        return self.cos[..., start : start + T, :].to(dtype), self.sin[..., start : start + T, :].to(dtype)


def rotate(qkv: torch.Tensor, rope: Rope, batch: int) -> torch.Tensor:
    """Queries, keys and values (3, B, nh, T, hs) from qkv (B*T, 3, nh, hs), with the
    queries and keys turned by their positions' angles and the values as they were."""
    if isinstance(rope, torch.Tensor):  # one position shared by the batch: (3, hs, hs) matrices
        qkv = torch.matmul(qkv, rope)  # a 4-dim product: torch takes a 5-dim one by a path twice as slow
    qkv = qkv.view(batch, -1, *qkv.shape[1:]).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
    if isinstance(rope, tuple):
        # after the permute, so that the result, and each of q, k and v, is contiguous
        qkv = apply_rope(qkv, *rope)
    return qkv


def products_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype matrix products take on `device` here: autocast's where it is on, else `default`."""
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return default


def row(table: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
    """table[pos] for an int, a 0-dim position tensor or (B,) positions (then (B, ...)).
    Indexing with a 0-dim tensor itself would read it back to the host (`.item()`), which a
    CUDA graph cannot record and which would freeze the position at its captured value;
    index_select stays on the device."""
    if isinstance(pos, torch.Tensor):
        return table.index_select(0, pos.view(-1)).view(*pos.shape, *table.shape[1:])
    return table[pos]


# -- attention -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Positions:
    """Where one forward call's tokens sit, as every layer's attention needs it: `batch`
    sequences of `length` new tokens, the rotary angles of their positions (`Rotary.at`;
    None with learned positions), and the cache holding the earlier positions' keys and
    values. With `pos` (a 0-dim tensor, or (B,): a position per sequence; one token per
    sequence) the step has fixed shapes: keys and values are written at `pos` and attention
    runs over the whole cache buffer, later positions masked out by `bias` (1 or B, 1, 1,
    block), made once for all layers."""

    batch: int
    length: int
    rope: Rope = None
    cache: KVCache | None = None
    pos: torch.Tensor | None = None
    bias: torch.Tensor | None = None


PLAIN_ATTENTION_MAX_T = 512  # the plain path holds (B, heads, T, T) scores for the backward pass


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    if q.device.type == "cpu" and v.dtype == torch.bfloat16 and q.size(-2) <= PLAIN_ATTENTION_MAX_T:
        # torch's CPU flash-attention kernel is several times slower in bf16 than in fp32 (its
        # backward most), while the plain path (product, softmax, product) costs little
        # beside the bf16 products around it: with it a bf16 training step on a CPU with
        # native bf16 is about 1.5x fp32's. Its scores grow with the square of
        # the context, so long contexts keep the flash kernel's bounded memory
        return plain_causal_attention(q, k, v, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


def plain_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + causal bias) v, all in v's dtype (bf16 under autocast).
    torch's math backend works in fp32 throughout; bf16 products run at twice its rate on a
    CPU with native bf16 and need no casts of q, k and v. torch's bf16 softmax computes in
    fp32 inside and rounds once, the probabilities an fp32 softmax rounded for the product
    would give, at half the cost of asking it for fp32 output. With the rotary embeddings
    in bf16 as well (apply_rope), these made a small model's training step 15% faster, with
    the same loss after 1,500 steps within what the seed moves it
    (docs/quality/bf16-attention-cpu.json). No guard for rows masked entirely, as the math
    backend has: a causal row never is, and its checks took 5% of the step."""
    B, H, T, hs = q.shape
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (t.to(v.dtype).reshape(B * H, T, hs) for t in (q, k, v))
        bias = torch.full((T, T), -torch.inf, device=q.device, dtype=v.dtype).triu_(1)
        att = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1 / math.sqrt(hs)).softmax(-1)
        if dropout_p:
            att = F.dropout(att, dropout_p)
        return torch.bmm(att, v).view(B, H, T, hs)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + bias) v for one query per sequence, written out: compiled
    on a CPU (the fixed-shape step), the scores, softmax and weighted sum fuse into one
    kernel per layer, which took half the time of torch's CPU flash-attention kernel (built
    for blocks of queries) on a 2-core Intel Xeon; eagerly the two cost the same."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1 / math.sqrt(q.size(-1))).add_(bias)
    return torch.matmul(scores.softmax(-1), v)


def attend(q: torch.Tensor, kv: torch.Tensor, at: Positions, layer: int, dropout_p: float) -> torch.Tensor:
    """Attention output (B, nh, T, hs) for queries q (B, nh, T, hs) and the new tokens' keys
    and values kv (2, B, nh, T, hs), which go into the cache first where there is one."""
    cache = at.cache
    if cache is None:
        return causal_attention(q, kv[0], kv[1], dropout_p)
    if at.pos is not None:
        k, v = cache.write(layer, at.pos, kv)  # (B, nh, block, hs): all of the buffer
        if q.device.type == "cpu":
            return masked_attention(q, k, v, at.bias)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=at.bias)
    k, v = cache.update(layer, kv)  # (B, nh, S, hs): the window's keys and values
    T, S = q.size(2), k.size(2)
    if S == T:  # a fill from an empty cache: plainly causal, which the fused kernels take
        return causal_attention(q, k, v, 0.0)
    # new token i (window position S-T+i) sees window positions <= its own: one token, all of them
    mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def qk_rms_norm(head_size: int) -> nn.RMSNorm:
    # a learnable gain per channel (initialised to 1): unit-RMS queries and keys bound every
    # attention score by sqrt(head_size), about 5.7 for 32-channel heads, which would cap how
    # sharply a head can attend; the gain lets each layer learn its own temperature back, for
    # 2 x head_size parameters per layer. eps is fixed so bf16 and fp32 normalise alike
    return nn.RMSNorm(head_size, eps=1e-6)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # which of the cache's layers holds this one's keys and values
        self.n_head, self.head_size, self.dropout = cfg.n_head, cfg.head_size, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.attn_width, bias=cfg.bias)  # one fused projection
        self.proj = nn.Linear(cfg.attn_width, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_out = True
        # queries and keys normalised per head, before rotation: attention scores stay bounded
        # however large the projections grow (why the speed-run records use it: a high learning
        # rate cannot blow the softmax up)
        self.q_norm = qk_rms_norm(cfg.head_size) if cfg.qk_norm else None
        self.k_norm = qk_rms_norm(cfg.head_size) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor, at: Positions) -> torch.Tensor:
        """residual + attention(x), both (N, C): rows of `at.batch` sequences of `at.length` tokens."""
        dropout = self.dropout if self.training else 0.0
        qkv = linear(self.qkv, x).view(-1, 3, self.n_head, self.head_size)  # (N, 3, nh, hs)
        if self.q_norm is not None:
            qkv = torch.stack((rms_norm(self.q_norm, qkv[:, 0]), rms_norm(self.k_norm, qkv[:, 1]), qkv[:, 2]), dim=1)
        qkv = rotate(qkv, at.rope, at.batch)  # (3, B, nh, T, hs)
        y = attend(qkv[0], qkv[1:], at, self.layer, dropout)  # (B, nh, T, hs)
        # (N, C); with one position the heads are already in order: a view, not a copy
        y = y.view(at.batch, -1) if at.length == 1 else y.transpose(1, 2).reshape(x.size(0), -1)
        return linear_residual(self.proj, y, residual, dropout)
