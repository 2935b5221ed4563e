"""The training loop: steps, evaluations and checkpoints until the run ends.

    while the schedule, a signal or the caller does not end the run:
        one step (a batch per rank, gradients averaged, the optimizer's step)
        every --eval-interval steps: evaluate, save latest.pt (and best.pt when it improved)
    a last evaluation and checkpoint, as the reason for stopping asks

The `Trainer` (trainer.py) holds the run's model, optimizer, data and clocks; this module
holds what only the loop needs: the progress bar, the window of recent losses, the stop flag.
"""
from __future__ import annotations

import math
import signal
from typing import Callable

import torch

from ..device import is_out_of_memory
from . import sharding
from .errors import NonFiniteLoss, TrainError, kept
from .metrics import LossWindow, Throughput
from .progress import Progress
from .signals import StopFlag
from .trainer import Trainer, TrainResult


class Loop:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def run(self, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
        t = self.trainer
        cfg = t.cfg
        t.start_clock()
        self.losses = LossWindow(t.run_dir)
        self.progress = Progress(cfg.progress and t.dist.is_main, t.step, cfg.max_iters, cfg.max_time, t.log)
        val_loss, window = None, Throughput()
        stop = StopFlag()
        stop.install()
        if t.schedule.cooldown_due():  # a run that stopped early, resumed with --cooldown
            self.say_cooldown(t.schedule.resume_cooldown(t.step, t.elapsed_before))
        try:
            t.model.train()
            while True:
                stopped_by, elapsed = self.stop_reason(stop, should_stop)
                if stopped_by:
                    break
                self.one_step(elapsed, window)
                if t.step % cfg.eval_interval == 0:
                    with window.paused():
                        val_loss = self.evaluate_and_save()
            val_loss = self.finish(stopped_by, val_loss)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            if is_out_of_memory(e):
                raise TrainError(t.too_large(f"{t.device} memory")) from None
            raise
        finally:
            self.progress.close()
            stop.restore()
            t.metrics.close()
            t.picture.update(final=True)
            # DDP's reducer hooks the model's parameters and holds the process group: it must go
            # before the group does, not at interpreter exit, where gloo can abort the process
            t.ddp = t.forward_model = None
        if t.average is not None:
            t.average.swap()  # the run's model, handed back, is its average
        # under FSDP gathered whole, on rank 0's host only: no GPU need hold it all
        model = sharding.whole_model(t.model, t.model_cfg, t.dist.is_main) if t.fsdp else t.model
        best = t.schedule.state()["best_val_loss"]
        return TrainResult(t.run_dir, t.step, t.tokens, val_loss, best, stopped_by, self.losses.history, model,
                           t.schedule.best_step)

    def say_cooldown(self, cooldown: dict) -> None:
        t = self.trainer
        if t.dist.is_main:
            sched, cfg = t.schedule, t.cfg
            left = min(cooldown["steps"], cfg.max_iters - t.step) if cfg.max_iters else cooldown["steps"]
            budget = " or the time budget's end" if cfg.max_time else ""
            self.progress.say(f"step {t.step}: no better val loss in {sched.stale_evals} evaluations "
                              f"(best {sched.best_val:.4f} at step {sched.best_step}): "
                              f"cooling the learning rate down from {cooldown['lr']:.3g} to "
                              f"{cfg.final_lr:.3g} over {left} steps{budget}, then stopping")

    def stop_reason(self, stop: StopFlag, should_stop: Callable[[int], bool] | None) -> tuple[str, float]:
        """Why the run ends before this step ("" while it goes on), the same on every rank,
        and the elapsed time every rank's schedule then uses (the slowest clock's)."""
        t = self.trainer
        elapsed, signum = t.elapsed(), stop.signum or 0
        requested = should_stop is not None and should_stop(t.step)
        if t.dist.world_size > 1:
            # a signal or a request on any rank stops every rank; the time budget runs on the
            # slowest clock
            flags = torch.tensor([float(signum), elapsed, float(requested)], device=t.device, dtype=torch.float64)
            t.dist.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            signum, elapsed, requested = int(flags[0].item()), float(flags[1].item()), bool(flags[2].item())
        scheduled = t.schedule.end_reason(t.step, elapsed)
        if scheduled:
            return scheduled, elapsed
        if signum:
            return f"signal {signal.Signals(signum).name}", elapsed
        if requested:
            return "request", elapsed
        return "", elapsed

    def one_step(self, elapsed: float, window: Throughput) -> None:
        """A step at the schedule's rate for `elapsed`, counted, and logged every --log-interval."""
        t = self.trainer
        cfg = t.cfg
        lr = t.schedule.next_rate(t.step, elapsed)
        loss = (t.first_step if self.step_count_this_run() == 0 else t.train_step)(lr)
        t.step += 1
        t.tokens += t.global_batch * cfg.block_size
        window.add(t.global_batch * cfg.block_size)
        self.losses.add(t.step, loss)
        stats = None
        if t.step % cfg.log_interval == 0:
            stats = {"train_loss": self.losses.mean_of_pending(), "lr": lr, "tokens_per_s": window.rate()}
            if t.teacher is not None:  # the time its forward passes took, so far in this process
                stats["teacher_s"] = round(t.teacher.seconds, 3)
            if t.device.type == "cuda":  # the most this process has held, for the plan to be checked against
                stats["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(t.device) / 2**20, 1)
            t.metrics.write({"step": t.step, "tokens": t.tokens, "elapsed": round(t.elapsed(), 3), **stats})
        self.progress.step(t.step, t.elapsed(), stats)

    def finish(self, stopped_by: str, val_loss: float | None) -> float | None:
        """The run's last evaluation and checkpoint, as its reason for stopping asks."""
        t = self.trainer
        self.losses.check()
        if stopped_by in ("max_iters", "max_time", "cooldown"):
            # training always ends with an evaluation (unless this step just had one)
            if val_loss is None or t.step % t.cfg.eval_interval:
                return self.evaluate_and_save()
            if stopped_by == "max_time":
                # this step's checkpoint was written before the clock ran out: write the time
                # spent, or a resume would find budget left and train on
                t.save(val_loss)
        elif stopped_by != "patience":  # a signal or a request: checkpoint where we are, quickly
            t.save(None)
        return val_loss

    def step_count_this_run(self) -> int:
        return len(self.losses.history) + len(self.losses.pending)

    def evaluate_and_save(self) -> float:
        t = self.trainer
        self.losses.check()
        val_loss = t.evaluate()
        if not math.isfinite(val_loss):
            raise NonFiniteLoss(f"the validation loss became {val_loss} at step {t.step}; stopped without saving; "
                                f"{kept(t.run_dir)}")
        bpc = val_loss / math.log(2) * t.tokens_per_char
        train_loss = self.losses.recent_mean(t.cfg.log_interval)
        t.metrics.write({"step": t.step, "tokens": t.tokens, "elapsed": round(t.elapsed(), 3), "train_loss": train_loss,
                         "val_loss": val_loss, "val_bpc": bpc})
        improved = t.schedule.evaluated(t.step, val_loss)
        if t.schedule.cooldown_due():
            self.say_cooldown(t.schedule.start_cooldown(t.step))
        t.save(val_loss, best=improved)
        if t.dist.is_main:  # after the save: the line says what is on disk
            tr = f"train {train_loss:.4f}, " if train_loss is not None else ""
            self.progress.say(f"step {t.step}: {tr}val {val_loss:.4f} ({bpc:.3f} bits/char)"
                              f"{', best so far: saved as best.pt' if improved else ''}")
        t.picture.update()
        return val_loss
