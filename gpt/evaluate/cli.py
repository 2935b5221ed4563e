"""`gpt-eval`: how well trained models predict a text, in bits per character."""
from __future__ import annotations

import sys

from plumbing.command import Parser, command

from ..device import resolve_device
from ..quantize import QUANTIZE_MODES
from .errors import EvalError
from .evaluate import DEFAULT_BATCH, check_sizes, evaluate, load_run
from .report import as_json, table
from .text import TextStream, open_split

EPILOG = """
text: FILE arguments are files, folders and archives, read exactly as gpt-prepare reads
them (plain or compressed text, tars of documents, JSON lines / Parquet with --text-field)
and encoded with each model's own vocabulary; documents are joined with the end-of-text
token, as in training. Without FILEs, a prepared split is scored (--split, default val) of
--data, by default the data folder the first run was trained on.

scoring: every token is scored exactly once. Text longer than the context is scored in
sliding windows: each window is one context long and scores its last --stride tokens, so
each of those sees at least (context - stride) tokens before it. The default stride is half
the context; --stride equal to the context gives non-overlapping windows (fastest, and like
the val loss gpt-train logs, which scores whole windows); --stride 1 gives every token the
whole context (one forward pass per token).

results: bits per character (the text's nats / ln 2 / its characters: comparable across
vocabularies), nats per token and perplexity (per token). Characters outside a model's
vocabulary are counted and named below the table.

examples:
  gpt-eval --ckpt checkpoints/run1 notes/                  how well run1 predicts your notes
  gpt-eval --ckpt checkpoints/a --ckpt checkpoints/b book.txt.gz   two runs on the same text
  gpt-eval --ckpt checkpoints/run1 --split val --stride 64 --json
  gpt-eval --ckpt checkpoints/run1 --split val --quantize int8   the cost of int8 sampling, against the run without it
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-eval", description=__doc__, epilog=EPILOG)
    p.add_argument("files", nargs="*", metavar="FILE", help="text to score: files, folders or archives")
    p.add_argument("--ckpt", action="append", metavar="RUN",
                   help="a run folder (its best checkpoint), a checkpoint file or a folder written by gpt-export; "
                   "repeat to compare runs (default: the newest run under ./checkpoints)")
    p.add_argument("--split", choices=("val", "train"),
                   help="score a prepared split instead of FILEs (default without FILEs: val)")
    p.add_argument("--data", metavar="DIR",
                   help="the prepared data folder for --split (default: the one the first run was trained on)")
    p.add_argument("--stride", type=int, metavar="N",
                   help="tokens each window scores, 1 to the context (default: half the context)")
    p.add_argument("--batch-size", type=int, metavar="N", default=DEFAULT_BATCH,
                   help="windows per forward pass (default: %(default)s)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="the field holding the text in JSON / Parquet inputs (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", metavar="NAME",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--dtype", default="auto", metavar="NAME",
                   help="auto (bf16 or fp16 on CUDA, fp32 elsewhere), fp32, bf16 or fp16 (default: %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="int8: score with weight-only int8 linear layers, as gpt-sample --quantize int8 samples "
                   "(needs AVX2 or AVX-512 on a CPU); default: none")
    return p


def run(args) -> None:
    if args.files and (args.split or args.data):
        given = "--split" if args.split else "--data"
        raise EvalError(f"give either text FILEs or {given} (a prepared split to score), not both")
    check_sizes(args.stride, args.batch_size)
    device = resolve_device(args.device)
    data = args.data
    results = []
    for ckpt in args.ckpt or [None]:
        run_ = load_run(ckpt, device, args.quantize)
        if args.files:
            stream = TextStream(args.files, run_.tokenizer, args.text_field)
        else:
            data = data or run_.data  # the first run's data folder, unless --data names one
            if not data:
                raise EvalError(f"{run_.checkpoint} does not record the data it was trained on; "
                                "name a folder with --data, or give text FILEs")
            stream = open_split(data, args.split or "val", run_.tokenizer, run_.checkpoint)
        results.append(evaluate(run_, stream, args.stride, args.batch_size, args.dtype, progress=not args.quiet))
        run_.model = None  # one model in memory at a time
    print(as_json(results) if args.json else table(results))


main = command("gpt-eval", build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
