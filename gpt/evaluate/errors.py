"""Evaluation's expected failures."""
from plumbing.errors import UserError


class EvalError(UserError):
    """Text that cannot be scored, or options that do not fit the model."""
