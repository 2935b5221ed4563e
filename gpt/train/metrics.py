"""What a run measures: training losses as they come, throughput, and metrics.jsonl.

metrics.jsonl holds one JSON line per logged step and per evaluation, appended as the run
goes. On resume, lines logged after the checkpoint the run restarts from (the tail a crash
left behind) are dropped first, so the file reads as one continuous run."""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from plumbing.atomic import atomic_write_text

from ..store.layout import METRICS_FILE
from .errors import NonFiniteLoss, kept


def logged_by(line: str, step: int) -> bool:
    """Whether a metrics line is whole and of a step up to `step` (a kill or a full disk can
    leave the last line torn; an editor, any line damaged)."""
    try:
        logged = json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return False
    return isinstance(logged, int) and logged <= step


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / METRICS_FILE
        self.file = None
        self.enabled = enabled
        self.trackers = None  # trackers.Trackers: every record goes to them too

    def trim_after(self, step: int) -> None:
        """Keep only the lines of steps up to `step`."""
        if not (self.enabled and self.path.exists()):
            return
        text = self.path.read_text(encoding="utf-8", errors="replace")  # a damaged byte: its line fails to parse
        kept = [line for line in text.splitlines() if logged_by(line, step)]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.trackers is not None:
            self.trackers.write(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


class LossWindow:
    """Training losses as they are produced: kept on the device and read back in groups
    (one host sync per log interval, not per step), checked for finiteness on the way."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.history: list[tuple[int, float]] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))

    def check(self) -> list[float]:
        values = torch.stack([loss for _, loss in self.pending]).tolist() if self.pending else []
        for (s, _), v in zip(self.pending, values):
            if not math.isfinite(v):
                raise NonFiniteLoss(f"the loss became {v} at step {s}; stopped without saving; "
                                    f"{kept(self.run_dir)} (try a lower --lr)")
        self.history.extend((s, v) for (s, _), v in zip(self.pending, values))
        self.pending.clear()
        return values

    def mean_of_pending(self) -> float:
        values = self.check()
        return sum(values) / len(values)

    def recent_mean(self, n: int) -> float | None:
        recent = [v for _, v in self.history[-n:]]
        return sum(recent) / len(recent) if recent else None


class Throughput:
    """Tokens per second of training since the last reading: the time spent `paused` (an
    evaluation, a checkpoint, the picture) is left out, or the line after each evaluation
    would show a collapse of speed that training never had."""

    def __init__(self) -> None:
        self.t, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t += time.perf_counter() - start

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t, 1e-9)
        self.t, self.tokens = now, 0
        return rate
