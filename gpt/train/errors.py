"""The training stage's expected failures."""
from __future__ import annotations

from pathlib import Path

from plumbing.errors import UserError

from ..store.runs import has_checkpoint


class TrainError(UserError):
    """A run that cannot start or go on; the message says why and what was kept."""


class NonFiniteLoss(TrainError):
    """The loss became inf or nan: the run stops without saving, keeping its last good checkpoint."""


def kept(run_dir: Path) -> str:
    """What a run stopped by an error leaves in its folder, in words (`RunFolder.release`
    removes what a run without a checkpoint wrote, or puts back the run it replaced)."""
    if has_checkpoint(run_dir):
        return f"{run_dir} keeps what was saved before it"
    return f"no checkpoint had been saved, so {run_dir} is left as the run found it"
