"""The memory floor of decoding one token: the bytes of weights it reads, how fast this
machine streams them through matrix-vector products, and the tokens/s that allows.

Decoding one token multiplies one activation vector by every weight matrix once, so its
time cannot go below (weight bytes) / (bandwidth of a matrix-vector product). That
bandwidth depends on where the weights live: a working set that fits the last-level cache
streams several times faster than one read from memory, so the sweep over working sets
shows where this machine's cache ends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import best_seconds
from gpt.model import linear
from gpt.quantize import Int8Linear
from gpt.sample.sampling import ContextWindow, window_slide


def linear_layers(model: nn.Module) -> list[nn.Module]:
    """The model's linear layers in decode order (blocks, then the head)."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def linear_bytes(m: nn.Module) -> int:
    """Bytes of one linear layer's weights (an int8 layer's values and scales) and bias."""
    if isinstance(m, Int8Linear):
        return tensor_bytes(m.qweight, m.scales, m.bias)
    return tensor_bytes(m.weight, m.bias)


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decoded token reads: every linear layer (a head tied to the token
    embedding included: it reads the whole matrix), the norms, and one embedding row."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, Int8Linear)):
            total += linear_bytes(m)
        elif isinstance(m, nn.LayerNorm):
            total += tensor_bytes(m.weight, m.bias)
        elif isinstance(m, nn.Embedding):
            total += m.weight[0].numel() * m.weight.element_size()
    return total


@torch.inference_mode()
def matvec_floor(model: nn.Module, dtype: torch.dtype, repeats: int = 7, inner: int = 20) -> dict:
    """The linear layers alone, for one token, as the decode path calls them (best of
    `repeats`): their time, the bandwidth it implies and the tokens/s ceiling it sets."""
    layers = linear_layers(model)
    inputs = {m.in_features: torch.randn(1, m.in_features, dtype=dtype) for m in layers}
    seconds = best_seconds(lambda: [linear(m, inputs[m.in_features]) for m in layers], repeats, inner)
    nbytes = weight_bytes_per_token(model)
    return {
        "weight_mb_per_token": round(nbytes / 1e6, 2),
        "matvec_ms_per_token": round(seconds * 1e3, 3),
        "matvec_gb_per_s": round(nbytes / seconds / 1e9, 1),
        "floor_tokens_per_s": round(1 / seconds),
    }


@torch.inference_mode()
def bandwidth_sweep(sizes_mb=(4, 16, 24, 32, 48, 96), rows: int = 1536, cols: int = 384, repeats: int = 5) -> dict:
    """fp32 matrix-vector GB/s over working sets of distinct (rows x cols) matrices, the
    baby model's MLP shape: below the last-level cache's size the weights come from it,
    above it from memory."""
    x = torch.randn(1, cols)
    out = {}
    for mb in sizes_mb:
        n = max(1, round(mb * 1e6 / (rows * cols * 4)))
        mats = [torch.randn(rows, cols) for _ in range(n)]
        seconds = best_seconds(lambda mats=mats: [F.linear(x, w) for w in mats], repeats, max(1, 200 // n))
        out[f"{mb}MB"] = round(n * rows * cols * 4 / seconds / 1e9, 1)
    return out


@torch.inference_mode()
def stream_gb_per_s(nbytes: int, repeats: int = 20) -> float:
    """Plain read bandwidth for a working set of `nbytes`: a sum over that many bytes of fp32
    on every thread torch uses, the best of `repeats`. Not a product's speed: what reading the
    bytes alone costs, from whichever cache level (or memory) a set of that size lives in."""
    x = torch.randn(max(1, nbytes // 4))
    seconds = best_seconds(lambda: x.sum(), repeats, 1)
    return x.numel() * 4 / seconds / 1e9


@torch.inference_mode()
def per_matrix_read_gb_per_s(model: nn.Module, repeats: int = 20) -> float:
    """Plain read bandwidth for the same bytes as `stream_gb_per_s`, read as the decode step
    reads them: one operation per weight matrix, in decode order (a sum over as many bytes of
    fp32 as each matrix holds). What it loses against one sum over them all is each
    operation's own start and end on every thread (handing the work out, the prefetchers
    starting again on a new matrix, waiting for the last thread), which each product, one
    operation a matrix, pays too."""
    mats = [torch.randn(max(1, linear_bytes(m) // 4)) for m in linear_layers(model)]
    seconds = best_seconds(lambda: [m.sum() for m in mats], repeats, 1)
    return sum(m.numel() * 4 for m in mats) / seconds / 1e9


@torch.inference_mode()
def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """The measured matrix-multiply peak in `dtype`: an n x n x n product, best of `repeats`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, repeats, 3) / 1e9


def linear_params(model: nn.Module) -> int:
    """Weights every token multiplies by: every linear layer (a tied head included)."""
    return sum(m.in_features * m.out_features for m in linear_layers(model))


def rows_read(block: int, prompt_tokens: int, new_tokens: int) -> tuple[int, int]:
    """Rows a cached sample reads, as gpt-sample's window schedule reads them (its default
    slide, a quarter of the context): (rows read whole: the prompt once and each moved
    window again; rows read one a step)."""
    window = ContextWindow(block, window_slide(block))
    window.update(prompt_tokens)
    whole, single = prompt_tokens - window.start, 0
    for n in range(prompt_tokens + 1, prompt_tokens + new_tokens):
        if window.update(n):
            whole += n - window.start
        else:
            single += 1
    return whole, single


def product_flops_per_token(model: nn.Module, rows: int, new_tokens: int) -> float:
    """The linear layers' FLOPs per generated token over a whole cached sample that reads
    `rows` rows (`rows_read`): 2 per weight a row."""
    return 2 * linear_params(model) * rows / new_tokens


def cache_bytes_per_step(model: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of keys and values one decode step reads: the fixed-shape step attends over the
    whole cache, every layer's keys and values for the full context (none for a model
    without a cache)."""
    if not getattr(model, "supports_kv_cache", False):
        return 0
    c = model.config
    return c.n_layer * 2 * c.block_size * c.n_head * c.head_size * torch.finfo(dtype).bits // 8


def one_after_another(model: nn.Module, dtype: torch.dtype, whole: int, new_tokens: int,
                      memory_ms: float, gflops: float) -> dict:
    """What a cached sample's schedule pays per token even with no other work, its parts added
    up because it does them one after another: the weights read once a step (`memory_ms`),
    the rows read whole (a moved window's fill) at the matrix-multiply peak, and the cache
    read once a step (`whole`: the rows read whole). The floor, the larger of reading and
    computing, counts neither the fills' time beside the reading nor the cache."""
    fill_ms = product_flops_per_token(model, whole, new_tokens) / gflops / 1e6
    nbytes = cache_bytes_per_step(model, dtype)
    gb_per_s = stream_gb_per_s(nbytes) if nbytes else float("inf")
    cache_ms = nbytes / gb_per_s / 1e6
    return {"fill_rows_per_token": round(whole / new_tokens, 3), "fill_ms_per_token": round(fill_ms, 3),
            "cache_mb_per_token": round(nbytes / 1e6, 2),
            "cache_gb_per_s": round(gb_per_s, 1) if nbytes else None, "cache_ms_per_token": round(cache_ms, 3),
            "ms_per_token": round(memory_ms + fill_ms + cache_ms, 3)}


def decode_floor(model: nn.Module, product_dtype: torch.dtype, prompt_tokens: int, new_tokens: int,
                 cache_dtype: torch.dtype = torch.float32) -> dict:
    """The floor of one sample's time per token: the larger of the weight bytes over the
    plain read bandwidth at their size, and the products' FLOPs over the matrix-multiply peak
    in the dtype the products run in; and beside it `one_after_another` (the cache in
    `cache_dtype`)."""
    nbytes = weight_bytes_per_token(model)
    gb_per_s = stream_gb_per_s(nbytes)
    whole, single = rows_read(model.config.block_size, prompt_tokens, new_tokens)
    flops = product_flops_per_token(model, whole + single, new_tokens)
    gflops = matmul_gflops(product_dtype)
    memory_ms, compute_ms = nbytes / gb_per_s / 1e6, flops / gflops / 1e6
    return {"weight_mb_per_token": round(nbytes / 1e6, 2), "stream_gb_per_s": round(gb_per_s, 1),
            "per_matrix_read_gb_per_s": round(per_matrix_read_gb_per_s(model), 1),
            "memory_ms_per_token": round(memory_ms, 3), "product_mflop_per_token": round(flops / 1e6, 1),
            "matmul_gflop_per_s": round(gflops, 1), "product_dtype": str(product_dtype).removeprefix("torch."),
            "compute_ms_per_token": round(compute_ms, 3), "floor_ms_per_token": round(max(memory_ms, compute_ms), 3),
            "one_after_another": one_after_another(model, cache_dtype, whole, new_tokens, memory_ms, gflops)}
