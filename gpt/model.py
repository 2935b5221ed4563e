"""The models: a bigram baseline and a decoder-only transformer (GPT), written from scratch.

GPT = token embedding (+ learned position embedding, or rotary embeddings applied to
queries and keys) -> n_layer x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> head.
Both models map token ids (B, T) to next-token logits (B, T, vocab) and, given targets,
the mean cross-entropy. The GPT also decodes incrementally against a `KVCache`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .kv_cache import KVCache


class LanguageModel(nn.Module):
    """What both models share: token ids (B, T) in, next-token logits (B, T, V) out, and a config."""

    supports_kv_cache = False  # whether forward() takes a KVCache and decode() exists

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


# -- rotary position embeddings ------------------------------------------------------------------
def rope_tables(positions: torch.Tensor, head_size: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (T, head_size/2), for integer positions (angles computed in float64)."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device=positions.device) / head_size)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+h/2}) pair of x (B, H, T, hs) by its position's angle, in x's
    dtype: under autocast x is a bf16 product, and fp32 tables would promote the rotation to
    fp32, whose every operation then casts its gradient back (a CPU training step 2% slower),
    for queries and keys that attention takes in bf16 anyway."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-ops where GPT.forward cast them already
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
    identity for values, so a decode step rotates a token's three projections in one batched
    product, with the matrices built in two kernels."""
    return torch.addcmul(torch.addcmul(basis[0], basis[1], cos), basis[2], sin)


# -- transformer ---------------------------------------------------------------------------------
def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight, layer.bias)
    # a layer with no float weight (gpt.quantize.Int8Linear) computes its own product:
    # dispatching here, rather than in each decode method, keeps quantization out of them
    return layer.forward(x)


def linear_residual(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + layer(x), x (B, C): a linear layer without bias adds the residual inside its
    product (one kernel, not two, for the decode step)."""
    if isinstance(layer, nn.Linear) and layer.bias is None:
        return torch.addmm(residual, x, layer.weight.t())
    return residual + linear(layer, x)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def rms_norm(norm: nn.RMSNorm | None, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` in the functional form the decode path uses; no norm: x as it is. The gain
    takes x's dtype: under autocast x is bf16 while the gain stays fp32, and torch would then
    fall back from its fused kernel, with a warning."""
    if norm is None:
        return x
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


def qk_rms_norm(head_size: int) -> nn.RMSNorm:
    # a learnable gain per channel (initialised to 1): unit-RMS queries and keys bound every
    # attention score by sqrt(head_size), about 5.7 for 32-channel heads, which would cap how
    # sharply a head can attend; the gain lets each layer learn its own temperature back, for
    # 2 x head_size parameters per layer. eps is fixed so bf16 and fp32 normalise alike
    return nn.RMSNorm(head_size, eps=1e-6)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): |logits| < cap, nearly unchanged well below it. In fp32,
    since bf16 has few bits left where tanh flattens out."""
    return cap * torch.tanh(logits.float() / cap)


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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_size, self.dropout = cfg.n_head, cfg.head_size, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # one fused projection
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_out = True
        self.resid_drop = nn.Dropout(cfg.dropout)
        # queries and keys normalised per head, before rotation: attention scores stay bounded
        # however large the projections grow (why the speed-run records use it: a high learning
        # rate cannot blow the softmax up)
        self.q_norm = qk_rms_norm(cfg.head_size) if cfg.qk_norm else None
        self.k_norm = qk_rms_norm(cfg.head_size) if cfg.qk_norm else None

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        q, k = rms_norm(self.q_norm, q), rms_norm(self.k_norm, k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        else:
            k, v = cache.update(layer, torch.stack((k, v)))  # (B, nh, S, hs): the window's keys and values
            S = k.size(2)
            if S == T:  # a fill from an empty cache: plainly causal, which the fused kernels take
                y = causal_attention(q, k, v, 0.0)
            else:  # new token i (window position S-T+i) sees window positions <= its own
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))

    def decode(self, x, rot: torch.Tensor | None, cache: KVCache, layer: int, pos=None, bias=None):
        """forward() for one new token per sequence, x (B, C), at window position `pos`: the
        cache's length, or with `bias` a position tensor (the static-shape step, see
        GPT.decode). Returns the attention's output before its projection, (B, C)."""
        B, C = x.shape
        qkv = linear(self.qkv, x).view(B, 3, self.n_head, self.head_size)
        if self.q_norm is not None:
            qkv = torch.stack((rms_norm(self.q_norm, qkv[:, 0]), rms_norm(self.k_norm, qkv[:, 1]), qkv[:, 2]), dim=1)
        if rot is not None:
            qkv = torch.matmul(qkv, rot)  # q and k rotated, v times the identity
        q = qkv[:, 0].unsqueeze(2)  # (B, nh, 1, hs)
        kv = qkv[:, 1:].transpose(0, 1).unsqueeze(3)  # (2, B, nh, 1, hs)
        if bias is None:
            k, v = cache.update(layer, kv)  # (B, nh, S, hs): the whole window
        else:
            k, v = cache.write(layer, pos, kv)  # (B, nh, block, hs): all of the buffer
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).view(B, C)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_out = True
        self.drop = nn.Dropout(cfg.dropout)
        # exact (erf) GELU by default: on CPU its backward pass is about 4x faster than the
        # tanh approximation's, which alone cost a fifth of a small model's training step
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        # relu(x)^2 (Primer; the speed-run records use it): as cheap as a ReLU, and smooth at 0
        self.relu2 = cfg.activation == "relu2"

    def forward(self, x):
        return self.drop(self.proj(self.activation(self.fc(x))))

    def decode(self, x, residual):
        return linear_residual(self.proj, self.activation(linear(self.fc, x)), residual)

    def activation(self, x):
        if self.relu2:
            return F.relu(x).square()
        return F.gelu(x, approximate=self.approximate)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), rope, cache, layer)
        return x + self.mlp(self.ln2(x))

    def decode(self, x, rot, cache: KVCache, layer: int, pos=None, bias=None):
        x = linear_residual(self.attn.proj, self.attn.decode(layer_norm(self.ln1, x), rot, cache, layer, pos, bias), x)
        return self.mlp.decode(layer_norm(self.ln2, x), x)


class GPT(LanguageModel):
    """The decoder-only transformer: embeddings -> blocks -> final norm -> output head
    (tied to the token embedding unless tie_weights is off) -> optional logit soft-cap."""

    supports_kv_cache = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
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
        if cfg.pos == "rope":
            cos, sin = rope_tables(torch.arange(cfg.block_size), cfg.head_size, cfg.rope_base, torch.float32)
            # buffers, not parameters, and not saved: rotary embeddings are a fixed function
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            # for decoding: each position's [cos, cos] and [sin, sin] rows, and the basis that
            # makes them the (q, k, v) rotation matrices (rope_rotation)
            self.register_buffer("rope_rows", torch.stack((cos.repeat(1, 2), sin.repeat(1, 2)), dim=1), persistent=False)
            self.register_buffer("rope_basis", rope_basis(cfg.head_size), persistent=False)

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

    def forward(self, idx, targets=None, cache: KVCache | None = None, last_only: bool = False):
        """Logits (B, T, V) for tokens idx (B, T) at window positions start..start+T-1,
        where start is 0, or the cache's length when decoding incrementally."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} tokens do not fit the context of {self.config.block_size}")
        if cache is not None and T == 1 and targets is None and not self.training:
            return self.decode(idx[:, 0], cache).unsqueeze(1), None
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        else:
            # in autocast's dtype, which float projections give queries and keys, cast once here
            # rather than in every layer (on a GPU each cast is a kernel launch); apply_rope
            # casts again only for other layers (int8 ones keep their input's dtype)
            dtype = products_dtype(idx.device, self.rope_cos.dtype)
            rope = (self.rope_cos[start : start + T].to(dtype), self.rope_sin[start : start + T].to(dtype))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.ln_f(x))  # (B, T, V)
        if self.config.logit_softcap:
            logits = softcap(logits, self.config.logit_softcap)
        return logits, lm_loss(logits, targets)

    def decode(self, idx: torch.Tensor, cache: KVCache, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) for one new token per sequence, idx (B,), at window position
        cache.length: forward()'s computation on (B, C) activations, with the position's
        rotation as matrices shared by all layers. Generating a token then costs little
        more than reading the weights once: on a CPU, a third of forward()'s time for a single
        position went to reshaping and per-call overhead, not arithmetic, which is also why
        the decode methods call the functional forms of their layers (so hooks registered on
        submodules do not run here; hooks on the model itself do).

        With `pos`, a 0-dim position tensor on the model's device, every shape is fixed: the
        new key and value are written at `pos` and attention runs over the whole cache
        buffer, positions after `pos` masked out by an additive bias made once for all
        layers. Nothing then depends on a Python
        number, so the step can be captured once as a CUDA graph and replayed for every
        token; the caller keeps `cache.length` (it is not advanced here)."""
        static = pos is not None
        if not static:
            pos = cache.length
        x = self.wte(idx)  # (B, C)
        rot = None
        if self.wpe is not None:
            x = x + row(self.wpe.weight, pos)
        else:
            rot = rope_rotation(self.rope_basis, *row(self.rope_rows, pos))
        bias = cache.attention_bias(pos) if static else None  # (1, block): the window so far
        for i, block in enumerate(self.blocks):
            x = block.decode(x, rot, cache, i, pos, bias)
        if not static:
            cache.advance(1)
        logits = linear(self.head, layer_norm(self.ln_f, x))  # (B, V)
        if self.config.logit_softcap:
            logits = softcap(logits, self.config.logit_softcap)
        return logits


def products_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype matrix products take on `device` here: autocast's where it is on, else `default`."""
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return default


def row(table: torch.Tensor, pos) -> torch.Tensor:
    """table[pos] for an int or a 0-dim position tensor. Indexing with the tensor itself
    would read it back to the host (`.item()`), which a CUDA graph cannot record and which
    would freeze the position at its captured value; index_select stays on the device."""
    if isinstance(pos, torch.Tensor):
        return table.index_select(0, pos.view(1))[0]
    return table[pos]


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
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_embd * cfg.block_size
