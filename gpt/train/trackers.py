"""Experiment trackers (gpt-train --log tensorboard, --log wandb): what metrics.jsonl holds,
and the run's configuration, sent where people already look at their runs.

TensorBoard through PyTorch's own writer (`torch.utils.tensorboard`, which needs the
tensorboard package), into RUN/tensorboard; Weights & Biases through its client, into
RUN/wandb, in the mode its WANDB_MODE variable names (offline works without a network;
`wandb sync` uploads later). Both are optional extras (`pip install 'chargpt[track]'`): a
tracker that is not installed stops the run before it starts, in one line naming the extra.
metrics.jsonl stays the record: a tracker that fails while the run goes on (a full disk, a
lost connection) is dropped with one warning, and training continues.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path

from plumbing.errors import first_line

from .errors import TrainError

TRACKERS = ("tensorboard", "wandb")
EXTRA = "pip install 'chargpt[track]'"


def parse(names: str) -> list[str]:
    """The trackers a --log value names (comma-separated, repeats allowed)."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in TRACKERS:
            raise TrainError(f"--log {name}: no such tracker (choose from {', '.join(TRACKERS)})")
    return list(dict.fromkeys(chosen))


def check_installed(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module("torch.utils.tensorboard" if name == "tensorboard" else name)
        except ImportError:
            raise TrainError(f"--log {name} needs the {name} package, which is not installed: {EXTRA}") from None


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())))

    def write(self, record: dict) -> None:
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="chargpt", name=run_dir.name, dir=str(run_dir), config=config)

    def write(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers; each one that fails is dropped with a warning."""

    def __init__(self, names: list[str], run_dir: Path, config: dict):
        self.open: dict[str, object] = {}
        kinds = {"tensorboard": TensorBoard, "wandb": Wandb}
        for name in names:
            self._guard(name, lambda n=name: self.open.__setitem__(n, kinds[n](run_dir, config)))

    def _guard(self, name: str, action) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            self.open.pop(name, None)
            warnings.warn(f"the {name} tracker failed ({type(e).__name__}: {first_line(e)}); "
                          f"training goes on without it (metrics.jsonl has every figure)")

    def write(self, record: dict) -> None:
        for name, tracker in list(self.open.items()):
            self._guard(name, lambda t=tracker: t.write(record))

    def close(self) -> None:
        for name, tracker in list(self.open.items()):
            self._guard(name, tracker.close)
        self.open = {}
