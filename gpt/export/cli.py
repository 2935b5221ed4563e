"""`gpt-export`: write a trained model as safetensors, with its config and tokenizer beside it,
or as a Hugging Face folder that transformers loads with no code of ours."""
from __future__ import annotations

import sys
from pathlib import Path

from plumbing.command import Parser, command

from ..store.runs import resolve_checkpoint
from .write import EXPORT_FORMATS, FORMATS, export_model

EPILOG = """
output: a folder holding model.safetensors (fp32 weights, by their names in the model),
config.json (the model's shape, every tensor's shape, tied tensors) and tokenizer.json.
gpt-sample --ckpt FOLDER and Generator.load(FOLDER) load it; so does any safetensors reader
(docs/formats.md lists the tensors and the computation that uses them).

--format hf: a folder that transformers' AutoModelForCausalLM and AutoTokenizer load with
no code of ours, as GPT-2 (learned positions) or GPT-NeoX (rotary positions); the same
logits, within 1e-4. Options neither architecture has (the bigram model, --qk-norm,
--logit-softcap) are refused. gpt-train --init-from FOLDER and gpt-prepare --vocab-from
FOLDER take such a folder back (docs/export.md). Writing it needs no transformers.

A LoRA run (adapters on a base checkpoint) is exported with --merge: the adapters are folded
into the base's weights, giving a plain model as large as the base that needs neither the
base checkpoint nor this package's LoRA code.

The folder is written beside its final place and renamed into it when complete, so an
interrupted export leaves nothing half-written. An existing folder is replaced only with
--force, and only once the new export is complete.

examples:
  gpt-export checkpoints/run1                       writes checkpoints/run1/safetensors/
  gpt-export checkpoints/run1/latest.pt --out exports/run1 --force
  gpt-export checkpoints/lora1 --merge               a LoRA run: base and adapters as one model
  gpt-export checkpoints/run1 --format hf           writes checkpoints/run1/hf/ for transformers
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-export", description=__doc__, epilog=EPILOG)
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="a run folder (its best checkpoint) or a checkpoint file "
                   "(default: the newest run under ./checkpoints)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="safetensors",
                   help="safetensors: this toolkit's folder; hf: a folder transformers loads (default: %(default)s)")
    p.add_argument("--out", metavar="DIR",
                   help="folder to write "
                   "(default: a 'safetensors' or 'hf' folder, after the format, in the run folder)")
    p.add_argument("--force", action="store_true", help="replace --out if it already exists")
    p.add_argument("--merge", action="store_true",
                   help="for a LoRA run: fold its adapters into its base's weights and export that model "
                   "(a LoRA run is refused without it; a run without adapters is exported as it is)")
    return p


def default_out(ckpt: Path, format: str = "safetensors") -> Path:
    return ckpt.parent / FORMATS[format].folder


def export(args) -> None:
    ckpt = resolve_checkpoint(args.run, option="the RUN argument")
    out = Path(args.out) if args.out else default_out(ckpt, args.format)
    export_model(ckpt, out, force=args.force, merge=args.merge, format=args.format)
    print(f"exported {ckpt} -> {out}/ ({', '.join(FORMATS[args.format].files)})")


main = command("gpt-export", build_parser, export, makes_files=True)


if __name__ == "__main__":
    sys.exit(main())
