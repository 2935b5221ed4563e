"""gpt-train --plan: the memory one training process will need, before it needs it.

Per process (one GPU, or the CPU), in bytes:
- weights: fp32, whatever the precision of the products (mixed precision keeps fp32 masters);
- gradients: fp32, one per trained weight, alive from the backward pass to the optimizer's step;
- optimizer state: AdamW's two moments (8 bytes a weight), Muon's one momentum (4) for the
  hidden matrices, and the weights' moving average (4) with --ema;
- activations: what autograd keeps for the backward pass. They are not estimated from a
  formula but counted: the model's forward runs once, for one window, on PyTorch's meta
  device (shapes without memory or arithmetic), and every tensor autograd saves is added up,
  so each model option, dropout's masks and activation checkpointing count as the code has
  them. In bf16 or fp16 the saved floating tensors are half as large (autocast computes the
  products, and keeps their inputs, in that precision), and the weights' half-precision copies
  are kept too;
- the peak adds what the backward pass holds briefly: the logits' gradient, and while a
  block's gradients flow, its activations' gradients and the kernels' temporaries (measured,
  see `memory_plan`), and with checkpointing the block recomputed.

Under DDP (torchrun) every process holds all of the above for its own micro-batch; a bucket of
gradients on their way to the other processes adds a few tens of MB (torch's 25 MB buckets).
Under FSDP (--fsdp, N processes) the weights, gradients and optimizer state are 1/N each, and
beside them: the root's weights (embeddings, final norm, head) whole for the step, two blocks'
weights whole at a time (the one computing and the next, gathered ahead; in bf16 when the run
computes in bf16), and one block's whole gradients before they are reduced and split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..attention import PLAIN_ATTENTION_MAX_T
from ..config import ModelConfig, TrainConfig
from ..model import build_model
from .optim import hidden_matrices

DDP_BUCKETS = 2 * 25 * 2**20  # DDP's gradient buckets (25 MB each) in flight, beside the gradients
HALF = (torch.bfloat16, torch.float16)
BLOCKS_IN_FLIGHT = 2.25


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    weights: int
    gradients: int
    optimizer: int
    activations_per_window: int  # kept for the backward pass, one window of block_size tokens
    transient_per_window: int  # held briefly at the backward pass's start (logits' gradient, one block)
    fixed_extra: int  # half-precision weight copies, DDP's buckets

    def activations(self, windows: int) -> int:
        return self.activations_per_window * windows

    def peak(self, windows: int) -> int:
        """The most alive at once: weights, optimizer state, then during the backward pass the
        activations, the transients, and the gradients (counted whole: by the end of the
        backward pass every one exists, while most activations are already freed)."""
        state = self.weights + self.optimizer + self.fixed_extra
        return state + self.gradients + (self.activations_per_window + self.transient_per_window) * windows

    def largest_windows(self, budget: int) -> int:
        """The largest micro-batch (windows) whose peak fits `budget` bytes (0: none fits)."""
        free = budget - self.peak(0)
        per = self.activations_per_window + self.transient_per_window
        return max(0, free // per) if per else 0


def saved_bytes(model: torch.nn.Module, block_size: int, half: bool, scores_kept: bool) -> tuple[int, int]:
    """Bytes autograd saves in one window's forward pass on the meta device (each storage once;
    the weights, kept anyway, left out). Floating tensors count at 2 bytes an element when
    `half`, as autocast would keep them. On the meta device attention runs torch's math path,
    which keeps the (T, T) scores; the fused kernels that run on a GPU and a CPU keep a
    log-sum-exp per query instead, so scores count only where a path that keeps them runs
    (`scores_kept`). Returns (all bytes, the scores' part)."""
    weights = {id(p) for p in model.parameters()}
    head_size = model.config.head_size
    seen: dict[int, int] = {}
    scores: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) in weights:
            return t
        size = 2 if half and base.is_floating_point() else base.element_size()
        if base.dim() >= 2 and base.shape[-1] == base.shape[-2] == block_size > 1:
            if scores_kept:
                seen[id(base)] = scores[id(base)] = base.numel() * size
            else:
                seen[id(base)] = base[..., 0].numel() * 4  # the fused kernels' log-sum-exp, fp32
        elif base.dim() == 4 and base.shape[-2:] == (head_size, block_size) and not scores_kept:
            pass  # the math path's transposed keys, which the fused kernels do not copy
        else:
            seen[id(base)] = base.numel() * size
        return t

    idx = torch.zeros(1, block_size, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return sum(seen.values()), sum(scores.values())


@dataclass(frozen=True)
class Measured:
    """One training step's forward and backward pass on a GPU, beyond the weights: what grows
    with the windows (per window) and what does not (gradients, autocast's weight copies,
    cuBLAS's workspace, at no windows)."""
    per_window: int
    fixed: int


def measure_on_gpu(cfg: TrainConfig, vocab_size: int, dtype: torch.dtype, device: torch.device) -> Measured | None:
    """The step measured by torch's allocator at 2 and 4 windows (a line through the two),
    after one at 1 window that is not counted: a process's first step also allocates what it
    keeps for good (cuBLAS's workspace, the allocator's first blocks), which in the first
    measured step flattened the line (planned peaks of 0.17-0.5 of the measured ones, fresh
    processes on an H200). None where it does not fit the GPU: the plan then stays the count's."""
    from ..device import autocast

    counts, peaks = (1, 2, 4), []
    try:
        model = build_model(cfg.model_config(vocab_size)).to(device).train()
        model.checkpoint_blocks = cfg.activation_checkpointing and cfg.model == "gpt"
        for windows in counts:
            x = torch.randint(0, vocab_size, (windows, cfg.block_size), device=device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            weights = torch.cuda.memory_allocated(device)
            with autocast(device, dtype):
                _, loss = model(x, x)
            loss.backward()
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - weights)
            model.zero_grad(set_to_none=True)
            del x, loss
    except torch.OutOfMemoryError:
        return None
    finally:
        model = None
        torch.cuda.empty_cache()
    per_window = max(0, (peaks[2] - peaks[1]) // (counts[2] - counts[1]))
    return Measured(per_window, max(0, peaks[1] - per_window * counts[1]))


def memory_plan(cfg: TrainConfig, vocab_size: int, dtype: torch.dtype, device_type: str,
                world_size: int = 1, teacher_parameters: int = 0, fsdp: bool = False,
                measured: Measured | None = None) -> MemoryPlan:
    """`teacher_parameters`: a distilled run's teacher (--teacher), whose fp32 weights stay
    alive, and whose logits join the student's for each window. `fsdp`: sharded across
    `world_size` processes (the bigram and Muon are refused under FSDP: not planned for it).
    `measured` (`measure_on_gpu`): the activations and the backward pass's temporaries as the
    GPU holds them, in place of the count and the CPU's coefficients."""
    model_cfg: ModelConfig = cfg.model_config(vocab_size)
    with torch.device("meta"):
        model = build_model(model_cfg).train()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    half = dtype in HALF
    # where attention keeps its scores: on a CPU, torch's fused kernel has no dropout (with
    # dropout torch runs its math path), and in bf16 this toolkit runs its plain path
    scores = device_type == "cpu" and (
        model_cfg.dropout > 0 or (dtype == torch.bfloat16 and model_cfg.block_size <= PLAIN_ATTENTION_MAX_T))
    kept, kept_scores = saved_bytes(model, model_cfg.block_size, half, scores)
    layers = model_cfg.n_layer if model_cfg.kind == "gpt" else 1  # a bigram has no blocks (n_layer is a default)
    recompute = cfg.activation_checkpointing and model_cfg.kind == "gpt"
    block, block_scores = kept // layers, kept_scores // layers  # one block's, as kept without checkpointing
    if recompute:
        model.checkpoint_blocks = True
        kept, _ = saved_bytes(model, model_cfg.block_size, half, scores)
    # While a block's backward runs, beside what is kept: its activations' gradients and the
    # kernels' temporaries (2.25 blocks' worth of the activations other than attention's
    # scores, a third of the scores', whose gradients come one at a time) and, when the block
    # was not kept, the block itself once more, recomputed. Measured on a CPU
    # (bench/plan_bench.py, docs/benchmarks.md#memory-plan).
    others = block - block_scores
    transient = int(BLOCKS_IN_FLIGHT * others + block_scores / 3) + (block if recompute else 0)
    transient += model_cfg.block_size * vocab_size * 4  # the logits' gradient, fp32 at the loss
    moments = 8 * n
    if cfg.optimizer == "muon" and model_cfg.kind == "gpt":
        hidden = sum(p.numel() for p in hidden_matrices(model))
        moments = 8 * (n - hidden) + 4 * hidden
    average = 4 * n if cfg.ema else 0
    shards = world_size if fsdp else 1
    if fsdp and model_cfg.kind == "gpt":
        block_weights = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
        root = n - sum(p.numel() for p in model.blocks.parameters())
        gathered = 4 * root + 2 * block_weights * (2 if dtype == torch.bfloat16 else 4)
        # autocast's half copies of the root's weights; the blocks are gathered in bf16 already
        extra = gathered + 4 * block_weights + (2 * root if half else 0)
    else:
        extra = (2 * n if half else 0) + ddp_buckets(n, world_size)
    if measured is not None:
        kept, transient = measured.per_window, 0
        if not fsdp:  # the measured fixed part holds the gradients and autocast's copies, whole
            extra = max(0, measured.fixed - 4 * n) + ddp_buckets(n, world_size)
    if teacher_parameters:
        extra += teacher_parameters * 4  # its weights (autocast keeps no copies of weights without gradients)
        transient += 2 * model_cfg.block_size * vocab_size * 4  # its logits and their log-softmax, fp32
    return MemoryPlan(parameters=n, weights=4 * n // shards, gradients=4 * n // shards,
                      optimizer=(moments + average) // shards, activations_per_window=kept,
                      transient_per_window=transient, fixed_extra=extra)


def ddp_buckets(parameters: int, world_size: int) -> int:
    """DDP's gradient buckets in flight, never more than the gradients themselves."""
    return min(DDP_BUCKETS, 4 * parameters) if world_size > 1 else 0


def describe(plans: dict[str, MemoryPlan], cfg: TrainConfig, dtype_name: str, world_size: int, budget: int | None,
             budget_of: str, measured: bool = False) -> str:
    """The plans (by their column's title: "DDP" and "FSDP", or one for a single process) as
    gpt-train --plan prints them."""
    windows = cfg.batch_size
    tokens = windows * cfg.block_size
    first = next(iter(plans.values()))

    def mb(x: int) -> str:
        return f"{x / 2**20:,.1f} MB" if x < 10 * 2**30 else f"{x / 2**30:,.2f} GB"

    def row(label: str, value) -> str:
        return f"  {label:<22}" + "".join(f"{mb(value(p)):>14}" for p in plans.values())

    lines = [
        f"model: {first.parameters:,} parameters; {dtype_name} products, micro-batch {windows} x {cfg.block_size} "
        f"= {tokens:,} tokens" + (f", {world_size} processes" if world_size > 1 else ""),
        "memory per process:" + " " * 5 + "".join(f"{title:>14}" for title in plans),
        row("weights (fp32)", lambda p: p.weights),
        row("gradients (fp32)", lambda p: p.gradients),
        row("optimizer state", lambda p: p.optimizer) + (" (with the weights' average)" if cfg.ema else ""),
        row("activations", lambda p: p.activations(windows))
        + (" (blocks recomputed: --activation-checkpointing)" if cfg.activation_checkpointing else "")
        + (" (measured on this GPU at 2 and 4 windows, with the backward pass's temporaries)" if measured else ""),
        row("other", lambda p: p.fixed_extra + p.transient_per_window * windows)
        + " (half-precision weight copies, the logits' gradient, DDP's buckets or FSDP's whole weights, a --teacher)",
        row("peak", lambda p: p.peak(windows)),
    ]
    if budget is not None:
        for title, plan in plans.items():
            fits = plan.largest_windows(budget)
            under = f" under {title}" if len(plans) > 1 else ""
            lines.append(f"largest micro-batch{under} that fits {mb(budget)} ({budget_of}): {fits} windows"
                         + ("" if fits else ": the weights and optimizer state alone do not fit"))
    return "\n".join(lines)


def plan_report(preset: str | None, overrides: dict, processes: int | None = None) -> str:
    """What `gpt-train --plan` prints for these options: nothing is trained, no folder made."""
    from ..config import FSDP_FP16, ConfigError
    from ..device import DTYPES, available_memory, resolve_device, resolve_dtype
    from ..store.runs import load_data
    from .errors import TrainError
    from .presets import default_preset, layered_config

    if overrides.get("init_from") or overrides.get("lora"):
        raise TrainError("--plan plans a run from scratch; leave out --init-from and --lora")
    device = resolve_device(overrides.get("device") or "auto")
    cfg = layered_config(preset or default_preset(device.type, overrides.get("model")), overrides)
    vocab_size = len(load_data(cfg.data).tokenizer)
    dtype = resolve_dtype(cfg.dtype, device, training=True)
    world_size = processes or int(os.environ.get("WORLD_SIZE", "1"))
    teacher = 0
    if cfg.teacher:
        from ..store.load import load_any_model

        teacher = sum(p.numel() for p in load_any_model(cfg.teacher, "cpu")[0].parameters())
    measured = measure_on_gpu(cfg, vocab_size, dtype, device) if device.type == "cuda" else None
    plans, refused = {}, ""
    if not cfg.fsdp:
        plans["DDP" if world_size > 1 else "one process"] = memory_plan(cfg, vocab_size, dtype, device.type,
                                                                        world_size, teacher, measured=measured)
    if world_size > 1 or cfg.fsdp:
        # as --fsdp would train it: a preset's Muon gives way to AdamW, and what it refuses is said
        sharded_cfg = layered_config(cfg.preset, {**overrides, "fsdp": True})
        try:
            sharded_cfg.validate()
            if dtype == torch.float16:
                raise ConfigError(f"--fsdp: {FSDP_FP16}")
            plans["FSDP"] = memory_plan(sharded_cfg, vocab_size, dtype, device.type, world_size, teacher, fsdp=True,
                                        measured=measured)
        except ConfigError as e:
            if cfg.fsdp:
                raise
            refused = f"\nFSDP: not planned, {str(e).removeprefix('--fsdp: ')}"
    if device.type == "cuda":
        budget, of = torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)}"
    else:  # the processes torchrun starts on this machine share its memory
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        budget = available_memory()
        budget = budget // local if budget is not None else None
        of = "this machine's available memory" + (f" / {local} processes" if local > 1 else "")
    name = next(n for n, d in DTYPES.items() if d == dtype)
    return describe(plans, cfg, name, world_size, budget, of, measured is not None) + refused
