"""`gpt-prepare`: turn a corpus into a vocabulary (characters, or a byte-level BPE) and train/val token shards."""
from __future__ import annotations

import sys

from plumbing.command import Parser, run_command
from plumbing.errors import display_name

from .options import CHAR_ONLY, TOKENIZERS
from .prepare import PrepareOptions, prepare

EPILOG = """
inputs: files or folders (searched recursively). Formats are detected from content:
plain UTF-8 text, .xz/.gz/.bz2 compressed text, tar archives (plain or compressed, nested
like OpenWebText's urlsf_subset*.xz files), .json/.jsonl/.parquet files and datasets saved
with datasets' save_to_disk (see --text-field). Each file, archive member or record is one
document; documents are separated by an end-of-text token.

--tokenizer bpe --vocab-size N learns a byte-level BPE of N tokens (the 256 byte tokens and
<|endoftext|> included) on the training split, instead of a character vocabulary.

--vocab-from RUN encodes the inputs with an existing model's vocabulary (a run folder, a
checkpoint, a data folder or a tokenizer file), so `gpt-train --init-from RUN` can fine-tune
on them; characters outside it go through its byte fallback or unknown token, counted.

output: FOLDER/meta.json, FOLDER/tokenizer.json, FOLDER/train_NNNN.bin, FOLDER/val_NNNN.bin
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-prepare", description=__doc__, epilog=EPILOG)
    d = PrepareOptions()
    p.add_argument("inputs", nargs="+", help="corpus files or folders")
    p.add_argument("--out", default="data", help="output folder (default: ./data)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output folder that gpt-prepare wrote and that holds nothing else "
                        "(only once the new one is complete)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of documents (by content hash) for validation; a corpus of under 100 documents is split "
                   "inside each document instead (default: %(default)s)")
    # the vocabulary options default to None so that one given beside --vocab-from is seen
    p.add_argument("--max-vocab", type=int,
                   help=f"most tokens in the vocabulary, special and byte tokens included (default: {d.max_vocab})")
    p.add_argument("--min-char-count", type=int,
                   help="characters seen fewer times than this in train are left out of the vocabulary "
                   f"(default: {d.min_char_count})")
    p.add_argument("--oov", choices=("byte", "unk"),
                   help="characters outside the vocabulary: 'byte' encodes them losslessly as UTF-8 byte tokens, "
                   "'unk' as one unknown token; given, the fallback is kept even where this corpus needs none, so new "
                   "text (--vocab-from, prompts) can use it "
                   "(default: byte tokens only where some character needs them)")
    p.add_argument("--tokenizer", choices=TOKENIZERS,
                   help="'char': one token per character (--max-vocab, --min-char-count, --oov); 'bpe': a byte-level "
                   f"BPE learned on the training split (--vocab-size) (default: {d.tokenizer})")
    p.add_argument("--vocab-size", type=int, metavar="N",
                   help="with --tokenizer bpe: tokens in all, the 256 byte tokens and <|endoftext|> included "
                   "(more than 257)")
    p.add_argument("--vocab-from", metavar="RUN",
                   help="use this run's vocabulary (run folder, checkpoint, data folder or tokenizer file) instead of "
                   "building one, to fine-tune RUN on the inputs")
    p.add_argument("--text-field", default=d.text_field,
                   help="text column of JSON/Parquet records and saved datasets (default: %(default)s)")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens,
                   help="most tokens per shard file (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes; 0 uses all cores (default: 0)")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first bad file or invalid UTF-8 instead of skipping or replacing and counting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def format_summary(summary) -> str:
    m = summary.meta
    lines = []
    for s in ("train", "val"):
        sp = m["splits"][s]
        lines.append(f"{s:>5}: {sp['documents']:,} documents, {sp['characters']:,} characters, {sp['tokens']:,} tokens "
                     f"in {len(sp['shards'])} shard(s)")
    if m.get("tokenizer_kind") == "bpe":
        per_char = ", ".join(f"{s} {m['splits'][s]['tokens_per_character']:.4f}" for s in ("train", "val"))
        where = "on train" if m["bpe"]["learned_on"] == "train" else "by the base (--vocab-from)"
        lines.append(f"vocabulary: byte-level BPE of {m['vocab_size']} tokens ({m['bpe']['merges']} merges learned "
                     f"{where}), {m['dtype']} ids; tokens per character: {per_char}")
        return "\n".join(lines + tail_lines(summary))
    cov = m["coverage"]
    fallback = ("byte fallback" if cov["byte_fallback"] else "unknown token" if cov["unknown_token"]
                else "no fallback needed")
    # the corpus's distinct characters the vocabulary holds (a base's vocabulary may hold others too)
    held = cov["distinct_characters"] - cov["outside_characters"]["distinct"]
    base = "the base's (--vocab-from), " if m["options"].get("vocab_from") else ""
    lines.append(f"vocabulary: {base}{m['vocab_size']} tokens ({held} of the corpus's {cov['distinct_characters']} "
                 f"distinct characters, {fallback}), {m['dtype']} ids")
    lines.append(f"coverage: {cov['train']:.4%} of train characters, {cov['val']:.4%} of val characters")
    out = cov.get("outside_characters")
    if out and out["distinct"]:
        lines.append(f"outside the vocabulary: {out['train']:,} train and {out['val']:,} val characters "
                     f"({out['distinct']:,} distinct), encoded as {fallback}")
    return "\n".join(lines + tail_lines(summary))


def tail_lines(summary) -> list[str]:
    m, lines = summary.meta, []
    sk = m["skipped"]
    lines.append(f"split by {m['split_mode']}; skipped {sk['files']} file(s) and {sk['members']} archive member(s); "
                 f"{sk['invalid_utf8_replaced']} invalid UTF-8 sequence(s) replaced")
    lines.append(f"{summary.text_bytes / 1e6:.1f} MB of text in {summary.seconds:.1f} s ({summary.mb_per_s:.1f} MB/s) "
                 f"-> {display_name(summary.out)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    vocab_options = {"max_vocab": args.max_vocab, "min_char_count": args.min_char_count, "oov": args.oov,
                     "tokenizer": args.tokenizer, "vocab_size": args.vocab_size}
    given = [f"--{k.replace('_', '-')}" for k, v in vocab_options.items() if v is not None]
    if args.vocab_from is not None and given:
        parser.error(f"--vocab-from uses the base's vocabulary as it is; {', '.join(given)} cannot change it")
    char_only = [f"--{k.replace('_', '-')}" for k in CHAR_ONLY if vocab_options[k] is not None]
    if args.tokenizer == "bpe" and char_only:
        verb = "is" if len(char_only) == 1 else "are"
        parser.error(f"{', '.join(char_only)} {verb} for --tokenizer char; a BPE is sized by --vocab-size")
    if args.vocab_size is not None and args.tokenizer != "bpe":
        parser.error("--vocab-size is for --tokenizer bpe; a character vocabulary is sized by --max-vocab")
    if args.tokenizer == "bpe" and args.vocab_size is None and args.vocab_from is None:  # a usage error: exit 2
        parser.error("--tokenizer bpe needs --vocab-size N (the tokens to learn, the 256 byte tokens and "
                     "<|endoftext|> included)")
    opts = PrepareOptions(
        val_fraction=args.val_fraction, **{k: v for k, v in vocab_options.items() if v is not None},
        text_field=args.text_field, shard_tokens=args.shard_tokens, workers=args.workers, strict=args.strict,
        force=args.force, progress=not args.quiet, vocab_from=args.vocab_from,
    )

    def work() -> None:
        summary = prepare(args.inputs, args.out, opts)
        shown = summary.warnings[:20]
        for w in shown:
            print(f"gpt-prepare: warning: {w}", file=sys.stderr)
        if len(summary.warnings) > len(shown):
            print(f"gpt-prepare: warning: ... and {len(summary.warnings) - len(shown)} more", file=sys.stderr)
        print(format_summary(summary), flush=True)

    return run_command("gpt-prepare", work, interrupted="interrupted; nothing was written", makes_files=True)


if __name__ == "__main__":
    sys.exit(main())
