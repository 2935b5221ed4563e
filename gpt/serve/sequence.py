"""One completion as the engine sees it: its tokens so far, its options, its own random
generator, where in the KV cache it lives, and where its text goes.

A request asking for n completions of each of its prompts is n x prompts sequences, each
scheduled on its own (`engine.Engine`)."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable
from typing import Sequence as Ids

import torch

from data_prep import Tokenizer

from ..sample.sampling import ContextWindow, NoiseSource, SampleText, SamplingOptions


class State(enum.Enum):
    WAITING = "waiting"  # queued, no slot yet
    FILLING = "filling"  # its window's tokens are going into its cache row, a chunk per call
    DECODING = "decoding"  # one token per step, in the batch
    ENDED = "ended"


@dataclass(frozen=True)
class Event:
    """What a sequence hands its reader: new text, and at the end why it ended ("stop": the
    end-of-text token or a stop string; "length": max_new_tokens; "cancelled"; "error",
    with `error` saying what)."""

    text: str
    tokens: int  # tokens generated so far
    finish_reason: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Sequence:
    def __init__(self, prompt_ids: Ids[int], options: SamplingOptions, tokenizer: Tokenizer, block_size: int,
                 sink: Callable[[Event], None], adapter: int = 0):
        """`sink(event)` is called on the engine's thread: it must not block (a server hands
        the event to its event loop). `adapter`: the LoRA adapter it decodes with
        (`adapters.using`; 0: none)."""
        self.tokens = list(prompt_ids)
        self.prompt_tokens = len(self.tokens)
        self.options, self.sink, self.adapter = options, sink, adapter
        self.text = SampleText(tokenizer, options)
        self.window = ContextWindow(block_size, options.window_slide(block_size))
        self.state = State.WAITING
        self.slot: int | None = None
        self.filled = 0  # window positions in its cache row
        self.generated = 0
        self.cancelled = False
        self.noise: NoiseSource | None = None  # made when it gets a slot: a waiting request holds little memory

    @property
    def greedy(self) -> bool:
        return self.options.temperature == 0

    @property
    def sampling(self) -> tuple:
        return self.options.temperature, self.options.top_k, self.options.top_p

    def start(self, slot: int, vocab_size: int, device: torch.device) -> None:
        self.slot, self.state, self.filled = slot, State.FILLING, 0
        self.window.update(len(self.tokens))  # a prompt longer than the context keeps its last tokens
        if not self.greedy:
            self.noise = NoiseSource(1, vocab_size, device, self.options.seed)

    def next_noise(self) -> torch.Tensor:
        """This sequence's Gumbel noise for its next token, (V,): drawn `period` tokens at a
        time from its own generator, so a seed gives the same tokens whoever else is served."""
        step = self.generated % self.noise.period
        if step == 0:
            self.noise.refill()
        return self.noise.buffer[step, 0]

    def window_tokens(self) -> tuple[int, int]:
        """The token range [start, n) the model must read to predict the next token."""
        return self.window.start, len(self.tokens)

    def push(self, token: int) -> Event:
        """Take a sampled token: its text (whole characters, stop strings held back), and
        whether the sequence has ended."""
        self.tokens.append(token)
        self.generated += 1
        piece = self.text.push(token)
        if self.text.done:
            return self.end(piece, "stop")
        if self.generated >= self.options.max_new_tokens:
            return self.end(piece + self.text.finish(), "length")
        if self.window.update(len(self.tokens)):  # the window moved: its cache row is filled anew
            self.state, self.filled = State.FILLING, 0
        else:
            self.state = State.DECODING
        return Event(piece, self.generated)

    def end(self, piece: str, reason: str, error: str | None = None) -> Event:
        self.state = State.ENDED
        return Event(piece, self.generated, reason, error)
