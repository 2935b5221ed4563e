"""Sampling, one step at a time: options, which tokens the model sees, how the next token
is drawn, and how tokens become a sample's text (end-of-text and stop strings).

These pieces speak of one step or one sample; `decode_loop.DecodeLoop` runs them in a loop for `generate.Generator`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from data_prep import Tokenizer
from plumbing.errors import UserError


class GenerationError(UserError):
    """Sampling options or a prompt that cannot be used: the message is meant for the user."""


NOT_FINITE = ("the model's next-token scores are not finite numbers (inf or nan): "
              "its weights are broken, or it was trained into overflow; sample from an earlier checkpoint")


@dataclass
class SamplingOptions:
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0: greedy (argmax), deterministic
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # keep the fewest most likely tokens whose probability reaches p
    stop: Sequence[str] = ()  # the text is cut just before the first of these
    stop_at_eot: bool = True  # end a sample at the end-of-text token
    seed: int | None = None  # None: a different sample every time
    use_kv_cache: bool = True
    slide: int | None = None  # tokens the window jumps when it moves; None: block_size // 4

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, not one per character
            self.stop = (self.stop,)

    def validate(self, block_size: int | None = None) -> None:
        """Raise GenerationError for a bad value; --slide is checked against block_size once known."""
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise GenerationError(f"--temperature must be a finite number >= 0 (0: always the most likely token; "
                                  f"higher: more random), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise GenerationError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 0:
            raise GenerationError(f"--max-new-tokens must be >= 0, got {self.max_new_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GenerationError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.slide is not None and not 1 <= self.slide <= (block_size or self.slide):
            context = f" ({block_size})" if block_size else ""
            raise GenerationError(f"--slide must be between 1 and the model's context{context}, got {self.slide}")
        if any(s == "" for s in self.stop):
            raise GenerationError("--stop needs some text to stop at; "
                                  "an empty string would end every sample before it began")

    def window_slide(self, block_size: int) -> int:
        return window_slide(block_size, self.slide)


def window_slide(block_size: int, slide: int | None = None) -> int:
    """How far a full window moves: `slide`, or by default a quarter of the context."""
    return slide if slide is not None else max(1, block_size // 4)


class ContextWindow:
    """Which of the tokens so far the model sees: tokens[start:n].

    The window moves only when it would exceed block_size, and then jumps so that `slide`
    more tokens fit before the next move. A move changes every cached key and value (in a
    deep model an old token's key carries context from tokens now outside the window), so
    the cached path rebuilds its cache on each move; jumping by `slide` makes that happen
    once per `slide` tokens. slide=1 keeps exactly the most recent block_size tokens.
    """

    def __init__(self, block_size: int, slide: int):
        self.block_size, self.slide, self.start = block_size, slide, 0

    def update(self, n: int) -> bool:
        """Fit the window to n tokens so far; True when it moved."""
        if n - self.start > self.block_size:
            self.start = n - (self.block_size - self.slide + 1)
            return True
        return False


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                gumbel: torch.Tensor | None) -> torch.Tensor:
    """Next tokens (B, 1) from last-position logits (B, V) and standard Gumbel noise (B, V).

    The draw is the Gumbel-max trick: argmax(logits / T + g) is distributed as
    softmax(logits / T). With the noise drawn beforehand, a step has fixed shapes, no
    random-number state and no read back to the host, so a CUDA graph can record it; and
    every decoding path given the same noise picks the same tokens."""
    if temperature == 0 or top_k == 1:  # one token left to draw from: the most likely, as greedy takes it
        return logits.argmax(-1, keepdim=True)
    if top_k is not None and top_k < logits.size(-1):  # the ranking does not depend on T
        # k tokens by index, not every one as likely as the k-th: tied scores (frequent in
        # bf16) would otherwise let more than k through
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~kept, -math.inf)
    if top_p is not None and top_p < 1:
        ranked, order = logits.float().sort(-1, descending=True)
        # softmax(logits / T) from the gaps to the largest (0 or less), 1 / T kept within
        # float32's normal numbers (past them it would become inf or 0, and inf * 0 or
        # -inf * 0 is nan): a gap other than 0 times the largest is -inf already
        probs = ((ranked - ranked[:, :1]) * min(max(1 / temperature, TINY), 1 / TINY)).softmax(-1)
        # a token is dropped once the more likely tokens before it already reach top_p;
        # the most likely token always stays, also where top_p is so small that it is 0 in
        # float32 (1e-300), which every token's "before" (0 for the first) reaches
        drop_ranked = probs.cumsum(-1) - probs >= top_p
        drop_ranked[..., 0] = False
        logits = logits.masked_fill(drop_ranked.scatter(-1, order, drop_ranked), -math.inf)
    # argmax(logits / T + g) is argmax(logits + T g): each in one kernel, in fp32 as g is. Below
    # T = 1 the noise is scaled down rather than the logits up, which 1 / T (1e40 for 1e-40)
    # would take past float32's largest number: a tiny T draws the most likely token. Above
    # it, 1 / T stays a normal number, so a token dropped above (-inf) stays dropped
    if temperature < 1:
        return torch.add(logits, gumbel, alpha=temperature).argmax(-1, keepdim=True)
    return torch.add(gumbel, logits, alpha=max(1 / temperature, TINY)).argmax(-1, keepdim=True)


TINY = torch.finfo(torch.float32).tiny


def to_gumbel(u: torch.Tensor) -> torch.Tensor:
    """-log(-log u) in place; a draw of exactly 0 is kept off log(0)."""
    return u.clamp_min_(1e-30).log_().neg_().log_().neg_()


class NoiseSource:
    """The Gumbel draws for sampling, `period` steps of (B, V) at a time, from one seeded
    generator. The period depends on the batch and the vocabulary only (never on how often
    tokens are read back), so a seed gives the same samples on every path."""

    BUDGET = 1 << 22  # numbers held at once: 16 MB of float32

    def __init__(self, batch: int, vocab: int, device: torch.device, seed: int | None):
        period = max(1, min(32, self.BUDGET // (batch * vocab)))
        self.buffer = torch.empty(period, batch, vocab, device=device)
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @property
    def period(self) -> int:
        return self.buffer.size(0)

    def refill(self) -> None:
        to_gumbel(self.buffer.uniform_(generator=self.generator))


class StopText:
    """Cuts text before the first stop string, holding back any end that could still begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""  # the held-back end: a proper prefix of some stop string
        self.stopped = False

    def push(self, text: str) -> str:
        """Text that is certain to be output, now that `text` follows."""
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        buf = self.pending + text  # short: pending is shorter than the longest stop string
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return buf[: min(hits)]
        hold = self._held_length(buf)
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold]

    def _held_length(self, buf: str) -> int:
        longest = max(len(s) for s in self.stops)
        for k in range(min(len(buf), longest - 1), 0, -1):
            if any(s.startswith(buf[-k:]) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out


class SampleText:
    """One sample's text as its tokens arrive: whole characters only, ended by the
    end-of-text token (unless told to go on) or by a stop string."""

    def __init__(self, tokenizer: Tokenizer, options: SamplingOptions):
        self.decoder = tokenizer.incremental_decoder()
        self.stop = StopText(options.stop)
        self.eot_id = tokenizer.eot_id if options.stop_at_eot else None
        self.done = False

    def push(self, token: int) -> str:
        if self.done:
            return ""
        if token == self.eot_id:
            return self.finish()
        out = self.stop.push(self.decoder.push(token))
        self.done = self.stop.stopped
        return out

    def finish(self) -> str:
        if self.done:
            return ""
        self.done = True
        out = self.stop.push(self.decoder.flush())
        return out + self.stop.flush()
