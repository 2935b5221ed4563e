"""`gpt-sample`: sample text from a trained checkpoint."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from plumbing.command import Parser, command

from ..quantize import QUANTIZE_MODES
from .generate import Generator
from .sampling import GenerationError, SamplingOptions

EPILOG = """
output: with one sample, the prompt and then the text are printed as they are generated
(whole characters only; text that could be the start of a --stop string is held back until
it is clear). With --num-samples N > 1 the samples are generated together in one batch and
printed, in order, when the batch is done, each after a line '--- sample i of N ---'.
Many samples run in batches of at most 64, each printed as it finishes, so memory stays that
of one batch whatever N is; with --seed, batch k draws with seed + k.

beam search: --beams N keeps the N most likely partial texts at every step and prints the
best finished one (--num-samples K: the K best, each after '--- beam i of K ---'), scored by
log-probability / length^--length-penalty; it is deterministic and ignores the sampling
options.

stopping: a sample ends at the end-of-text token (unless --ignore-eot), just before the
first --stop string in its generated text, or after --max-new-tokens tokens.

context: generation can run past the model's context. The model sees at most its context
length of the most recent tokens; when that fills up the window jumps forward by --slide
tokens and the KV cache is rebuilt from the tokens still in it (--slide 1 always keeps
exactly the most recent context-length tokens, at the cost of a rebuild per token).

examples:
  gpt-sample --prompt "ROMEO:"                       newest run under ./checkpoints
  gpt-sample --ckpt checkpoints/run1 --num-samples 4 --max-new-tokens 200 --seed 1
  gpt-sample --ckpt checkpoints/run1 --quantize int8  int8 weights: faster on a CPU
  echo "First Citizen:" | gpt-sample --prompt-file - --temperature 0 --stop '\\n\\n'
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-sample", description=__doc__, epilog=EPILOG)
    d = SamplingOptions()
    p.add_argument("--ckpt", metavar="PATH",
                   help="a run folder (its best checkpoint), a checkpoint file or a folder written by gpt-export "
                   "(default: the newest run under ./checkpoints)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", metavar="TEXT",
                     help="text to continue; empty (the default) samples unconditionally, from the end-of-text token")
    src.add_argument("--prompt-file", metavar="PATH", help="read the prompt from a UTF-8 file ('-': standard input)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", default=d.max_new_tokens,
                   help="most tokens to generate per sample (default: %(default)s)")
    p.add_argument("--num-samples", type=int, metavar="N", default=1,
                   help="samples to generate, together in batches of at most 64 (default: %(default)s)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="random seed: the same seed and options give the same output (default: a fresh one each run)")
    p.add_argument("--temperature", type=float, metavar="T", default=d.temperature,
                   help="below 1 is more conservative, above 1 more random; 0 always picks the most likely token "
                   "(default: %(default)s)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P",
                   help="nucleus sampling: only from the fewest most likely tokens whose probability adds up to p, "
                   "in (0, 1]")
    p.add_argument("--stop", action="append", default=[], metavar="STRING",
                   help="end a sample just before this text "
                   "(repeatable; backslash escapes such as \\n and \\t are understood)")
    p.add_argument("--beams", type=int, metavar="N",
                   help="beam search with N beams instead of sampling: the most likely continuation (with "
                   "--num-samples K <= N, the K best), deterministic; the sampling options are not used")
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="A",
                   help="beam search scores a text by its log-probability / length^A: 0 favours short texts, "
                   "1 (the default) compares them per token")
    p.add_argument("--ignore-eot", action="store_true",
                   help="go on past the end-of-text token (it is shown as <|endoftext|>)")
    p.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt before it")
    p.add_argument("--device", default="auto", metavar="NAME",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--dtype", default="auto", metavar="NAME",
                   help="auto (bf16 or fp16 on CUDA, fp32 elsewhere), fp32, bf16 or fp16; the weights are cast once "
                   "(default: %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="int8: weight-only int8 linear layers, a quarter of fp32's bytes to read per token "
                   "(faster on a CPU, bits per character within 1%% of fp32; needs AVX2 or AVX-512); "
                   "default: none, the weights stay in --dtype")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the cached decode step first (not --beams or --no-kv-cache, which have none): "
                   "fused kernels called from C++, 1.7-2.3x as many tokens/s on a 2-core CPU, after 40-60 s of "
                   "compiling (int8: about 5 s when an earlier run compiled the same model). Default: on a CPU where "
                   "a batch's tokens (up to 64 samples) repay it (50,000 of the 10.7-million-weight baby model's, more "
                   "of a smaller one's); off on a GPU (its CUDA graph already makes a token one launch)")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole context for every token (slow; for checking the cache)")
    p.add_argument("--slide", type=int, metavar="N",
                   help="tokens the context window jumps forward when it is full (default: a quarter of the context)")
    return p


def unescape(text: str) -> str:
    """Backslash escapes (\\n, \\t, \\\\, \\u00e9 ...) in a command-line string; other text as is."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        # shown as the shell takes it (repr would double the very backslash at fault)
        raise GenerationError(f"--stop {shlex.quote(text)} has a malformed backslash escape "
                              "(a backslash itself is written \\\\)") from None


def read_prompt(args) -> str:
    if args.prompt_file is None:
        try:  # bytes that are not UTF-8 reach Python's argv as lone surrogates (surrogateescape)
            os.fsencode(args.prompt).decode("utf-8")
        except UnicodeError as e:
            raise GenerationError(f"--prompt is not UTF-8 text (bad byte at offset {e.start}); the model's text "
                                  "is UTF-8") from None
        return args.prompt
    name = "standard input" if args.prompt_file == "-" else args.prompt_file
    try:
        data = sys.stdin.buffer.read() if args.prompt_file == "-" else Path(args.prompt_file).read_bytes()
    except OSError as e:
        raise GenerationError(f"cannot read the prompt file {name}: {e.strerror or e}") from None
    if not data:
        raise GenerationError(f"the prompt file {name} is empty (for an unconditional sample, give no prompt)")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte order mark is no text, as in gpt-prepare
    except UnicodeDecodeError as e:
        raise GenerationError(f"the prompt file {name} is not UTF-8 text (bad byte at offset {e.start})") from None


def compile_notice():
    """What gpt-sample says, once, as the first decode loop that compiles begins: its first
    token comes eagerly, then the stream pauses while the step compiles."""
    said = []

    def announce() -> None:
        if not said:
            print("gpt-sample: compiling the decode step after the first token (a minute or so the first time; "
                  "--no-compile skips it)", file=sys.stderr, flush=True)
            said.append(True)

    return announce


def sample(args) -> None:
    options = SamplingOptions(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        stop=[unescape(s) for s in args.stop], stop_at_eot=not args.ignore_eot, seed=args.seed,
        use_kv_cache=not args.no_kv_cache, slide=args.slide,
    )
    options.validate()
    if args.num_samples < 1:
        raise GenerationError(f"--num-samples must be at least 1, got {args.num_samples}")
    prompt = read_prompt(args)
    generator = Generator.load(args.ckpt, device=args.device, dtype=args.dtype, quantize=args.quantize,
                               compile=args.compile)
    options.validate(generator.block_size)
    generator.encode_prompt(prompt)  # refuse a prompt that cannot be encoded before printing anything
    generator.on_compile = compile_notice()
    out = sys.stdout
    echo = "" if args.no_echo else prompt
    if args.beams is not None:
        texts = [text for text, _, _ in generator.beam(prompt, options, args.beams, args.num_samples,
                                                       args.length_penalty)]
        for i, text in enumerate(texts, start=1):
            out.write(f"--- beam {i} of {len(texts)} ---\n{echo}{text}\n" if len(texts) > 1 else f"{echo}{text}\n")
        out.flush()
        return
    if args.num_samples == 1:
        out.write(echo)
        out.flush()
        last = echo
        try:
            for piece in generator.stream(prompt, options):
                out.write(piece)
                out.flush()
                last = piece or last
        except GenerationError:  # the sample so far ends its line: the error's line is its own
            if last and not last.endswith("\n"):
                out.write("\n")
                out.flush()
            raise
        out.write("\n")
    else:
        for first, texts in sample_batches(generator, prompt, options, args.num_samples):
            for i, text in enumerate(texts, start=first):
                out.write(f"--- sample {i} of {args.num_samples} ---\n{echo}{text}\n")
            out.flush()
    out.flush()


MAX_BATCH = 64  # samples generated together: the memory of 64, whatever --num-samples asks for


def sample_batches(generator: Generator, prompt: str, options: SamplingOptions, count: int):
    """(number of the first sample, the texts) for each batch of at most MAX_BATCH samples,
    each generated only when the one before has been handed out. With a seed, batch k draws
    with seed + k: the same options give the same output, and no two batches repeat."""
    for k, first in enumerate(range(0, count, MAX_BATCH)):
        seed = None if options.seed is None else options.seed + k
        yield first + 1, generator.generate(prompt, replace(options, seed=seed), min(MAX_BATCH, count - first))


# Ctrl-C is how a long sample is ended on purpose: quietly
main = command("gpt-sample", build_parser, sample, interrupted=None)


if __name__ == "__main__":
    sys.exit(main())
