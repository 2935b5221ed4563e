"""Generation: prompt -> token ids -> model, one token at a time -> sampled ids -> text.

    gen = Generator.load("checkpoints/run1")  # a run folder, a checkpoint file or None
    for piece in gen.stream("ROMEO:", SamplingOptions(max_new_tokens=200, seed=1)):
        print(piece, end="", flush=True)

The decode loop speaks token ids only (`Generator.token_steps`); text, end-of-text and
stop strings are handled per sample above it (`SampleText`). With a KV cache each new
token costs one position's work; without one the whole window is recomputed per token.
Both paths see exactly the same tokens: both take their window from one `ContextWindow`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from data_prep import CharTokenizer, DataError

from .checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from .device import resolve_device, resolve_dtype
from .kv_cache import KVCache


class GenerationError(Exception):
    """Sampling options or a prompt that cannot be used: the message is meant for the user."""


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

    def validate(self, block_size: int | None = None) -> None:
        """Raise GenerationError for a bad value; --slide is checked against block_size once known."""
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise GenerationError(f"--temperature must be a number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise GenerationError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 0:
            raise GenerationError(f"--max-new-tokens must be >= 0, got {self.max_new_tokens}")
        if self.slide is not None and not 1 <= self.slide <= (block_size or self.slide):
            raise GenerationError(f"--slide must be between 1 and the model's context ({block_size or 'its length'}), got {self.slide}")

    def window_slide(self, block_size: int) -> int:
        return self.slide if self.slide is not None else max(1, block_size // 4)


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
                generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (B, 1) from last-position logits (B, V)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        ranked, order = logits.sort(-1, descending=True)
        probs = ranked.softmax(-1)
        # a token is dropped once the more likely tokens before it already reach top_p,
        # so the most likely token always stays
        drop_ranked = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop_ranked.scatter(-1, order, drop_ranked), -math.inf)
    try:
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)
    except RuntimeError as e:  # it checks its input: only inf or nan logits get here
        raise GenerationError(f"the model's next-token probabilities are not finite numbers ({e})") from None


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

    def __init__(self, tokenizer: CharTokenizer, options: SamplingOptions):
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


class Generator:
    """A model and its tokenizer, ready to sample on one device at one precision.

    The model (already on `device`) has its weights cast to `dtype` once, here, rather than
    running under autocast as in training: autocast would cast every weight again at every
    token, and decoding one token is dominated by reading the weights (on a 2-core CPU, a
    bf16 model cast once decodes one sample 1.5-2x faster than fp32; under autocast it is
    slower than fp32)."""

    def __init__(self, model: torch.nn.Module, tokenizer: CharTokenizer, device: torch.device, dtype: torch.dtype):
        self.model, self.tokenizer, self.device, self.dtype = model.to(dtype), tokenizer, device, dtype
        self.block_size = model.config.block_size

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", dtype: str = "auto") -> "Generator":
        """From a checkpoint file, a run folder (its best checkpoint) or None (the newest run
        under ./checkpoints). Raises CheckpointError or DeviceError for the user to read."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        ckpt = resolve_checkpoint(path)
        model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt), dev)
        return cls(model, tokenizer, dev, dt)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids, encoded as the training data was; an empty prompt is the end-of-text
        token, which is what precedes every document in training."""
        if not prompt:
            return [self.tokenizer.eot_id]
        try:
            return self.tokenizer.encode(prompt)
        except DataError as e:
            raise GenerationError(f"the prompt cannot be encoded: {e}") from None

    @torch.inference_mode()
    def token_steps(self, prompt_ids: Sequence[int], options: SamplingOptions, num_samples: int = 1) -> Iterator[list[int]]:
        """Each step's new token for each sample, up to max_new_tokens steps. The caller
        decides when to stop early (it just stops iterating)."""
        options.validate(self.block_size)
        if num_samples < 1:
            raise GenerationError(f"--num-samples must be at least 1, got {num_samples}")
        if not prompt_ids:
            raise GenerationError("the prompt has no tokens")
        B, P, steps = num_samples, len(prompt_ids), options.max_new_tokens
        if steps == 0:
            return
        ids = torch.empty(B, P + steps, dtype=torch.long, device=self.device)  # every token so far
        ids[:, :P] = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        window = ContextWindow(self.block_size, options.window_slide(self.block_size))
        cache = None
        if options.use_kv_cache and getattr(self.model, "supports_kv_cache", False):
            cache = KVCache.for_model(self.model, B, self.device, self.dtype)
        rng = torch.Generator(device=self.device)
        if options.seed is None:
            rng.seed()
        else:
            rng.manual_seed(options.seed)
        temperature, top_k, top_p = options.temperature, options.top_k, options.top_p
        for n in range(P, P + steps):
            logits = self._next_logits(ids, n, window, cache)
            token = sample_next(logits, temperature, top_k, top_p, rng)  # (B, 1)
            ids[:, n : n + 1] = token
            yield token.view(-1).tolist()  # the one host sync per step

    def _next_logits(self, ids: torch.Tensor, n: int, window: ContextWindow, cache: KVCache | None) -> torch.Tensor:
        """Last-position logits (B, V) after tokens ids[:, :n], seeing only the window."""
        moved = window.update(n)
        if cache is None:
            x = ids[:, window.start : n]
        elif moved or cache.length == 0:
            cache.reset()
            x = ids[:, window.start : n]
        else:  # the cache holds tokens[start:n-1]: only the newest token is new
            x = ids[:, n - 1 : n]
        logits, _ = self.model(x, cache=cache, last_only=True)
        return logits[:, -1]

    def stream_samples(self, prompt: str, options: SamplingOptions, num_samples: int = 1) -> Iterator[list[str]]:
        """Per step, the new text of each sample ("" when it has none), until every sample has
        ended or max_new_tokens is reached."""
        prompt_ids = self.encode_prompt(prompt)
        texts = [SampleText(self.tokenizer, options) for _ in range(num_samples)]
        for tokens in self.token_steps(prompt_ids, options, num_samples):
            yield [t.push(tok) for t, tok in zip(texts, tokens)]
            if all(t.done for t in texts):
                return
        yield [t.finish() for t in texts]

    def stream(self, prompt: str, options: SamplingOptions) -> Iterator[str]:
        """One sample's text, piece by piece as it is generated (the prompt not included)."""
        for pieces in self.stream_samples(prompt, options, 1):
            if pieces[0]:
                yield pieces[0]

    def generate(self, prompt: str, options: SamplingOptions, num_samples: int = 1) -> list[str]:
        """num_samples continuations of the prompt, generated together in one batch."""
        parts: list[list[str]] = [[] for _ in range(num_samples)]
        for pieces in self.stream_samples(prompt, options, num_samples):
            for part, piece in zip(parts, pieces):
                if piece:
                    part.append(piece)
        return ["".join(p) for p in parts]
