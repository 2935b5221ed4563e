"""Training: a prepared data folder -> batches -> model -> checkpoints in a run folder.

    from gpt.train import train
    result = train(overrides={"data": "data", "max_iters": 100})

`python -m gpt.train` (and `gpt-train`) is the command, also under torchrun.
"""
from .errors import NonFiniteLoss, TrainError
from .run import train
from .trainer import Trainer, TrainResult

__all__ = ["NonFiniteLoss", "TrainError", "TrainResult", "Trainer", "train"]
