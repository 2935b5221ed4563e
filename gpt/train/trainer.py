"""One run's training state and its step: batches -> model -> optimizer -> evaluations -> checkpoints.

A `Trainer` holds one run's model, optimizer, data and clocks (`loop.Loop` runs it), the same
code for one process and for many started by torchrun: each rank draws its own batches, DDP
averages gradients, rank 0 alone writes; under --fsdp every rank writes its part (sharding.py).
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data_prep import tokenizer_from_json
from plumbing.errors import first_line

from .. import lora
from ..config import FSDP_FP16, ModelConfig, TrainConfig
from ..device import autocast, available_memory, configure_backends, is_out_of_memory, resolve_dtype
from ..model import build_model
from ..plot.live import ProgressPicture
from ..store import sharded
from ..store.checkpoint import plain_state_dict, remove_stale_shards, save_checkpoint, training_state
from ..store.layout import LATEST
from ..store.runs import load_data
from . import sharding, trackers
from .average import WeightAverage
from .base import Base
from .batches import BatchSampler, BlockSizeError, fixed_windows
from .distill import Teacher
from .distributed import Dist
from .errors import TrainError
from .metrics import MetricsLog
from .optim import Optimizers
from .rng import rng_state, set_rng_state
from .schedule import Schedule


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    val_loss: float | None
    best_val_loss: float | None
    stopped_by: str  # "max_iters", "max_time", "patience", "cooldown", "signal SIGINT"/"signal SIGTERM", "request"
    history: list = field(default_factory=list)  # (step, train loss) of every step
    model: torch.nn.Module | None = None  # the trained model (this rank's copy; under FSDP rank 0's, on its host)
    best_step: int | None = None  # the step best.pt was saved at
    previous_run_restored: bool = False  # an --overwrite run stopped before its first evaluation


class Trainer:
    def __init__(self, cfg: TrainConfig, dist_: Dist, device: torch.device, resume_state: dict | None, run_dir: Path,
                 log: Callable[[str], None], base: Base | None = None):
        """`base`: where a fine-tuning run starts from (a LoRA run's, resumed too: it saves adapters only)."""
        self.cfg, self.dist, self.device, self.run_dir, self.log, self.base = cfg, dist_, device, run_dir, log, base
        # where a fine-tuning run came from: its base, or what a resumed run recorded
        self.origin = base.ref if base is not None else (resume_state or {}).get("init_from")
        self.dtype = resolve_dtype(cfg.dtype, device, training=True)
        if cfg.fsdp and self.dtype == torch.float16:  # --dtype auto on a GPU without bf16
            raise TrainError(f"--fsdp on {device}: {FSDP_FP16}")
        configure_backends(device)
        self.data = load_data(cfg.data)
        self.tokenizer = self.data.tokenizer
        self.model_cfg, self.fsdp = self.model_config(resume_state, base), cfg.fsdp
        # under FSDP each rank keeps its part of the weights it initialised: every rank must
        # initialise the same ones (DDP gives every rank rank 0's instead)
        torch.manual_seed(cfg.seed + (0 if self.fsdp else dist_.rank))
        self.open_batches()
        # mean nats per token x tokens per character = nats per character, whatever the tokenizer
        self.tokens_per_char = self.data.tokens_per_character("val")
        # under FSDP built whole on the host, then sharded onto the device: each GPU holds its part only
        self.model = self.built_model("cpu" if self.fsdp else device)
        if self.fsdp and dist_.rank:
            torch.manual_seed(cfg.seed + dist_.rank)  # each rank's own dropout masks from here on
        if base is not None:
            self.model.load_state_dict(base.state["model"])  # a resumed full fine-tuning run overwrites them below
            base.release_weights()
        if self.fsdp:
            sharding.shard_model(self.model, device, dist_.world_size, self.dtype)
        if cfg.lora:
            lora.apply(self.model, cfg.lora, cfg.lora_scale_alpha, lora.parse_targets(cfg.lora_targets),
                       new=resume_state is None)
        if cfg.activation_checkpointing:
            self.model.checkpoint_blocks = True
        self.teacher = None
        if cfg.teacher:
            recorded = resume_state.get("teacher") if resume_state is not None else None
            self.teacher = Teacher.load(cfg.teacher, self.tokenizer.fingerprint(), cfg.data, device,
                                        cfg.distill_weight, cfg.distill_temperature, recorded, cfg.block_size)
        self.optimizers = Optimizers(self.model, cfg, device, self.dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.resume_from = Path(resume_state["path"]) if resume_state is not None and "path" in resume_state else None
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.schedule = Schedule.from_config(cfg)
        self.average = None
        if resume_state is not None:
            self._restore(resume_state)
        self.wrap_model()
        self.global_batch = cfg.batch_size * cfg.grad_accum * dist_.world_size
        self.after_save: Callable[[], None] | None = None  # rank 0's: the run folder settles an --overwrite
        self.metrics = MetricsLog(run_dir, enabled=dist_.is_main)
        if cfg.trackers and dist_.is_main:
            self.metrics.trackers = trackers.Trackers(trackers.parse(cfg.trackers), run_dir, asdict(cfg))
        self.picture = ProgressPicture(run_dir, enabled=dist_.is_main)
        self.start_clock()

    def model_config(self, resume_state: dict | None, base: Base | None) -> ModelConfig:
        """The model's shape: a resumed run's own, a fine-tuning base's, or the options'; the
        data must use the vocabulary the first two were trained on."""
        cfg, fingerprint = self.cfg, self.tokenizer.fingerprint()
        if resume_state is not None:
            if resume_state.get("data_fingerprint") != fingerprint:
                raise TrainError(f"data folder {cfg.data} has a different vocabulary from the checkpoint's; "
                                 "resume with the data the run was trained on")
            return ModelConfig.from_dict(resume_state["model_config"])
        if base is not None:
            if tokenizer_from_json(base.state["tokenizer"]).fingerprint() != fingerprint:
                raise TrainError(f"data folder {cfg.data} has a different vocabulary from the base model's; "
                                 f"prepare the new text with its vocabulary: "
                                 f"gpt-prepare NEW_TEXT --vocab-from {cfg.init_from}")
            return ModelConfig.from_dict({**base.state["model_config"], "dropout": cfg.dropout})
        return cfg.model_config(len(self.tokenizer))

    def open_batches(self) -> None:
        """The training batch sampler and the fixed validation windows, refused where the
        batch's windows alone would fill the host's memory."""
        cfg, vocab = self.cfg, len(self.tokenizer)
        try:
            self.sampler = BatchSampler(self.data.split("train"), cfg.block_size, cfg.batch_size, cfg.seed,
                                        self.dist.rank, vocab)
            self.val_x, self.val_y = fixed_windows(self.data.split("val"), cfg.block_size, cfg.eval_windows,
                                                   vocab_size=vocab)
        except BlockSizeError as e:
            raise TrainError(str(e)) from None
        windows = self.sampler.batch_bytes()
        available = available_memory()
        if available is not None and windows > available // 2:
            raise TrainError(self.too_large(f"host memory (its token windows alone take {windows / 2**30:.1f} GiB "
                                            f"of {available / 2**30:.1f} GiB available)"))

    def wrap_model(self) -> None:
        """What the steps call: the model, in DDP across ranks, compiled if asked; and the
        weights' average, started from the weights every rank now holds alike."""
        cfg, device = self.cfg, self.device
        self.ddp = None
        self.forward_model = self.model
        if self.dist.world_size > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = self.forward_model = DDP(self.model,
                                                device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.ema and self.average is None:
            # from the weights as they are (initialised, a base's, or resumed), after DDP has
            # given every rank rank 0's: each rank must hold the same average
            self.average = WeightAverage(self.trained_parameters(), cfg.ema, in_place=self.fsdp)
        self.compiled = cfg.compile
        if cfg.compile:
            self.forward_model = torch.compile(self.forward_model)

    # -- state -------------------------------------------------------------------------------
    def _restore(self, s: dict) -> None:
        try:
            if self.cfg.ema and s.get("average_updates") is not None:
                self.average = WeightAverage(self.trained_parameters(), self.cfg.ema, int(s["average_updates"]),
                                             in_place=self.fsdp)
            if self.fsdp:
                sharding.restore(self, s)
            else:
                # with an average, "model" is the average and the optimizer's weights are beside it
                self.load_weights(s.get("trained_model", s["model"]))
                if self.average is not None:
                    with self.average.applied():
                        self.load_weights(s["model"])
                self.optimizers.load_state_dict(s)
            if s.get("scaler"):
                self.scaler.load_state_dict(s["scaler"])
        except (RuntimeError, ValueError, KeyError, lora.LoRAError) as e:
            raise TrainError(f"checkpoint does not fit this model ({first_line(e)})") from None
        self.step, self.tokens = int(s["step"]), int(s["tokens"])
        self.elapsed_before = float(s["elapsed"])
        self.schedule.restore(s)
        ranks = s.get("rank_states", [])
        if self.dist.rank < len(ranks):
            set_rng_state(ranks[self.dist.rank]["rng"])
            self.sampler.load_state(ranks[self.dist.rank]["sampler"])
        else:  # more ranks than the run had: a fresh, still reproducible stream for this one
            self.sampler.rng = np.random.default_rng([self.cfg.seed, self.dist.rank, self.step])

    def load_weights(self, weights: dict) -> None:
        if self.cfg.lora:
            lora.load_adapter_state(self.model, weights)
        else:
            self.model.load_state_dict(weights)

    def weights(self) -> dict:
        """What a checkpoint keeps of the model: the adapters of a LoRA run, else every weight."""
        return lora.adapter_state(self.model) if self.cfg.lora else plain_state_dict(self.model)

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def averaged(self):
        """The run's model in its parameters for the duration: the average where there is one."""
        return self.average.applied() if self.average is not None else nullcontext()

    def state(self, val_loss: float | None) -> dict:
        """The checkpoint's contents; under FSDP without the tensors, which `save` writes sharded."""
        ranks = self.dist.gather_objects({"rng": rng_state(), "sampler": self.sampler.state()})
        average = self.average is not None
        model = trained = {}
        if not self.fsdp:
            with self.averaged():
                model = self.weights()  # views of the average's tensors, written before the next step moves them
            trained = self.weights() if average else {}
        return training_state(
            model_config=self.model_cfg.to_dict(), train_config=asdict(self.cfg), model=model,
            trained_model=trained if average else None,
            average_updates=self.average.updates if average else None,
            lineage=self.lineage(), optimizers=self.optimizers.state_dict() if not self.fsdp else {},
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            step=self.step, tokens=self.tokens, elapsed=self.elapsed(), val_loss=val_loss,
            **self.schedule.state(), rank_states=ranks, world_size=self.dist.world_size,
            tokenizer=self.tokenizer.to_json(), data_fingerprint=self.tokenizer.fingerprint())

    def lineage(self) -> dict:
        """Where a fine-tuning run came from; for LoRA, what sampling needs to rebuild it; the
        teacher a distilled run learns from (its file and SHA-256)."""
        teacher = {"teacher": self.teacher.ref} if self.teacher is not None else {}
        if self.origin is None:
            return teacher
        out = {"init_from": self.origin, **teacher}
        if self.cfg.lora and self.base is not None:
            out["lora"] = {"rank": self.cfg.lora, "alpha": self.cfg.lora_scale_alpha,
                           "targets": list(lora.parse_targets(self.cfg.lora_targets)), "base": self.base.ref}
        return out

    def save(self, val_loss: float | None, best: bool = False) -> None:
        """The latest checkpoint, which is also the best one when `val_loss` is the lowest yet."""
        state = self.state(val_loss)  # every rank takes part in gathering the RNG states
        try:
            if self.fsdp:
                sharding.save(self, state, best)
            elif self.dist.is_main:
                save_checkpoint(self.run_dir / LATEST, state, best=best)
        except (OSError, sharded.ShardError) as e:
            kept = ("the previous checkpoint is kept" if (self.run_dir / LATEST).exists()
                    else "no checkpoint was saved")
            reason = e.strerror or first_line(e) if isinstance(e, OSError) else str(e)
            raise TrainError(f"cannot write a checkpoint in {self.run_dir} ({reason}); {kept}") from None
        if self.dist.is_main:
            remove_stale_shards(self.run_dir)
            if self.after_save is not None:
                self.after_save()
        self.dist.barrier()

    def start_clock(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    # -- steps -------------------------------------------------------------------------------
    def train_step(self, lr: float) -> torch.Tensor:
        self.optimizers.set_lr(lr)
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            x, y = self.sampler.next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == self.cfg.grad_accum - 1
            # DDP averages gradients across ranks on the last micro-step only
            sync = self.ddp.no_sync() if (self.ddp is not None and not last) else nullcontext()
            with sync, autocast(self.device, self.dtype):
                logits, loss = self.forward_model(x, y)
                if self.teacher is not None:
                    loss = self.teacher.loss(x, logits, loss)
                loss = loss / self.cfg.grad_accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.optimizers.step(self.scaler, self.cfg.grad_clip, self.model.parameters())
        if self.average is not None:
            self.average.update()
        return total

    def first_step(self, lr: float) -> torch.Tensor:
        """The first step, where torch.compile does its work: if compiling fails, fall back
        to eager mode with a warning instead of failing the run."""
        try:
            return self.train_step(lr)
        except Exception as e:
            if not self.compiled or is_out_of_memory(e):
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); training in eager mode")
            torch._dynamo.reset()
            self.forward_model = self.ddp if self.ddp is not None else self.model
            self.compiled = False
            self.optimizers.zero_grad()
            return self.train_step(lr)

    def built_model(self, device: torch.device | str) -> torch.nn.Module:
        """The model, initialised on `device`; one that does not fit there is said in one line."""
        try:
            return build_model(self.model_cfg).to(device)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            cfg = self.model_cfg
            raise TrainError(f"the model ({cfg.n_layer} layers of {cfg.n_embd} channels) does not fit in {device} "
                             f"memory ({first_line(e)}); choose a smaller --n-embd or --n-layer") from None

    def too_large(self, where: str) -> str:
        return (f"a batch of {self.cfg.batch_size} x {self.cfg.block_size} tokens does not fit in {where}; "
                "lower --batch-size or --block-size (--grad-accum keeps the effective batch)")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss of the run's model (the average, where there is one) over the fixed
        validation windows (split across ranks, then averaged)."""
        self.model.eval()
        n, b, ranks = len(self.val_x), self.cfg.batch_size, self.dist.world_size
        mine = list(range(self.dist.rank * b, n, b * ranks))
        # under FSDP every forward pass gathers weights from every rank: each rank makes as
        # many as the first, the extra ones on its first window, not counted
        passes = len(range(0, n, b * ranks)) if self.fsdp else len(mine)
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        with self.averaged():
            for k in range(passes):
                i = mine[k] if k < len(mine) else 0
                x = self.val_x[i : i + b].to(self.device)
                y = self.val_y[i : i + b].to(self.device)
                with autocast(self.device, self.dtype):
                    _, loss = self.model(x, y)
                if k < len(mine):
                    sums[0] += loss.double() * len(x)
                    sums[1] += len(x)
        self.dist.all_reduce(sums)
        self.model.train()
        return (sums[0] / sums[1]).item()
