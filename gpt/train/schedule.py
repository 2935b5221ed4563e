"""The run's schedule: the learning rate for each step, and when the run ends.

Warmup over the first steps, then cosine decay from --lr to --min-lr as the budget (steps
or time, whichever is further along) is used. Patience counts evaluations without a new
best validation loss; when it runs out the run stops, or with --cooldown first decays the
rate in a straight line over a fraction of the steps so far, then stops. Nothing here
touches a model or a clock: the trainer hands in the step and the elapsed time, so the
schedule can be tested alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import TrainConfig


def learning_rate(step: int, progress: float, lr: float, min_lr: float, warmup_iters: int) -> float:
    """Linear warmup over the first steps, then cosine decay from lr to min_lr as
    `progress` (the fraction of the step or time budget used) goes from 0 to 1."""
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


@dataclass
class Schedule:
    lr: float
    final_lr: float
    warmup_iters: int
    max_iters: int | None
    max_time: float | None
    patience: int  # evaluations without a new best that end the run (0: never)
    cooldown_fraction: float  # of the steps so far, decayed over once patience runs out (0: stop at once)
    best_val: float = math.inf
    best_step: int | None = None
    stale_evals: int = 0  # evaluations since the best one
    # once patience runs out with --cooldown: {"start": step, "steps": its length, "lr": the
    # rate it decays from, "elapsed": the schedule's clock then}
    cooldown: dict | None = None
    last_lr: float = 0.0  # the rate and the clock of the latest step: a cooldown starts from them
    last_elapsed: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Schedule":
        return cls(cfg.lr, cfg.final_lr, cfg.warmup_iters, cfg.max_iters, cfg.max_time, cfg.early_stop_after,
                   cfg.cooldown, last_lr=cfg.lr)

    # -- what a checkpoint keeps -----------------------------------------------------------------
    def state(self) -> dict:
        best = None if math.isinf(self.best_val) else self.best_val
        return {"best_val_loss": best, "best_step": self.best_step, "stale_evals": self.stale_evals,
                "cooldown": self.cooldown}

    def restore(self, s: dict) -> None:
        self.best_val = float(s["best_val_loss"]) if s.get("best_val_loss") is not None else math.inf
        self.best_step, self.stale_evals = s.get("best_step"), int(s.get("stale_evals", 0))
        # --cooldown 0 given now: the schedule goes on
        self.cooldown = s.get("cooldown") if self.cooldown_fraction else None

    # -- the learning rate -----------------------------------------------------------------------
    def budget_used(self, step: int, elapsed: float) -> float:
        """How far through its budget (steps or time, whichever is further) the run is."""
        parts = []
        if self.max_iters:
            parts.append((step - self.warmup_iters) / max(self.max_iters - self.warmup_iters, 1))
        if self.max_time:
            parts.append(elapsed / self.max_time)
        return max(parts)

    def rate(self, step: int, elapsed: float) -> float:
        """The learning rate for step `step + 1`: warmup then cosine decay over the budget, or
        in a cooldown a straight line from the rate it started at down to --min-lr, reached
        after its steps or at the budget's end (steps or time), whichever comes first."""
        c = self.cooldown
        if c is None:
            return learning_rate(step, self.budget_used(step, elapsed), self.lr, self.final_lr, self.warmup_iters)
        done = (step + 1 - c["start"]) / c["steps"]  # its last step runs at --min-lr
        if self.max_iters:
            done = max(done, (step + 1 - c["start"]) / max(self.max_iters - c["start"], 1))
        if self.max_time:
            done = max(done, (elapsed - c["elapsed"]) / max(self.max_time - c["elapsed"], 1e-9))
        return c["lr"] + (self.final_lr - c["lr"]) * min(done, 1.0)

    def next_rate(self, step: int, elapsed: float) -> float:
        """`rate`, remembered as the latest step's (a cooldown starts from it)."""
        self.last_lr, self.last_elapsed = self.rate(step, elapsed), elapsed
        return self.last_lr

    # -- patience and cooldown -------------------------------------------------------------------
    def evaluated(self, step: int, val_loss: float) -> bool:
        """Count an evaluation; whether it is the best yet."""
        if val_loss < self.best_val:
            self.best_val, self.best_step, self.stale_evals = val_loss, step, 0
            return True
        self.stale_evals += 1
        return False

    def cooldown_due(self) -> bool:
        """Whether patience has run out in a run with --cooldown that has not started one."""
        return bool(self.cooldown_fraction) and self.cooldown is None and self.stale_evals >= self.patience > 0

    def start_cooldown(self, step: int) -> dict:
        """Patience has run out: rather than stop where the rate is still high, decay it over
        --cooldown x the steps so far, then stop. On a corpus small enough to overfit, the
        decay brings the lower loss a cosine's tail brings, before overfitting takes it
        (docs/train.md, "Cooldown")."""
        steps = max(1, round(self.cooldown_fraction * step))
        self.cooldown = {"start": step, "steps": steps, "lr": self.last_lr, "elapsed": self.last_elapsed}
        return self.cooldown

    def resume_cooldown(self, step: int, elapsed: float) -> dict:
        """A run that stopped early, resumed with --cooldown: the decay starts from the rate
        the schedule gives its next step, on the checkpoint's clock (every rank's alike)."""
        self.next_rate(step, elapsed)
        return self.start_cooldown(step)

    def end_reason(self, step: int, elapsed: float) -> str:
        """Why the run ends before step `step + 1` ("" while it goes on): its budget, its
        cooldown's end, or patience run out."""
        if self.max_iters and step >= self.max_iters:
            return "max_iters"
        if self.max_time and elapsed >= self.max_time:
            return "max_time"
        if self.cooldown is not None:
            return "cooldown" if step >= self.cooldown["start"] + self.cooldown["steps"] else ""
        if self.patience and self.stale_evals >= self.patience:
            return "patience"
        return ""
