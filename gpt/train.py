"""The training loop: data -> batches -> model -> optimizer steps -> evaluations -> checkpoints.

`train(TrainConfig)` runs or resumes a run in one run folder. It is the same code for one
process and for many started by torchrun (`python -m gpt.train` or `gpt-train` detect
it): each rank draws its own batches, gradients are averaged by DDP, rank 0 alone writes.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import data_prep

from . import checkpoint as ck
from .batches import BatchSampler, BlockSizeError, fixed_windows
from .config import ConfigError, ModelConfig
from .device import autocast, configure_backends, resolve_device, resolve_dtype
from .distributed import Dist, init_distributed
from .model import build_model, count_parameters
from .optim import learning_rate, make_optimizer
from .presets import PRESETS, default_preset
from .rng import rng_state, set_rng_state
from .signals import StopFlag


class TrainError(Exception):
    """A run that cannot start or go on; the message says why and what was kept."""


class NonFiniteLoss(TrainError):
    pass


@dataclass
class TrainConfig:
    data: str = "data"
    out: str | None = None  # the run folder; default checkpoints/<model>-<time>
    preset: str | None = None
    # model
    model: str = "gpt"
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    dropout: float = 0.2
    pos: str = "rope"
    bias: bool = False
    # optimisation
    batch_size: int = 64
    grad_accum: int = 1
    max_iters: int | None = 5000
    max_time: float | None = None  # seconds of wall-clock for the whole run
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation and logging
    eval_interval: int = 250
    eval_windows: int = 256
    log_interval: int = 10
    # machine
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    seed: int = 1337
    progress: bool = True

    def validate(self) -> None:
        positive = ["batch_size", "grad_accum", "eval_interval", "eval_windows", "log_interval", "block_size"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_iters is None and self.max_time is None:
            raise ConfigError("give --max-iters or --max-time (or both)")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError(f"--max-iters must be at least 1, got {self.max_iters}")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError(f"--max-time must be positive, got {self.max_time}")
        if not self.lr > 0 or (self.min_lr is not None and self.min_lr < 0):
            raise ConfigError("--lr must be positive and --min-lr not negative")
        if self.warmup_iters < 0:
            raise ConfigError(f"--warmup-iters must not be negative, got {self.warmup_iters}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(kind=self.model, vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                           n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, pos=self.pos, bias=self.bias)

    @classmethod
    def build(cls, preset: str | None, overrides: dict, base: dict | None = None) -> "TrainConfig":
        """Defaults, then a preset (or a saved run's config), then explicit options."""
        values = dict(base or {})
        if base is None and preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
            values.update(PRESETS[preset], preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


MODEL_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size", "dropout", "pos", "bias")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    val_loss: float | None
    best_val_loss: float | None
    stopped_by: str  # "max_iters", "max_time", "signal SIGINT"/"signal SIGTERM", "request"
    history: list = field(default_factory=list)  # (step, train loss) of every step
    model: torch.nn.Module | None = None  # the trained model (this rank's copy)


def is_out_of_memory(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg


class Trainer:
    def __init__(self, cfg: TrainConfig, dist_: Dist, device: torch.device, resume_state: dict | None, run_dir: Path,
                 log: Callable[[str], None]):
        self.cfg, self.dist, self.device, self.run_dir, self.log = cfg, dist_, device, run_dir, log
        self.dtype = resolve_dtype(cfg.dtype, device)
        configure_backends(device)
        self.data = data_prep.load(cfg.data)
        self.tokenizer = self.data.tokenizer
        if resume_state is not None:
            self.model_cfg = ModelConfig.from_dict(resume_state["model_config"])
            if resume_state.get("data_fingerprint") != self.tokenizer.fingerprint():
                raise TrainError(f"data folder {cfg.data} has a different vocabulary from the checkpoint's; resume with the data the run was trained on")
        else:
            self.model_cfg = cfg.model_config(len(self.tokenizer))
        torch.manual_seed(cfg.seed + dist_.rank)
        try:
            self.sampler = BatchSampler(self.data.split("train"), cfg.block_size, cfg.batch_size, cfg.seed, dist_.rank)
            self.val_x, self.val_y = fixed_windows(self.data.split("val"), cfg.block_size, cfg.eval_windows)
        except BlockSizeError as e:
            raise TrainError(str(e)) from None
        val_meta = self.data.meta["splits"]["val"]
        self.tokens_per_char = val_meta["tokens"] / max(val_meta["characters"], 1)
        self.model = build_model(self.model_cfg).to(device)
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.step, self.tokens, self.elapsed_before, self.best_val = 0, 0, 0.0, math.inf
        if resume_state is not None:
            self._restore(resume_state)
        self.forward_model = self.model
        if dist_.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self.forward_model = self.ddp
        else:
            self.ddp = None
        self.compiled = False
        if cfg.compile:
            self.forward_model = torch.compile(self.forward_model)
            self.compiled = True
        self.global_batch = cfg.batch_size * cfg.grad_accum * dist_.world_size

    # -- state -------------------------------------------------------------------------------
    def _restore(self, s: dict) -> None:
        try:
            self.model.load_state_dict(s["model"])
            # the saved param groups carry the implementation choice of the machine that
            # wrote them (fused on CUDA, say); this machine's own choice stays
            fused = [g.get("fused") for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(s["optimizer"])
            for g, f in zip(self.optimizer.param_groups, fused):
                g["fused"] = f
            if s.get("scaler"):
                self.scaler.load_state_dict(s["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainError(f"checkpoint does not fit this model ({str(e).splitlines()[0]})") from None
        self.step, self.tokens = int(s["step"]), int(s["tokens"])
        self.elapsed_before = float(s["elapsed"])
        self.best_val = float(s["best_val_loss"]) if s.get("best_val_loss") is not None else math.inf
        ranks = s.get("rank_states", [])
        if self.dist.rank < len(ranks):
            set_rng_state(ranks[self.dist.rank]["rng"])
            self.sampler.load_state(ranks[self.dist.rank]["sampler"])
        else:  # more ranks than the run had: a fresh, still reproducible stream for this one
            self.sampler.rng = np.random.default_rng([self.cfg.seed, self.dist.rank, self.step])

    def state(self, val_loss: float | None) -> dict:
        ranks = self.dist.gather_objects({"rng": rng_state(), "sampler": self.sampler.state()})
        return {
            "model_config": self.model_cfg.to_dict(),
            "train_config": asdict(self.cfg),
            "model": ck.plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed(),
            "val_loss": val_loss,
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            "rank_states": ranks,
            "world_size": self.dist.world_size,
            "tokenizer": self.tokenizer.to_json(),
            "data_fingerprint": self.tokenizer.fingerprint(),
        }

    def save(self, val_loss: float | None) -> None:
        state = self.state(val_loss)  # every rank takes part in gathering the RNG states
        if self.dist.is_main:
            ck.save_checkpoint(self.run_dir / ck.LATEST, state)
            if val_loss is not None and val_loss <= self.best_val:
                # the best checkpoint is the file just written: a hard link, atomically renamed
                tmp = self.run_dir / f".{ck.BEST}.tmp-{os.getpid()}"
                tmp.unlink(missing_ok=True)
                os.link(self.run_dir / ck.LATEST, tmp)
                os.replace(tmp, self.run_dir / ck.BEST)
        self.dist.barrier()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    # -- steps -------------------------------------------------------------------------------
    def progress(self, elapsed: float) -> float:
        cfg = self.cfg
        parts = []
        if cfg.max_iters:
            parts.append((self.step - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1))
        if cfg.max_time:
            parts.append(elapsed / cfg.max_time)
        return max(parts)

    def train_step(self, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            x, y = self.sampler.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == self.cfg.grad_accum - 1
            # DDP averages gradients across ranks on the last micro-step only
            sync = self.ddp.no_sync() if (self.ddp is not None and not last) else nullcontext()
            with sync, autocast(self.device, self.dtype):
                _, loss = self.forward_model(x, y)
                loss = loss / self.cfg.grad_accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def first_step(self, lr: float) -> torch.Tensor:
        """The first step, where torch.compile does its work: if compiling fails, fall back
        to eager mode with a warning instead of failing the run."""
        try:
            return self.train_step(lr)
        except Exception as e:
            if not self.compiled or is_out_of_memory(e):
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); training in eager mode")
            torch._dynamo.reset()
            self.forward_model = self.ddp if self.ddp is not None else self.model
            self.compiled = False
            self.optimizer.zero_grad(set_to_none=True)
            return self.train_step(lr)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows (split across ranks, then averaged)."""
        self.model.eval()
        n = len(self.val_x)
        mine = range(self.dist.rank * self.cfg.batch_size, n, self.cfg.batch_size * self.dist.world_size)
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        for i in mine:
            x = self.val_x[i : i + self.cfg.batch_size].to(self.device)
            y = self.val_y[i : i + self.cfg.batch_size].to(self.device)
            with autocast(self.device, self.dtype):
                _, loss = self.model(x, y)
            sums[0] += loss.double() * len(x)
            sums[1] += len(x)
        self.dist.all_reduce(sums)
        self.model.train()
        return (sums[0] / sums[1]).item()

    # -- the loop ------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
        cfg, main = self.cfg, self.dist.is_main
        self.t0 = time.perf_counter()
        stop = StopFlag()
        stop.install()
        metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") if main else None
        total = cfg.max_iters if cfg.max_iters else None
        bar = tqdm(total=total, initial=self.step, disable=not (main and cfg.progress), unit="step", dynamic_ncols=True)
        pending: list[tuple[int, torch.Tensor]] = []
        history: list[tuple[int, float]] = []
        val_loss, stopped_by = None, ""
        window_t, window_tokens = time.perf_counter(), 0
        min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10

        def write(record: dict) -> None:
            if metrics:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()

        def check_losses() -> list[float]:
            values = torch.stack([l for _, l in pending]).tolist() if pending else []
            for (s, _), v in zip(pending, values):
                if not math.isfinite(v):
                    raise NonFiniteLoss(f"the loss became {v} at step {s}; stopped without saving, the last good checkpoint in {self.run_dir} is kept (try a lower --lr)")
            history.extend((s, v) for (s, _), v in zip(pending, values))
            pending.clear()
            return values

        try:
            self.model.train()
            while True:
                elapsed, signum = self.elapsed(), stop.signum or 0
                if self.dist.world_size > 1:
                    # signals on any rank stop every rank; the time budget runs on the slowest clock
                    flags = torch.tensor([float(signum), elapsed], device=self.device, dtype=torch.float64)
                    self.dist.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                    signum, elapsed = int(flags[0].item()), float(flags[1].item())
                if cfg.max_iters and self.step >= cfg.max_iters:
                    stopped_by = "max_iters"
                elif cfg.max_time and elapsed >= cfg.max_time:
                    stopped_by = "max_time"
                elif signum:
                    stopped_by = f"signal {signal.Signals(signum).name}"
                elif should_stop is not None and should_stop(self.step):
                    stopped_by = "request"
                if stopped_by:
                    break
                lr = learning_rate(self.step, self.progress(elapsed), cfg.lr, min_lr, cfg.warmup_iters)
                step_fn = self.first_step if not history and not pending else self.train_step
                loss = step_fn(lr)
                self.step += 1
                self.tokens += self.global_batch * cfg.block_size
                window_tokens += self.global_batch * cfg.block_size
                pending.append((self.step, loss))
                bar.update(1)  # without --max-iters the bar counts steps with no end shown
                if self.step % cfg.log_interval == 0:
                    values = check_losses()
                    now = time.perf_counter()
                    tps = window_tokens / (now - window_t)
                    window_t, window_tokens = now, 0
                    train_loss = sum(values) / len(values)
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                    write({"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed(), 3), "train_loss": train_loss, "lr": lr, "tokens_per_s": tps})
                if self.step % cfg.eval_interval == 0:
                    check_losses()
                    val_loss = self.record_eval(write, history, bar)
            check_losses()
            if stopped_by in ("max_iters", "max_time"):
                # training always ends with an evaluation (unless this step just had one)
                if val_loss is None or self.step % cfg.eval_interval:
                    val_loss = self.record_eval(write, history, bar)
            else:  # a signal or a request: checkpoint where we are, quickly
                self.save(None)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            if is_out_of_memory(e):
                raise TrainError(f"a batch of {cfg.batch_size} x {cfg.block_size} tokens does not fit in {self.device} memory; lower --batch-size or --block-size (--grad-accum keeps the effective batch)") from None
            raise
        finally:
            bar.close()
            stop.restore()
            if metrics:
                metrics.close()
        return TrainResult(self.run_dir, self.step, self.tokens, val_loss, None if math.isinf(self.best_val) else self.best_val, stopped_by, history, self.model)

    def record_eval(self, write, history, bar) -> float:
        val_loss = self.evaluate()
        if not math.isfinite(val_loss):
            raise NonFiniteLoss(f"the validation loss became {val_loss} at step {self.step}; stopped without saving, the last good checkpoint in {self.run_dir} is kept")
        bpc = val_loss / math.log(2) * self.tokens_per_char
        recent = [v for s, v in history[-self.cfg.log_interval:]]
        train_loss = sum(recent) / len(recent) if recent else None
        improved = val_loss < self.best_val
        write({"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed(), 3), "train_loss": train_loss, "val_loss": val_loss, "val_bpc": bpc})
        if self.dist.is_main:
            tr = f"train {train_loss:.4f}, " if train_loss is not None else ""
            self.log(f"step {self.step}: {tr}val {val_loss:.4f} ({bpc:.3f} bits/char){' *' if improved else ''}")
        self.save_after_eval(val_loss)
        return val_loss

    def save_after_eval(self, val_loss: float) -> None:
        if val_loss < self.best_val:
            self.best_val = val_loss
        self.save(val_loss)


# -- entry -------------------------------------------------------------------------------------
def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return ck.DEFAULT_ROOT / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint a run resumes from (the crashed
    tail), so metrics.jsonl reads as one continuous run."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    ck.atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(preset: str | None = None, overrides: dict | None = None, resume: bool = False, overwrite: bool = False,
          should_stop: Callable[[int], bool] | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Start (or with `resume`, continue) a run. `overrides` are explicit option values;
    `should_stop(step)` lets a caller end the run at a step boundary (it is checkpointed)."""
    overrides = dict(overrides or {})
    dist_, device_name = init_distributed(overrides.get("device") or "auto")
    try:
        device = resolve_device(device_name)
        resume_state, run_dir = None, None
        if resume:
            run_dir = Path(overrides["out"]) if overrides.get("out") else ck.newest_run()
            resume_state = ck.load_checkpoint(ck.resolve_checkpoint(run_dir, prefer=ck.LATEST), map_location="cpu")
            saved = resume_state["train_config"]
            clash = [k for k in MODEL_FIELDS if overrides.get(k) is not None and overrides[k] != saved.get(k)]
            if clash:
                raise TrainError(f"options {', '.join('--' + k.replace('_', '-') for k in clash)} do not match the checkpoint's model ({', '.join(f'{k}={saved.get(k)}' for k in clash)})")
            overrides["out"] = str(run_dir)
            cfg = TrainConfig.build(None, overrides, base=saved)
        else:
            if preset is None and not any(overrides.get(k) is not None for k in MODEL_FIELDS):
                preset = default_preset(device.type)
            cfg = TrainConfig.build(preset, overrides)
            run_dir = new_run_dir(cfg)
            if (run_dir / ck.LATEST).exists() and not overwrite:
                raise TrainError(f"run folder {run_dir} already holds a run; --resume continues it, --overwrite starts it over")
        cfg.validate()
        if dist_.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        dist_.barrier()
        trainer = Trainer(cfg, dist_, device, resume_state, run_dir, log)
        if dist_.is_main:
            if resume_state is not None:
                trim_metrics(run_dir, trainer.step)
            ck.write_run_files(run_dir, {
                "model": trainer.model_cfg.to_dict(), "train": asdict(cfg), "world_size": dist_.world_size,
                "global_batch": trainer.global_batch, "tokens_per_step": trainer.global_batch * cfg.block_size,
            }, trainer.tokenizer)
            n = count_parameters(trainer.model)
            what = f"resuming {run_dir} at step {trainer.step}" if resume_state else f"training into {run_dir}"
            log(f"{what}: {trainer.model_cfg.kind} with {n / 1e6:.2f}M parameters on {device} ({str(trainer.dtype).replace('torch.', '')}), "
                f"global batch {trainer.global_batch} = {dist_.world_size} rank(s) x {cfg.batch_size} x {cfg.grad_accum} accumulation, context {cfg.block_size}")
        return trainer.run(should_stop)
    finally:
        dist_.close()


if __name__ == "__main__":
    from .train_cli import main

    sys.exit(main())
