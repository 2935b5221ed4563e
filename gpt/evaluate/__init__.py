"""Evaluation: how well a trained model predicts a text, in bits per character.

text (files, or a prepared split) -> token ids in the model's vocabulary (text.py)
-> sliding windows (windows.py) -> nats per scored token (scorer.py) -> a score per run
(evaluate.py) -> a table or JSON (report.py); `gpt-eval` (cli.py) wires them together.
"""
from .errors import EvalError
from .evaluate import LoadedRun, RunScore, Score, default_stride, evaluate, load_run
from .text import TextStream, open_split
from .windows import SlidingWindows, Windows

__all__ = ["EvalError", "LoadedRun", "RunScore", "Score", "SlidingWindows", "TextStream", "Windows", "default_stride",
           "evaluate", "load_run", "open_split"]
