"""The training stage's expected failures."""
from __future__ import annotations

from plumbing.errors import UserError


class TrainError(UserError):
    """A run that cannot start or go on; the message says why and what was kept."""


class NonFiniteLoss(TrainError):
    """The loss became inf or nan: the run stops without saving, keeping its last good checkpoint."""
