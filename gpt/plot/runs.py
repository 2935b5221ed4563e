"""A run's metrics as gpt-train logged them, read back from its `metrics.jsonl` for drawing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from plumbing.errors import UserError, display_name

from ..store.layout import CONFIG_FILE, LOCK_FILE, METRICS_FILE

X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed"}  # what a picture's x axis can be: the record key


class PlotError(UserError):
    """A run that cannot be drawn, or no plotting library to draw with."""


@dataclass
class RunMetrics:
    name: str
    path: Path  # the metrics file
    # training steps: step, tokens, elapsed, train_loss, lr, tokens_per_s
    logged: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # evaluations: step, tokens, elapsed, train_loss, val_loss, val_bpc

    def series(self, records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
        """(x values, y values) of the records that have both; x is step, tokens or time."""
        key = X_AXES[x]
        pairs = [(r[key], r[y]) for r in records if r.get(key) is not None and r.get(y) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def last_eval(self) -> dict | None:
        return self.evals[-1] if self.evals else None


def metrics_path(run: str | Path) -> Path:
    """A run folder's metrics file, or the file itself when one is named."""
    p = Path(run)
    if p.is_dir():
        p = p / METRICS_FILE
        # a run writes its config.json and .lock before its first step (gpt.store.runs, which
        # would bring torch into this command's start, tells a run apart more fully)
        if not p.is_file() and (p.parent / CONFIG_FILE).is_file() and (p.parent / LOCK_FILE).exists():
            raise PlotError(f"run folder {run} has no {METRICS_FILE} yet: its run has logged no step so far")
        if not p.is_file():
            raise PlotError(f"{run} has no {METRICS_FILE}: is it a gpt-train run folder?")
    elif not p.exists():
        raise PlotError(f"run folder {run} does not exist")
    return p


def read_run(run: str | Path, name: str | None = None) -> RunMetrics:
    path = metrics_path(run)
    metrics = RunMetrics(display_name(name or (path.parent.name if path.name == METRICS_FILE else path.stem)), path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PlotError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write; the others stand
        if not isinstance(record, dict):
            continue
        record = numbers(record)
        if "step" in record:
            (metrics.evals if "val_loss" in record else metrics.logged).append(record)
    # a run that ends between two log lines has its last train loss in its last evaluation only
    last_logged = max((r["step"] for r in metrics.logged), default=-1)
    metrics.logged += [r for r in metrics.evals if r["step"] > last_logged and "train_loss" in r]
    return metrics


def numbers(record: dict) -> dict:
    """The fields of a record that are numbers: every one drawn is; anything else (a line
    edited by hand, damaged) is left out rather than fail the picture."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
