"""Evaluation's expected failures."""
from data_prep.errors import UserError


class EvalError(UserError):
    """Text that cannot be scored, or options that do not fit the model."""
