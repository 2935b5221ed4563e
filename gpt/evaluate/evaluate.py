"""Scoring a run on a stream of text: checkpoint -> model and tokenizer -> windows -> nats.

    run = load_run("checkpoints/run1", torch.device("cpu"))
    result = evaluate(run, TextStream(["notes.txt"], run.tokenizer), stride=run.context // 2)
    result.score.bits_per_char

Bits per character divide the nats of every scored token by ln 2 and by the characters of
the text those tokens encode (not by the tokens: a character outside the vocabulary may
take several byte tokens, and the end-of-text token after each document takes none), so
models with different vocabularies compare on the same text.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep import Tokenizer

from ..device import resolve_dtype
from ..model import count_parameters
from ..quantize import check_supported, quantize_model
from ..store.export_folder import is_export
from ..store.load import load_any_model
from .errors import EvalError
from .scorer import TokenScorer
from .text import TokenStream
from .windows import SlidingWindows, Windows

DEFAULT_BATCH = 32  # windows per forward pass


@dataclass
class Score:
    nats: float  # summed over the scored tokens
    tokens: int  # tokens scored
    characters: int  # characters of the text those tokens encode

    @property
    def nats_per_token(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def bits_per_char(self) -> float:
        return self.nats / math.log(2) / max(self.characters, 1)

    @property
    def perplexity(self) -> float:
        """Per token: e to the mean nats, the number of equally likely tokens it amounts to."""
        return math.exp(self.nats_per_token)


@dataclass
class LoadedRun:
    """A checkpoint ready to score, with what its run reports about itself."""

    name: str
    checkpoint: Path
    model: torch.nn.Module | None  # None once it has been scored and let go
    tokenizer: Tokenizer
    device: torch.device
    context: int
    parameters: int
    tokens_seen: int | None  # None for a checkpoint written outside gpt-train
    training_time: float | None  # seconds
    step: int | None
    data: str | None  # the prepared data folder it was trained on
    quantize: str | None = None  # "int8": scored with int8 linear layers, as gpt-sample --quantize samples


@dataclass
class RunScore:
    run: LoadedRun
    stream: TokenStream
    stride: int
    score: Score


def run_name(given: str | Path | None, checkpoint: Path) -> str:
    """How a run is named in reports: its folder, or the file when a file was named."""
    if given is not None and Path(given).is_file():
        return str(given)
    return checkpoint.parent.name or str(checkpoint)


def load_run(path: str | Path | None, device: torch.device, quantize: str | None = None) -> LoadedRun:
    """A run folder (its best checkpoint), a checkpoint file, a folder written by gpt-export,
    or None (the newest run). With `quantize` ("int8") its linear layers are quantized as
    `gpt-sample --quantize` quantizes them (`gpt.quantize`), so the score is the quality cost
    of sampling that way; the parameters reported are the model's own, counted before."""
    if quantize is not None:
        check_supported(quantize, device)  # before the weights are read
    model, tokenizer, ckpt, record = load_any_model(path, device)
    name = str(path) if path is not None and is_export(path) else run_name(path, ckpt)
    parameters = count_parameters(model)  # an int8 layer's weights are buffers, not parameters
    if quantize is not None:
        quantize_model(model, quantize)

    def number(key, kind):
        return kind(record[key]) if record.get(key) is not None else None

    data = (record.get("train_config") or {}).get("data")
    return LoadedRun(name + (f" ({quantize})" if quantize else ""), ckpt, model, tokenizer, device,
                     model.config.block_size, parameters, number("tokens", int), number("elapsed", float),
                     number("step", int), data, quantize)


def default_stride(context: int) -> int:
    """Half the context: every token after the first window sees at least half a context of
    text before it, at twice the cost of non-overlapping windows."""
    return max(1, context // 2)


def check_sizes(stride: int | None, batch_size: int) -> None:
    """What can be checked before a model is loaded (the command line does, so a bad value
    costs no loading)."""
    if stride is not None and stride < 1:
        raise EvalError(f"--stride must be at least 1, got {stride}")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")


def check_stride(stride: int, run: LoadedRun) -> None:
    if stride > run.context:
        raise EvalError(f"--stride {stride} is larger than the context of {run.name} ({run.context} tokens); "
                        f"use at most {run.context}")


def evaluate(run: LoadedRun, stream: TokenStream, stride: int | None = None, batch_size: int = DEFAULT_BATCH,
             dtype: str = "auto", progress: bool = False) -> RunScore:
    """Score every token of `stream` once, in sliding windows of the run's context that
    each score `stride` tokens. Raises EvalError for text that cannot be scored."""
    check_sizes(stride, batch_size)
    stride = default_stride(run.context) if stride is None else stride
    check_stride(stride, run)
    scorer = TokenScorer(run.model, run.device, resolve_dtype(dtype, run.device), batch_size)
    windows = SlidingWindows(run.context, stride, pad_id=run.tokenizer.eot_id)
    # text arrives in pieces of one batch's worth of strides, so windows never pile up
    piece = batch_size * stride
    pending: list[Windows] = []
    waiting = nats = tokens = 0
    bar = tqdm(total=stream.total_tokens, unit="tok", unit_scale=True, desc=run.name, leave=False, file=sys.stderr,
               delay=1.0, disable=True if not progress else None)  # None: shown on a terminal only
    try:
        for chunk in stream.chunks():
            for i in range(0, len(chunk), piece):
                new = windows.push(chunk[i : i + piece])
                pending.append(new)
                waiting += len(new)
                if waiting >= batch_size:
                    ready, rest = Windows.join(pending).split(waiting - waiting % batch_size)
                    nats += scorer.total(ready)
                    tokens += ready.tokens
                    bar.update(ready.tokens)
                    pending, waiting = [rest], len(rest)
        last = Windows.join([*pending, windows.finish()])
        nats += scorer.total(last)
        tokens += last.tokens
        bar.update(last.tokens)
    finally:
        bar.close()
    check_scored(stream, tokens, run)
    return RunScore(run, stream, stride, Score(nats, tokens, stream.characters))


def check_scored(stream: TokenStream, tokens: int, run: LoadedRun) -> None:
    """Refuse a score that says nothing: no text at all, or none the model knows."""
    read = stream.characters_read
    if read == 0 or tokens == 0:
        skipped = stream.notes.skipped
        if skipped:  # a binary file is not empty: say what was read instead
            first = f"; the first: {skipped[0]}" if len(skipped) > 1 else f": {skipped[0]}"
            raise EvalError(f"there is no text to score in {stream.description}: {len(skipped)} file(s) skipped as "
                            f"unreadable{first}, and no other text")
        raise EvalError(f"there is no text to score in {stream.description}: it is empty")
    if stream.oov_characters is not None and stream.oov_characters >= read:
        raise EvalError(f"none of the {read:,} characters of {stream.description} is in the vocabulary of {run.name} "
                        f"(its {len(run.tokenizer.chars)} characters); "
                        f"is it the kind of text the model was trained on?")
