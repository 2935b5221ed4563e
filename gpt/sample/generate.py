"""Generation: prompt -> token ids -> model, one token at a time -> sampled ids -> text.

    gen = Generator.load("checkpoints/run1")  # a run folder, a checkpoint file or None
    for piece in gen.stream("ROMEO:", SamplingOptions(max_new_tokens=200, seed=1)):
        print(piece, end="", flush=True)

The decode loop (`decode_loop.DecodeLoop`) speaks token ids only; text, end-of-text and
stop strings are handled per sample above it (`SampleText`). With a KV cache each new
token costs one position's work; without one the whole window is recomputed per token.
Every path sees the same window and draws with the same noise, so a seed gives the same
tokens on each.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from data_prep import DataError, Tokenizer

from ..device import resolve_device, resolve_dtype
from ..quantize import check_supported, quantize_model
from ..store.load import load_any_model
from .beam import beam_search, check_beams
from .decode_loop import DecodeLoop
from .sampling import GenerationError, SampleText, SamplingOptions

# on a GPU tokens are read back to the host this many steps at a time: a read waits for the
# queue of kernels to drain (the loop stays a group ahead, so the GPU does not wait for it);
# a streamed sample uses smaller groups, so text still appears as it is made
SYNC_EVERY = 32
STREAM_EVERY = 8
# with compile=None (gpt-sample's default), a CPU compiles the decode step for a call whose
# tokens (all its samples together) times the model's weights reach this. Compiling took
# 38-56 s on a 2-core Intel Xeon from cold (2026-12-05; a later run of the same model about 5
# s in int8, 23 s in fp32, whose packed weights Inductor does not keep on disk), and saved
# about 1.1 ms a token for the baby model (10.7 million weights) in fp32 and in int8: 50,000
# of its tokens pay for a cold compile. A token's saving grows with the model (a 2-layer,
# 32-channel model saved about 0.05 ms)
COMPILE_MIN_TOKEN_WEIGHTS = 50_000 * 10_700_000


class Generator:
    """A model and its tokenizer, ready to sample on one device at one precision.

    The model (already on `device`) has its weights cast to `dtype` once, here, rather than
    running under autocast as in training: autocast would cast every weight again at every
    token, and decoding one token is dominated by reading the weights (on a 2-core CPU, a
    bf16 model cast once decodes one sample 1.5-2x faster than fp32; under autocast it is
    slower than fp32).

    With `quantize="int8"` the linear layers then keep int8 weights (`gpt.quantize`), a
    quarter of the bytes to read per token; the model is modified in place."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, device: torch.device | str,
                 dtype: torch.dtype | str, quantize: str | None = None, static_decode: bool | None = None,
                 compile: bool | None = False):
        """`static_decode`: decode through the fixed-shape step (`SampledStep`), replayed as a
        CUDA graph on a GPU; None chooses it on CUDA, or where the step is compiled (on a CPU
        the plain step is faster uncompiled: it attends to the filled positions only, and
        there are no launches to save). `compile`: torch.compile that step first; None
        decides per call: on a CPU, for calls long enough to repay the compiling
        (COMPILE_MIN_TOKEN_WEIGHTS). `device` and `dtype` may be given as `load` takes them
        ("cpu", "auto", "fp32"...); the model is moved to the device."""
        if isinstance(device, str):
            device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = resolve_dtype(dtype, device)
        model = model.to(device)
        if quantize is not None:
            check_supported(quantize, device)
        # the weights a token multiplies by, counted before int8 layers keep theirs as buffers
        self.weights = sum(p.numel() for p in model.parameters())
        self.model, self.tokenizer, self.device, self.dtype = model.to(dtype), tokenizer, device, dtype
        if quantize is not None:
            quantize_model(self.model, quantize)
        self.quantize = quantize
        self.block_size = model.config.block_size
        self.static_decode = device.type == "cuda" if static_decode is None else static_decode
        self.compile = compile
        self.on_compile: Callable[[], None] | None = None  # called as a decode loop that compiles begins
        on_gpu = device.type == "cuda"
        self.sync_every, self.stream_every = (SYNC_EVERY, STREAM_EVERY) if on_gpu else (1, 1)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", dtype: str = "auto",
             quantize: str | None = None, compile: bool | None = False) -> "Generator":
        """From a checkpoint file, a run folder (its best checkpoint), a folder written by
        gpt-export, or None (the newest run under ./checkpoints). Raises CheckpointError,
        ExportError, DeviceError or QuantizeError for the user to read."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        if quantize is not None:
            check_supported(quantize, dev)  # before the weights are read
        model, tokenizer, _, _ = load_any_model(path, dev)
        return cls(model, tokenizer, dev, dt, quantize, compile=compile)

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
    def token_steps(self, prompt_ids: Sequence[int], options: SamplingOptions, num_samples: int = 1,
                    sync_every: int = 1) -> Iterator[list[int]]:
        """Each step's new token for each sample, up to max_new_tokens steps. The caller
        decides when to stop early (it just stops iterating). Tokens are read back to the host
        `sync_every` steps at a time (the steps after a stop are then computed for nothing)."""
        options.validate(self.block_size)
        if num_samples < 1:
            raise GenerationError(f"--num-samples must be at least 1, got {num_samples}")
        if not prompt_ids:
            raise GenerationError("the prompt has no tokens")
        if options.max_new_tokens == 0:
            return
        compile = self.compiles(options, num_samples)
        loop = DecodeLoop(self.model, self.device, self.dtype, prompt_ids, options, num_samples,
                          self.static_decode or compile, compile)
        if compile and self.on_compile is not None:
            self.on_compile()
        yield from loop.tokens(max(1, sync_every))

    def compiles(self, options: SamplingOptions, num_samples: int) -> bool:
        """Whether sampling `num_samples` together with `options` compiles the decode step
        (only a cached sample has one)."""
        if not (options.use_kv_cache and getattr(self.model, "supports_kv_cache", False)):
            return False
        if self.compile is None:
            tokens = options.max_new_tokens * num_samples
            return self.device.type == "cpu" and tokens * self.weights >= COMPILE_MIN_TOKEN_WEIGHTS
        return self.compile

    def stream_samples(self, prompt: str, options: SamplingOptions, num_samples: int = 1,
                       sync_every: int = 1) -> Iterator[list[str]]:
        """Per step, the new text of each sample ("" when it has none), until every sample has
        ended or max_new_tokens is reached."""
        prompt_ids = self.encode_prompt(prompt)
        texts = [SampleText(self.tokenizer, options) for _ in range(num_samples)]
        for tokens in self.token_steps(prompt_ids, options, num_samples, sync_every):
            yield [t.push(tok) for t, tok in zip(texts, tokens)]
            if all(t.done for t in texts):
                return
        yield [t.finish() for t in texts]

    def stream(self, prompt: str, options: SamplingOptions) -> Iterator[str]:
        """One sample's text, piece by piece as it is generated (the prompt not included)."""
        for pieces in self.stream_samples(prompt, options, 1, self.stream_every):
            if pieces[0]:
                yield pieces[0]

    def beam(self, prompt: str, options: SamplingOptions, beams: int, count: int = 1, alpha: float = 1.0,
             cancelled: Callable[[], bool] = lambda: False) -> list[tuple[str, int, bool]]:
        """The `count` best distinct continuations by beam search with `beams` beams
        (length-normalised by alpha), best first: (text, tokens generated, whether it ended
        before max_new_tokens); fewer where stop strings leave fewer distinct texts.
        Of `options`, the length, stop strings, end-of-text rule and slide are used; the
        sampling fields are not (the search is deterministic)."""
        options.validate(self.block_size)
        check_beams(beams)
        if not 1 <= count <= beams:
            raise GenerationError(f"beam search returns between 1 and --beams ({beams}) texts, {count} were asked for")
        eot = self.tokenizer.eot_id if options.stop_at_eot else None
        found = beam_search(self.model, self.encode_prompt(prompt), beams, options.max_new_tokens, eot, alpha,
                            self.device, self.dtype, options.slide, cancelled)
        results, seen = [], set()
        for hypothesis in found:
            text = SampleText(self.tokenizer, options)
            pieces = [text.push(token) for token in hypothesis.tokens]
            stopped = text.done
            cut = "".join(pieces) + text.finish()
            if cut in seen:  # beams that differ only past a stop string are one text, the better's
                continue
            seen.add(cut)
            results.append((cut, len(hypothesis.tokens), stopped))
            if len(results) == count:
                break
        return results

    def generate(self, prompt: str, options: SamplingOptions, num_samples: int = 1) -> list[str]:
        """num_samples continuations of the prompt, generated together in one batch."""
        parts: list[list[str]] = [[] for _ in range(num_samples)]
        for pieces in self.stream_samples(prompt, options, num_samples, self.sync_every):
            for part, piece in zip(parts, pieces):
                if piece:
                    part.append(piece)
        return ["".join(p) for p in parts]
